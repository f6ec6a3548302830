"""Hydra ``instantiate`` with alseg's errors: a component's own AlsegError comes out unchanged,
and any other failure to build becomes a one-line ConfigError naming the config node."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from alseg.errors import AlsegError, ConfigError


def build(node, what: str, **kwargs):
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, AlsegError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, AlsegError):
            raise cause from None
        if isinstance(e.__cause__, OSError) and e.__cause__.filename:  # a file or folder the OS refused: name it
            from alseg.files import os_error_reason

            raise ConfigError(f"{e.__cause__.filename}: {os_error_reason(e.__cause__)} (building {what}); "
                              f"check the path, its permissions and the free disk space") from None
        detail = repr(e.__cause__) if e.__cause__ is not None else str(e).splitlines()[0]
        raise ConfigError(f"{what}: cannot build {node.get('_target_', '?')}: {detail}") from None
