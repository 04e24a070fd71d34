"""Channel importance of a dependency group: one score per channel, higher = keep.

Criteria: L1 / L2 magnitude of every tensor slice the group owns (Li et al. 2017); FPGM, the
distance of a channel's weights to the others, low near the geometric median (He et al. 2019);
first-order Taylor, (sum of weight x gradient)^2 per channel and batch (Molchanov et al. 2019);
activation-weighted magnitude, |W| times the norm of the input a consumer layer sees (Wanda, Sun
et al. 2023, applied to whole channels as in FLAP / Wanda-sp); BatchNorm scale |gamma| (Network
Slimming, Liu et al. 2017). Groups without the slices a criterion needs fall back to L2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ...graph.deps import Analysis, Group, Member
from ...graph.modules import get_submodule

CRITERIA = ("l1", "l2", "fpgm", "taylor", "activation", "bn_scale")


def _rows(model: nn.Module, analysis: Analysis, group: Group,
          m: Member, source: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """(values arranged as [index along dim, rest], owner channel of each index, valid mask)."""
    t = source[m.name] if source is not None else _tensor(model, m.name)
    rows = t.detach().float().movedim(m.dim, 0).reshape(t.shape[m.dim], -1)
    own = analysis.dims.owner(m.cls, group.id)
    return rows, own, own >= 0


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, leaf = name.rpartition(".")
    module = get_submodule(model, path)
    return module._parameters.get(leaf, None) if leaf in module._parameters \
        else module._buffers[leaf]


def _per_channel(group: Group, values: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(group.size)
    return out.index_add_(0, own, values)


def magnitude(model: nn.Module, analysis: Analysis, group: Group, p: int) -> torch.Tensor:
    score = torch.zeros(group.size)
    for m in group.members:
        rows, own, ok = _rows(model, analysis, group, m)
        per = rows[ok].abs().sum(1) if p == 1 else rows[ok].pow(2).sum(1)
        total = _per_channel(group, per, own[ok])
        score += total if p == 1 else total.sqrt()
    return score


def fpgm(model: nn.Module, analysis: Analysis, group: Group) -> torch.Tensor:
    parts = []
    for m in group.members:
        rows, own, ok = _rows(model, analysis, group, m)
        order = torch.argsort(own[ok], stable=True)
        parts.append(rows[ok][order].reshape(group.size, -1))
    vectors = torch.cat(parts, dim=1)
    return torch.cdist(vectors, vectors).sum(1)


def bn_scale(model: nn.Module, analysis: Analysis, group: Group) -> torch.Tensor | None:
    score, found = torch.zeros(group.size), False
    for m in group.members:
        path, _, leaf = m.name.rpartition(".")
        if leaf == "weight" and isinstance(get_submodule(model, path),
                                           nn.modules.batchnorm._BatchNorm):
            rows, own, ok = _rows(model, analysis, group, m)
            score += _per_channel(group, rows[ok].abs().sum(1), own[ok])
            found = True
    return score if found else None


def _input_dim(module: nn.Module, param_dim: int) -> int | None:
    """Which input dimension a weight's `param_dim` multiplies (None if it is an output dim)."""
    if isinstance(module, nn.Linear) and param_dim == 1:
        return -1
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and param_dim == 1:
        return 1
    if type(module).__name__ == "Conv1D" and param_dim == 0:  # Hugging Face GPT-2 layers
        return -1
    return None


def input_norms(model: nn.Module, groups: Sequence[Group],
                batches: Iterable[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """Squared L2 norm of every input feature of the consumer layers in `groups`."""
    wanted = {}
    for g in groups:
        for m in g.members:
            path, _, leaf = m.name.rpartition(".")
            module = get_submodule(model, path)
            if leaf == "weight" and _input_dim(module, m.dim) is not None:
                wanted[path] = (module, _input_dim(module, m.dim))
    sums: dict[str, torch.Tensor] = {}

    def hook(path: str, dim: int) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...], _out: object) -> None:
            x = args[0].detach().float().movedim(dim, -1)
            sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[path] = sums[path] + sq if path in sums else sq
        return fn

    handles = [mod.register_forward_hook(hook(p, d)) for p, (mod, d) in wanted.items()]
    try:
        with torch.no_grad():
            for inputs in batches:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return sums


def activation(model: nn.Module, analysis: Analysis, group: Group,
               norms: dict[str, torch.Tensor]) -> torch.Tensor | None:
    score, found = torch.zeros(group.size), False
    for m in group.members:
        path, _, leaf = m.name.rpartition(".")
        if leaf != "weight" or path not in norms:
            continue
        dim = _input_dim(get_submodule(model, path), m.dim)
        if dim is None:
            continue
        rows, own, ok = _rows(model, analysis, group, m)
        weighted = rows.abs().sum(1) * norms[path].sqrt()
        score += _per_channel(group, weighted[ok], own[ok])
        found = True
    return score if found else None


def taylor_accumulate(model: nn.Module, analysis: Analysis, groups: Sequence[Group],
                      totals: dict[int, torch.Tensor]) -> None:
    """Add this batch's (sum over each channel's slices of w * dL/dw)^2 to `totals`."""
    # Every name of a tied tensor: the trace may know it by either.
    params = dict(model.named_parameters(remove_duplicate=False))
    grads = {name: p.grad for name, p in params.items() if p.grad is not None}
    for g in groups:
        per = torch.zeros(g.size)
        for m in g.members:
            if m.name not in grads:
                continue
            prod = {m.name: params[m.name].detach() * grads[m.name]}
            rows, own, ok = _rows(model, analysis, g, m, prod)
            per += _per_channel(g, rows[ok].sum(1), own[ok])
        totals[g.id] = totals.get(g.id, torch.zeros(g.size)) + per.pow(2)


def scores(model: nn.Module, analysis: Analysis, groups: Sequence[Group], criterion: str, *,
           norms: dict[str, torch.Tensor] | None = None,
           taylor: dict[int, torch.Tensor] | None = None) -> tuple[dict[int, torch.Tensor], int]:
    """Scores for every group, and how many groups fell back to L2 for lack of slices."""
    out: dict[int, torch.Tensor] = {}
    fallbacks = 0
    for g in groups:
        s: torch.Tensor | None
        if criterion in ("l1", "l2"):
            s = magnitude(model, analysis, g, 1 if criterion == "l1" else 2)
        elif criterion == "fpgm":
            s = fpgm(model, analysis, g)
        elif criterion == "bn_scale":
            s = bn_scale(model, analysis, g)
        elif criterion == "activation":
            s = activation(model, analysis, g, norms or {})
        else:
            s = (taylor or {}).get(g.id)
        if s is None:
            fallbacks += 1
            s = magnitude(model, analysis, g, 2)
        out[g.id] = s
    return out, fallbacks
