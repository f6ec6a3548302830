"""Hydra ``instantiate`` with alseg's errors: a component's own AlsegError comes out unchanged
(a ``ParamError`` under the config node's path), a key the component does not take is a one-line
ConfigError naming it, and any other failure to build becomes a one-line ConfigError naming the
config node."""

from __future__ import annotations

import inspect

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate

from alseg.config_check import ParamError
from alseg.errors import AlsegError, ConfigError

_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")


def _check_keys(node, what: str, kwargs: dict) -> None:
    """Every key of ``node`` (and of ``kwargs``) must be a parameter of its ``_target_`` (unless it
    takes ``**kwargs``); a target that cannot be resolved is left to ``instantiate`` to report."""
    try:
        target = get_object(str(node.get("_target_")))
        params = inspect.signature(target).parameters
    except Exception:  # noqa: BLE001 - reported by instantiate below, with its own words
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,)]
    for key in [*node.keys(), *kwargs]:
        if key not in _HYDRA_KEYS and key not in params:
            raise ConfigError(f"{what}.{key}: not a parameter of {node.get('_target_')}; "
                              f"its parameters: {', '.join(named) or 'none'}")


def build(node, what: str, **kwargs):
    """``instantiate(node, **kwargs)``; ``what`` is the node's config path (``strategy``,
    ``al.initial_strategy``, ``model``), used in every error. Raises AlsegError subclasses only."""
    if node is not None and hasattr(node, "keys") and node.get("_target_") is not None:
        _check_keys(node, what, kwargs)
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, AlsegError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ParamError):
            raise cause.at(what) from None
        if isinstance(cause, AlsegError):
            raise cause from None
        if isinstance(e.__cause__, OSError) and e.__cause__.filename:  # a file or folder the OS refused: name it
            from alseg.files import os_error_reason

            raise ConfigError(f"{e.__cause__.filename}: {os_error_reason(e.__cause__)} (building {what}); "
                              f"check the path, its permissions and the free disk space") from None
        detail = repr(e.__cause__) if e.__cause__ is not None else str(e).splitlines()[0]
        raise ConfigError(f"{what}: cannot build {node.get('_target_', '?')}: {detail}") from None
