"""User-facing errors: the CLI prints them as one line and exits non-zero, with no traceback."""


class AlsegError(Exception):
    """Base of every error caused by user input (files, configs, data)."""


class ConfigError(AlsegError):
    """An invalid configuration value."""


class DataError(AlsegError):
    """A missing, unreadable or malformed dataset file."""


class TrainingError(AlsegError):
    """Training cannot go on (e.g. a non-finite loss)."""


def json_value_problem(e: BaseException) -> str:
    """Why well-formed JSON text could still not be turned into Python objects: ``json`` raises
    RecursionError for arrays / objects nested deeper than Python's recursion limit and ValueError
    for an integer of more than ``sys.get_int_max_str_digits()`` digits (one line, no advice about
    interpreter settings)."""
    if isinstance(e, RecursionError):
        return "JSON that cannot be read (arrays or objects nested too deeply)"
    return f"JSON that cannot be read ({str(e).split(';')[0].strip()})"
