"""Physical removal of channel groups: slice every tensor of a group, fix the sizes modules keep
as attributes, and log a `resize` edit so `load` rebuilds the smaller shapes.

Torch layers' size attributes (in_features, out_channels, ...) follow from the new shapes. Other
modules may keep sizes of their own (a head count, a split size); those are found by a probe that
removes one channel from a copy, runs it, and if it fails tries the module's integer attributes
that equal the group's old sizes, keeping the fewest that make it run.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.compress import edit_log
from .deps import Analysis, Group
from .modules import get_submodule
from .trace import eval_outputs

Keep = dict[int, torch.Tensor]  # group id -> indices kept
AttrFix = tuple[str, str, int]  # module path, attribute, class whose new size it takes
_SIZE_NAME = re.compile(r"(dim|size|head|feature|channel|group|width|hidden|embed|split|^n[a-z]?$)",
                        re.IGNORECASE)
_NOT_SIZE = re.compile(r"(idx|index|layer|id$|seed|step|eps)", re.IGNORECASE)


def shrink(model: nn.Module, analysis: Analysis, keep: Keep,
           attr_fixes: Sequence[AttrFix] = (), *, log: bool = True) -> dict[str, Any]:
    """Remove all channels not in `keep` from `model` in place; returns the resize edit."""
    d = analysis.dims
    # A tensor dimension lies in one class; only members of cut groups can lose indices.
    classes = {(m.name, m.dim): m.cls for g in analysis.groups if g.id in keep
               for m in g.members}
    plan: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for (name, dim), cls in sorted(classes.items()):
        idx = d.keep(cls, keep)
        if len(idx) < d.size[d.find(cls)]:
            plan[name].append((dim, idx))
    shapes = {}
    for name, cuts in plan.items():
        shapes[name] = list(_slice_tensor(model, name, cuts).shape)
    attrs: dict[str, dict[str, Any]] = defaultdict(dict)
    touched = {name.rpartition(".")[0] for name in shapes}
    for path in touched:
        attrs[path].update(_standard_attrs(get_submodule(model, path)))
    for path, attr, cls in attr_fixes:
        attrs[path][attr] = int(len(d.keep(cls, keep)))
    changed = {k: v for k, v in attrs.items() if v}
    edit: dict[str, Any] = {"op": "resize", "tensors": shapes, "attrs": changed}
    _set_attrs(model, changed)
    if log:
        edit_log(model).append(edit)
    return edit


def replay_resize(model: nn.Module, edit: dict[str, Any]) -> None:
    """Give the tensors and attributes of a freshly built model the recorded shapes."""
    for name, shape in edit["tensors"].items():
        _replace(model, name, torch.empty([int(s) for s in shape]))
    _set_attrs(model, edit["attrs"])


def _slice_tensor(model: nn.Module, name: str,
                  cuts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    tensor = model.get_parameter(name) if _is_param(model, name) else model.get_buffer(name)
    new = tensor.detach()
    for dim, idx in cuts:
        new = new.index_select(dim, idx)
    _replace(model, name, new.contiguous().clone())
    return new


def _is_param(model: nn.Module, name: str) -> bool:
    path, _, leaf = name.rpartition(".")
    return leaf in get_submodule(model, path)._parameters


def _replace(model: nn.Module, name: str, new: torch.Tensor) -> None:
    """Swap tensor `name` for `new` everywhere it is shared (tied embeddings and heads)."""
    path, _, leaf = name.rpartition(".")
    owner = get_submodule(model, path)
    old: torch.Tensor | None = owner._parameters.get(leaf) if leaf in owner._parameters \
        else owner._buffers.get(leaf)
    value: torch.Tensor = nn.Parameter(new, requires_grad=old.requires_grad) \
        if isinstance(old, nn.Parameter) else new
    for module in model.modules():
        stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
        for store in stores:
            for key, t in list(store.items()):
                if t is old:
                    store[key] = value


def _standard_attrs(module: nn.Module) -> dict[str, Any]:
    """Size attributes of torch layers, read back from their (new) tensor shapes."""
    w: Any = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        return {"in_features": w.shape[1], "out_features": w.shape[0]}
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        out = w.shape[1] * module.groups if module.transposed else w.shape[0]
        groups = out if depthwise else module.groups
        cin = w.shape[0] if module.transposed else w.shape[1] * groups
        return {"in_channels": cin, "out_channels": out, "groups": groups}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        ref: Any = w if w is not None else module.running_mean
        return {"num_features": ref.shape[0]}
    if isinstance(module, nn.LayerNorm) and w is not None:
        return {"normalized_shape": list(w.shape)}
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return {"embedding_dim": w.shape[1], "num_embeddings": w.shape[0]}
    return {}


def _set_attrs(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> None:
    for path, values in attrs.items():
        module = get_submodule(model, path)
        for attr, value in values.items():
            old = getattr(module, attr, None)
            setattr(module, attr, tuple(value) if isinstance(old, tuple) else value)


def probe(model: nn.Module, analysis: Analysis, group: Group,
          inputs: Sequence[torch.Tensor]) -> list[AttrFix] | str:
    """Attribute fixes group `group` needs, or the reason it cannot be cut (as a string).

    Channel 0's slices are zeroed on a copy; removing that channel must then leave the outputs
    unchanged. This catches what the graph cannot show: a size read with `.shape` and baked into
    the trace (a hand-written attention scale), a channel that is not zero after zeroing its
    weights (sigmoid(0) summed), a module attribute that silently changes meaning.
    """
    keep = {group.id: torch.arange(1, group.size)}
    zeroed = copy.deepcopy(model)
    zero_removed(zeroed, analysis, keep)
    reference = eval_outputs(zeroed, inputs)
    trial = zeroed
    shrink(trial, analysis, keep, log=False)
    error = _check(trial, inputs, reference)
    candidates = _candidates(model, analysis, group)
    d = analysis.dims
    new_size = {c: int(len(d.keep(c, keep))) for _, _, c in candidates}
    saved = {(p, a): getattr(get_submodule(trial, p), a) for p, a, _ in candidates}

    def works(fixes: Sequence[AttrFix]) -> bool:
        for p, a, _ in candidates:
            setattr(get_submodule(trial, p), a, saved[(p, a)])
        for p, a, c in fixes:
            setattr(get_submodule(trial, p), a, new_size[c])
        return _check(trial, inputs, reference) is None

    needed = [] if error is None else _fewest(candidates, works)
    if needed is None:
        return f"removing a zeroed channel fails or changes the outputs ({error})"
    # The traced inputs take one code path; others may read more of these sizes (a head count
    # used only without a mask), so every further candidate that still runs is updated too.
    for fix in candidates:
        if fix not in needed and works([*needed, fix]):
            needed.append(fix)
    return needed


def _fewest(candidates: list[AttrFix],
            works: Callable[[Sequence[AttrFix]], bool]) -> list[AttrFix] | None:
    """The smallest set of attribute fixes that makes the forward run, or None."""
    if not candidates or not works(candidates):
        # Sizes can coincide (a 64-wide head block in a 64-wide model), so all candidates
        # together may be wrong: try the smallest subsets.
        for k in range(1, min(3, len(candidates) - 1) + 1):
            for subset in itertools.combinations(candidates, k):
                if works(subset):
                    return list(subset)
        return None
    needed = list(candidates)
    for fix in list(candidates):
        if works([f for f in needed if f != fix]):
            needed.remove(fix)
    return needed


def _candidates(model: nn.Module, analysis: Analysis, group: Group) -> list[AttrFix]:
    d = analysis.dims
    sizes = {d.size[d.find(c)]: d.find(c) for c in group.classes}
    paths = set(group.modules) - {""}
    for m in group.members:
        parts = m.name.split(".")
        # The owning module and up to two parents, never the root (its sizes are the model's
        # interface, not a group's).
        paths.update(".".join(parts[:k]) for k in range(max(1, len(parts) - 3), len(parts)))
    cut = {(m.name, m.dim) for m in group.members}
    out = []
    for path in sorted(paths):
        try:
            module = get_submodule(model, path)
        except AttributeError:
            continue
        # A size the module also has on a dimension that is not cut is ambiguous: skip it.
        kept_sizes = {int(t.shape[k]) for name, t in [*module.named_parameters(recurse=False),
                                                      *module.named_buffers(recurse=False)]
                      for k in range(t.dim()) if (f"{path}.{name}" if path else name, k) not in cut}
        for attr, value in vars(module).items():
            if type(value) is int and value in sizes and value not in kept_sizes \
                    and _SIZE_NAME.search(attr) and not _NOT_SIZE.search(attr):
                out.append((path, attr, sizes[value]))
    return out


def zero_removed(model: nn.Module, analysis: Analysis, keep: Keep) -> None:
    """Zero every tensor slice of the channels `keep` drops (what cutting them removes)."""
    d = analysis.dims
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for g in analysis.groups:
            if g.id not in keep:
                continue
            for m in g.members:
                t = tensors[m.name]
                gone = torch.ones(t.shape[m.dim], dtype=torch.bool)
                gone[d.keep(m.cls, keep)] = False
                t.index_fill_(m.dim, gone.nonzero().flatten(), 0)


def _check(model: nn.Module, inputs: Sequence[torch.Tensor],
           reference: list[torch.Tensor]) -> str | None:
    try:
        outs = eval_outputs(model, inputs)
    except Exception as exc:  # recorded: returned as the group's "not cuttable" reason
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"
    shapes, ref_shapes = [tuple(t.shape) for t in outs], [tuple(t.shape) for t in reference]
    if shapes != ref_shapes:
        return f"output shapes changed {ref_shapes} -> {shapes}"
    for out, ref in zip(outs, reference, strict=True):
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        diff = float((out - ref).abs().max()) if ref.numel() else 0.0
        if not diff <= 1e-4 * scale:  # float summation order changes, nothing more
            return f"outputs changed by {diff:.3g}"
    return None
