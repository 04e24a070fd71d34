"""Submodule access by dotted name, and the restricted import used to rebuild saved models."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..core.errors import ArtifactError


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = get_submodule(model, parent_path)
    setattr(parent, leaf, module)


def import_object(ref: str) -> Any:
    """Import `package.module:Name`, allowed only inside slimkit or torch.nn.

    Artifacts name the classes to rebuild; limiting the namespace means a tampered manifest cannot
    make `load` import and run arbitrary code.
    """
    module_name, _, attr = ref.partition(":")
    allowed = module_name.startswith(("slimkit.", "torch.nn.modules.")) or module_name == "torch.nn"
    if not attr or not allowed:
        raise ArtifactError(f"manifest: refusing to import {ref!r} (only slimkit.* and torch.nn)")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ArtifactError(f"manifest: cannot import {ref!r}") from None


def class_ref(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"
