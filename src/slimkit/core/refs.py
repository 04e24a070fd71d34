"""`package.module:name` references to a caller's own code (a task or model factory). Only the
caller names them (a CLI flag, a Python argument); nothing read from an artifact is imported."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .errors import SlimkitError


def is_ref(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr)


def import_ref(ref: str, *, field: str) -> Any:
    """The object `ref` names; SlimkitError naming `field` otherwise. (The CLI puts the working
    directory on the import path, so a module beside the caller is found.)"""
    module_name, sep, attr = ref.partition(":")
    if not (sep and module_name and attr):
        raise SlimkitError(f"{field}: expected package.module:name, got {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SlimkitError(f"{field}: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SlimkitError(f"{field}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def importable_ref(obj: object) -> str | None:
    """`module:qualname` of a module-level function or class that a fresh process can import by
    that name, else None (a lambda, a nested function, a bound method, anything in __main__)."""
    if inspect.ismethod(obj):
        return None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"
