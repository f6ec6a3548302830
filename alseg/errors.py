"""User-facing errors: the CLI prints them as one line and exits non-zero, with no traceback."""


class AlsegError(Exception):
    """Base of every error caused by user input (files, configs, data)."""


class ConfigError(AlsegError):
    """An invalid configuration value."""


class DataError(AlsegError):
    """A missing, unreadable or malformed dataset file."""


class TrainingError(AlsegError):
    """Training cannot go on (e.g. a non-finite loss)."""
