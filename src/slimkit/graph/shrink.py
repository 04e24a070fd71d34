"""Physical removal of channel groups: slice every tensor of a group, fix the sizes modules keep
as attributes, and log a `resize` edit so `load` rebuilds the smaller shapes.

Size attributes are set by the resize rule registered for a module's type (resize_rules.py:
torch layers' in_features, out_channels, ... and any the user registers). Other modules may keep
sizes of their own (a head count, a split size); those are found by a probe that removes one
channel from a copy, runs it, and if it fails tries the module's integer attributes that equal the
group's old sizes, keeping the fewest that make it run.
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
from .resize_rules import Resize, ResizeRuleError, apply_rule, find_rule
from .trace import eval_outputs

Keep = dict[int, torch.Tensor]  # group id -> indices kept
AttrFix = tuple[str, str, int]  # module path, attribute, class whose new size it takes
_SIZE_NAME = re.compile(r"(dim|size|head|feature|channel|group|width|hidden|embed|split|^n[a-z]?$)",
                        re.IGNORECASE)
_NOT_SIZE = re.compile(r"(idx|index|layer|id$|seed|step|eps)", re.IGNORECASE)


def shrink(model: nn.Module, analysis: Analysis, keep: Keep,
           attr_fixes: Sequence[AttrFix] = (), *, log: bool = True) -> dict[str, Any]:
    """Remove all channels not in `keep` from `model` in place; returns the resize edit.

    Raises ResizeRuleError if a module's resize rule fails (the model is then partly cut)."""
    d = analysis.dims
    # A tensor dimension lies in one class; only members of cut groups can lose indices.
    classes = {(m.name, m.dim): m.cls for g in analysis.groups if g.id in keep
               for m in g.members}
    plan: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for (name, dim), cls in sorted(classes.items()):
        idx = d.keep(cls, keep)
        if len(idx) < d.size[d.find(cls)]:
            plan[name].append((dim, idx))
    shapes, old_shapes = {}, {}
    for name, cuts in plan.items():
        old_shapes[name] = tuple(_tensor(model, name).shape)
        shapes[name] = list(_slice_tensor(model, name, cuts).shape)
    attrs: dict[str, dict[str, Any]] = defaultdict(dict)
    for path, resize in _reached(model, analysis, keep, shapes, old_shapes):
        values = apply_rule(get_submodule(model, path), resize)
        # Set at once: a parent's rule (called later) may read its layers' new sizes.
        _set_attrs(model, {path: values})
        attrs[path].update(values)
    fixes: dict[str, dict[str, Any]] = defaultdict(dict)
    for path, attr, cls in attr_fixes:
        fixes[path][attr] = int(len(d.keep(cls, keep)))
    _set_attrs(model, fixes)
    for path, values in fixes.items():
        attrs[path].update(values)
    changed = {k: v for k, v in attrs.items() if v}
    edit: dict[str, Any] = {"op": "resize", "tensors": shapes, "attrs": changed}
    if log:
        edit_log(model).append(edit)
    return edit


def cut_tensors(model: nn.Module, cuts: dict[str, list[tuple[int, torch.Tensor]]],
                attrs: dict[str, dict[str, Any]], *, log: bool = True) -> dict[str, Any]:
    """Keep, in place, only the indices `cuts[name]` gives along each listed dimension of every
    named parameter or buffer (a tensor shared under several names is cut once, by its first
    name), set the module size attributes `attrs` ({module path: {attr: value}}), and log and
    return the `resize` edit that `load` replays: for a cut the caller plans itself (a method
    that knows the layout) rather than one derived from a dependency analysis, as in `shrink`.

    Raises ValueError for a dimension out of range or an index outside it, before anything is
    changed; an unknown name raises AttributeError (from the model) likewise."""
    for name, dims in cuts.items():
        shape = _tensor(model, name).shape
        for dim, idx in dims:
            if not 0 <= dim < len(shape):
                raise ValueError(f"cut_tensors: {name} has {len(shape)} dimensions, not {dim}")
            if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64) or (
                    idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < shape[dim]):
                raise ValueError(f"cut_tensors: indices for {name} dimension {dim} must be a "
                                 f"1-d integer tensor in [0, {shape[dim]})")
    shapes = {name: list(_slice_tensor(model, name, dims).shape) for name, dims in cuts.items()}
    # Plain JSON values: a tuple (LayerNorm's normalized_shape) is stored as a list; _set_attrs
    # turns it back into a tuple where the module holds one, here and on replay.
    plain = {path: {a: list(v) if isinstance(v, tuple) else v for a, v in values.items()}
             for path, values in attrs.items() if values}
    _set_attrs(model, plain)
    edit: dict[str, Any] = {"op": "resize", "tensors": shapes, "attrs": plain}
    if log:
        edit_log(model).append(edit)
    return edit


def replay_resize(model: nn.Module, edit: dict[str, Any]) -> None:
    """Give the tensors and attributes of a freshly built model the recorded shapes."""
    for name, shape in edit["tensors"].items():
        _replace(model, name, torch.empty([int(s) for s in shape]))
    _set_attrs(model, edit["attrs"])


