"""`package.module:name` references to a caller's own code (a task or model factory). Only the
caller names them (a CLI flag, a Python argument); nothing read from an artifact is imported."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import SlimkitError


def is_ref(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr)


def import_ref(ref: str, *, field: str) -> Any:
    """The object `ref` names, imported with the working directory on the path (as `python -m`
    would see a module beside the caller); SlimkitError naming `field` otherwise."""
    module_name, sep, attr = ref.partition(":")
    if not (sep and module_name and attr):
        raise SlimkitError(f"{field}: expected package.module:name, got {ref!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SlimkitError(f"{field}: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SlimkitError(f"{field}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj
