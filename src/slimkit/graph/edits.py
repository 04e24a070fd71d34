"""Structural edits (swap a module, drop blocks) applied and logged so `load` can replay them.

Each edit is plain JSON data; replaying the log on a freshly built model gives a module tree whose
state dict matches the saved tensors exactly, without pickling any module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..core.compress import edit_log
from ..core.errors import ArtifactError
from ..core.module_types import module_type, type_name
from .modules import get_submodule, set_submodule


def swap_module(model: nn.Module, path: str, new: nn.Module, args: dict[str, Any]) -> None:
    """Replace the module at `path` by `new`, which must be rebuildable as `type(new)(**args)`."""
    set_submodule(model, path, new)
    edit_log(model).append({"op": "swap", "path": path, "module": type_name(type(new)),
                            "args": args})


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


MASK = "weight_mask"


def mark_masked(model: nn.Module, paths: list[str]) -> None:
    """Log that `paths` were pruned, so any later training (in this plan or after a reload) keeps
    their zeros. No mask is stored: training derives it from the zeros (`attach_masks`)."""
    _mark(model, paths)
    edit_log(model).append({"op": "mask", "paths": list(paths)})


def _mark(model: nn.Module, paths: list[str]) -> None:
    # The flag lives on the module object, so it follows the module through later drops and
    # renames; a swapped-in replacement (e.g. an int8 layer) is rightly left unflagged.
    for path in paths:
        get_submodule(model, path).__dict__["slimkit_masked"] = True


def is_masked(module: nn.Module) -> bool:
    """Whether pruning flagged `module` (its zeros must survive training)."""
    return bool(module.__dict__.get("slimkit_masked"))


def attach_masks(model: nn.Module) -> list[nn.Module]:
    """For training only: give each flagged layer that has no mask yet a bool `weight_mask` of
    its non-zeros; returns the layers given one, for `detach_masks` when training ends.

    A mask costs a byte a weight, so it lives only while training runs: at inference the
    zeros are in the weights already.
    """
    added = []
    for module in model.modules():
        if not is_masked(module) or MASK in module._buffers:
            continue
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter):
            module.register_buffer(MASK, weight.detach() != 0, persistent=False)
            added.append(module)
    return added


def detach_masks(modules: list[nn.Module]) -> None:
    for module in modules:
        module._buffers.pop(MASK, None)


@contextlib.contextmanager
def training_masks(model: nn.Module) -> Iterator[None]:
    """Masks for the flagged layers while the block runs (see `attach_masks`)."""
    added = attach_masks(model)
    try:
        yield
    finally:
        detach_masks(added)


def restore_masks(model: nn.Module) -> None:
    """Called after loading weights. Nothing to rebuild: the replayed "mask" edits flag the
    pruned layers and training derives their masks from the zeros (`attach_masks`), so a loaded
    model holds no mask tensor."""
    del model


def apply_edit(model: nn.Module, edit: dict[str, Any]) -> None:
    """Replay one logged edit on `model` (used by the artifact loader)."""
    op = edit.get("op")
    try:
        if op == "swap":
            cls = module_type(str(edit["module"]))
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