def _reached(model: nn.Module, analysis: Analysis, keep: Keep,
             shapes: dict[str, list[int]],
             old_shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, Resize]]:
    """The modules with a resize rule that the cut reaches, children first, each with its view of
    the cut: a module reached holds a cut tensor, contains one, or runs an operation on a cut
    dimension (a parameterless reshape or split keeps its sizes as attributes too)."""
    d = analysis.dims
    cut = [g for g in analysis.groups if g.id in keep and len(keep[g.id]) < g.size]
    paths = {""} | {p for g in cut for p in g.modules}
    for name in shapes:
        parts = name.split(".")[:-1]
        paths.update(".".join(parts[:k]) for k in range(len(parts) + 1))
    new_size: dict[int, int] = {}
    out = []
    for path in sorted(paths, key=lambda p: (-p.count(".") - bool(p), p)):
        try:
            module = get_submodule(model, path)
        except AttributeError:
            continue
        if find_rule(type(module)) is None:
            continue
        prefix = f"{path}." if path else ""
        sizes: dict[int, int] = {}
        ambiguous: set[int] = set()
        for g in cut:
            if not (any(m.name.startswith(prefix) for m in g.members)
                    or any(p == path or p.startswith(prefix) for p in g.modules)):
                continue
            for c in g.classes:
                root = d.find(c)
                if root not in new_size:
                    new_size[root] = int(len(d.keep(root, keep)))
                old, new = d.size[root], new_size[root]
                if old != new and sizes.setdefault(old, new) != new:
                    ambiguous.add(old)
        for old in ambiguous:
            del sizes[old]
        out.append((path, Resize(
            path, {n[len(prefix):]: tuple(s) for n, s in shapes.items() if n.startswith(prefix)},
            {n[len(prefix):]: s for n, s in old_shapes.items() if n.startswith(prefix)}, sizes,
            frozenset(ambiguous))))
    return out


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(name) if _is_param(model, name) else model.get_buffer(name)


def _slice_tensor(model: nn.Module, name: str,
                  cuts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    new = _tensor(model, name).detach()
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
    try:
        ruled = shrink(trial, analysis, keep, log=False)["attrs"]
    except ResizeRuleError as exc:
        return str(exc)
    exact = not group.inexact
    error = _check(trial, inputs, reference, exact)
    # A module's resize rule knows its sizes: the name search skips what rules already set, and
    # every attribute of a module whose own type has a rule.
    candidates = [(p, a, c) for p, a, c in _candidates(model, analysis, group)
                  if a not in ruled.get(p, {}) and not _own_rule(get_submodule(trial, p))]
    d = analysis.dims
    new_size = {c: int(len(d.keep(c, keep))) for _, _, c in candidates}
    saved = {(p, a): getattr(get_submodule(trial, p), a) for p, a, _ in candidates}

    def works(fixes: Sequence[AttrFix]) -> bool:
        for p, a, _ in candidates:
            setattr(get_submodule(trial, p), a, saved[(p, a)])
        for p, a, c in fixes:
            setattr(get_submodule(trial, p), a, new_size[c])
        return _check(trial, inputs, reference, exact) is None

    needed = [] if error is None else _fewest(candidates, works)
    if needed is None:
        return f"removing a zeroed channel fails or changes the outputs ({error})"
    # The traced inputs take one code path; others may read more of these sizes (a head count
    # used only without a mask), so every further candidate that still runs is updated too.
    for fix in candidates:
        if fix not in needed and works([*needed, fix]):
            needed.append(fix)
    return needed


def probe_all(model: nn.Module, analysis: Analysis, groups: Sequence[Group],
              inputs: Sequence[torch.Tensor]) -> dict[int, list[AttrFix] | str]:
    """`probe` for every group, by id. Groups with no size attribute to consider (layers whose
    resize rules know their sizes: most of a CNN) are probed together on one copy, halving the
    batch only where it fails, so a model with hundreds of groups costs a few copies."""
    result: dict[int, list[AttrFix] | str] = {}
    plain = [g for g in groups if not g.inexact and all(_fully_ruled(get_submodule(model, p))
                                      for p, _, _ in _candidates(model, analysis, g))]
    for g in groups:
        if g not in plain:
            result[g.id] = probe(model, analysis, g, inputs)

    def together(batch: Sequence[Group]) -> None:
        if len(batch) == 1:
            result[batch[0].id] = probe(model, analysis, batch[0], inputs)
            return
        keep = {g.id: torch.arange(1, g.size) for g in batch}
        zeroed = copy.deepcopy(model)
        zero_removed(zeroed, analysis, keep)
        reference = eval_outputs(zeroed, inputs)
        try:
            shrink(zeroed, analysis, keep, log=False)
            works = _check(zeroed, inputs, reference) is None
        except ResizeRuleError:
            works = False
        if works:
            result.update({g.id: [] for g in batch})
            return
        half = len(batch) // 2
        together(batch[:half])
        together(batch[half:])

    if plain:
        together(plain)
    return result


def _fully_ruled(module: nn.Module) -> bool:
    """Its resize rule sets every size it has: its type's own rule, or a torch layer's."""
    return _own_rule(module) or (find_rule(type(module)) is not None
                                 and type(module).__module__.startswith("torch.nn."))


def _own_rule(module: nn.Module) -> bool:
    found = find_rule(type(module))
    return found is not None and found[0] is type(module)


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
    tensors = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
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
           reference: list[torch.Tensor], exact: bool = True) -> str | None:
    """Why the cut model fails: it raises, its output shapes change, or (if `exact`) its
    outputs move beyond float rounding; None if it passes. An inexact cut must still give
    finite outputs."""
    try:
        outs = eval_outputs(model, inputs)
    except Exception as exc:  # recorded: returned as the group's "not cuttable" reason
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"
    shapes, ref_shapes = [tuple(t.shape) for t in outs], [tuple(t.shape) for t in reference]
    if shapes != ref_shapes:
        return f"output shapes changed {ref_shapes} -> {shapes}"
    if not exact:
        return None if all(bool(torch.isfinite(t).all()) for t in outs) else "non-finite outputs"
    for out, ref in zip(outs, reference, strict=True):
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        diff = float((out - ref).abs().max()) if ref.numel() else 0.0
        if not diff <= 1e-4 * scale:  # float summation order changes, nothing more
            return f"outputs changed by {diff:.3g}"
    return None
