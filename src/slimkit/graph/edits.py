"""Structural edits (swap a module, drop blocks) applied and logged so `load` can replay them.

Each edit is plain JSON data; replaying the log on a freshly built model gives a module tree whose
state dict matches the saved tensors exactly, without pickling any module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.compress import edit_log
from ..core.errors import ArtifactError
from .modules import class_ref, get_submodule, import_object, set_submodule


def swap_module(model: nn.Module, path: str, new: nn.Module, args: dict[str, Any]) -> None:
    """Replace the module at `path` by `new`, which must be rebuildable as `type(new)(**args)`."""
    set_submodule(model, path, new)
    edit_log(model).append({"op": "swap", "path": path, "module": class_ref(new), "args": args})


def drop_blocks(model: nn.Module, path: str, indices: list[int]) -> None:
    """Remove blocks `indices` from the nn.Sequential or nn.ModuleList at `path`."""
    container = get_submodule(model, path)
    if not isinstance(container, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"{path} is a {type(container).__name__}, not a Sequential or ModuleList")
    _drop(container, indices)
    edit_log(model).append({"op": "drop", "path": path, "indices": sorted(indices)})


def _drop(container: nn.Module, indices: list[int]) -> None:
    dropped = set(indices)
    # _modules, not children(): children() skips a module that appears twice.
    keep = [m for i, m in enumerate(container._modules.values()) if i not in dropped]
    for key in list(container._modules):
        del container._modules[key]
    for i, module in enumerate(keep):
        container._modules[str(i)] = module


def mark_masked(model: nn.Module, paths: list[str]) -> None:
    """Log that `paths` hold pruning masks, so a reloaded model keeps their zeros while training."""
    _mark(model, paths)
    edit_log(model).append({"op": "mask", "paths": list(paths)})


def _mark(model: nn.Module, paths: list[str]) -> None:
    # The flag lives on the module object, so it follows the module through later drops and
    # renames; a swapped-in replacement (e.g. an int8 layer) is rightly left unflagged.
    for path in paths:
        get_submodule(model, path).__dict__["slimkit_masked"] = True


def restore_masks(model: nn.Module) -> None:
    """After loading weights: masks are the non-zero pattern of each flagged layer's weight."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if module.__dict__.get("slimkit_masked") and isinstance(weight, nn.Parameter):
            module.register_buffer("weight_mask", (weight != 0).to(weight.dtype),
                                   persistent=False)


def apply_edit(model: nn.Module, edit: dict[str, Any]) -> None:
    """Replay one logged edit on `model` (used by the artifact loader)."""
    op = edit.get("op")
    try:
        if op == "swap":
            cls = import_object(edit["module"])
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ArtifactError(f"manifest: {edit['module']!r} is not a module class")
            set_submodule(model, edit["path"], cls(**edit["args"]))
        elif op == "drop":
            _drop(get_submodule(model, edit["path"]), list(edit["indices"]))
        elif op == "mask":
            _mark(model, [str(p) for p in edit["paths"]])
        elif op == "resize":
            from .shrink import replay_resize  # shrink imports this module's siblings

            replay_resize(model, edit)
        else:
            raise ArtifactError(f"manifest: unknown edit op {op!r}")
    except (KeyError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"manifest: cannot replay edit {edit!r} ({exc})") from None
    edit_log(model).append(edit)
