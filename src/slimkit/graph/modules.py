"""Submodule access by dotted name (the classes an artifact may rebuild: core.module_types)."""

from __future__ import annotations

from torch import nn


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = get_submodule(model, parent_path)
    setattr(parent, leaf, module)
