"""Rules for operations that move dimensions around without mixing channels: reshapes,
permutations, broadcasts, concatenation and splitting (which make products and concatenations of
classes), and slicing or indexing (which lock what they touch). See op_rules.py for the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .op_rules import aligned, args, kwargs, rule

if TYPE_CHECKING:
    from .deps import Analyser

INDEXING = ("index_select gather scatter scatter_add index_put take masked_select "
            "nonzero embedding_dense_backward").split()


@rule("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
      "view_as", "reshape_as")
def reshape(an: Analyser, node: torch.fx.Node) -> None:
    an.reshape(an.dims(args(node)[0]), an.value(node))


@rule("permute", "transpose", "t", "swapaxes", "movedim", "numpy_T", "mT")
def permute(an: Analyser, node: torch.fx.Node) -> None:
    x, out = an.dims(args(node)[0]), an.value(node)
    n = len(x)
    order = list(range(n))
    name = an.op_name(node)
    if name == "permute":
        order = [d % n for d in args(node)[1]]
    elif name in ("transpose", "swapaxes"):
        a, b = args(node)[1] % n, args(node)[2] % n
        order[a], order[b] = order[b], order[a]
    elif name in ("t", "numpy_T", "mT") and n >= 2:
        order[-1], order[-2] = order[-2], order[-1]
    else:
        an.lock_node(node, f"{name} not modelled")
        return
    for j, i in enumerate(order):
        an.tie(x[i], out[j])


@rule("expand", "expand_as", "broadcast_to")
def expand(an: Analyser, node: torch.fx.Node) -> None:
    x, out = an.dims(args(node)[0]), an.value(node)
    for i, j in aligned(x, out):
        if an.size(x[i]) == an.size(out[j]):
            an.tie(x[i], out[j])


@rule("repeat")
def repeat(an: Analyser, node: torch.fx.Node) -> None:
    x, out = an.dims(args(node)[0]), an.value(node)
    for i, j in aligned(x, out):
        if an.size(x[i]) == an.size(out[j]):
            an.tie(x[i], out[j])
        else:
            an.compose(out[j], "prod", [an.new_class(an.size(out[j]) // an.size(x[i])), x[i]])


@rule("cat", "concat", "concatenate", "stack")
def cat(an: Analyser, node: torch.fx.Node) -> None:
    parts = [an.dims(t) for t in args(node)[0] if isinstance(t, torch.fx.Node)]
    out = an.value(node)
    dim = args(node)[1] if len(args(node)) > 1 else kwargs(node).get("dim", 0)
    if an.op_name(node) == "stack":
        dim = dim % len(out)
        an.lock(out[dim], "stacked")
        for p in parts:
            rest = [d for k, d in enumerate(out) if k != dim]
            for i, j in zip(p, rest, strict=True):
                an.tie(i, j)
        return
    dim = dim % len(out)
    parts = [p for p in parts if len(p) == len(out)]  # cat skips empty 1-d tensors
    for p in parts:
        for k, (i, j) in enumerate(zip(p, out, strict=True)):
            if k != dim:
                an.tie(i, j)
    an.compose(out[dim], "cat", [p[dim] for p in parts])


@rule("split", "split_with_sizes", "chunk", "tensor_split", "unbind")
def split(an: Analyser, node: torch.fx.Node) -> None:
    name = an.op_name(node)
    x = an.dims(args(node)[0])
    outs = an.values(node)
    default = 0 if name in ("unbind",) else 0
    dim = args(node)[2] if len(args(node)) > 2 else kwargs(node).get("dim", default)
    if name == "unbind":
        dim = args(node)[1] if len(args(node)) > 1 else 0
        an.lock(x[dim % len(x)], "unbound")
        return
    dim = dim % len(x)
    for out in outs:
        for k, (i, j) in enumerate(zip(x, out, strict=True)):
            if k != dim:
                an.tie(i, j)
    if name == "chunk":  # parts are recomputed from the total at run time: keep them equal
        for out in outs[1:]:
            an.tie(outs[0][dim], out[dim])
    an.compose(x[dim], "cat", [out[dim] for out in outs])


@rule("slice", "narrow")
def slice_(an: Analyser, node: torch.fx.Node) -> None:
    x, out = an.dims(args(node)[0]), an.value(node)
    dim = _slice_dim(node, len(x))
    for k, (i, j) in enumerate(zip(x, out, strict=True)):
        if k != dim or an.size(i) == an.size(j):
            an.tie(i, j)
    if an.size(x[dim]) == an.size(out[dim]):
        return
    pieces = _pieces(an, args(node)[0], dim, an.size(x[dim]))
    bounds = _bounds(node, an.size(x[dim]), an.op_name(node))
    if pieces is None or bounds is None:
        an.lock(x[dim], "sliced")
        an.lock(out[dim], "sliced")
        return
    start, end = bounds
    an.compose(out[dim], "cat", [c for s, e, c in pieces if start <= s and e <= end])


def _slice_dim(node: torch.fx.Node, rank: int) -> int:
    return int(args(node)[1] if len(args(node)) > 1 else kwargs(node).get("dim", 0)) % rank


def _bounds(node: torch.fx.Node, size: int, name: str) -> tuple[int, int] | None:
    """[start, end) of a unit-step slice or narrow with constant bounds, else None."""
    a = args(node)
    if name == "narrow":
        start, length = (a[2], a[3]) if len(a) > 3 else (None, None)
        if not isinstance(start, int) or not isinstance(length, int):
            return None
        start = start % size
        return start, start + length
    start = a[2] if len(a) > 2 else kwargs(node).get("start")
    end = a[3] if len(a) > 3 else kwargs(node).get("end")
    step = a[4] if len(a) > 4 else kwargs(node).get("step", 1)
    if step != 1 or not isinstance(start or 0, int) or not isinstance(
            size if end is None else end, int):
        return None
    lo, hi = int(start or 0), size if end is None else int(end)
    lo, hi = (lo + size if lo < 0 else lo), (hi + size if hi < 0 else hi)
    return max(0, min(lo, size)), max(0, min(hi, size))


def _pieces(an: Analyser, source: torch.fx.Node, dim: int,
            size: int) -> list[tuple[int, int, int]] | None:
    """The dimension cut at every bound of every slice taken from it (a fused QKV output
    sliced into q, k and v): [(start, end, class)], declared once as their concatenation, so
    each slice is a run of pieces and a head cut in q removes its rows of the fused weight."""
    key = (source, dim)
    if source.op == "placeholder":
        # A table sliced to an input's length (positions[:T]): the bounds are the example's,
        # not the model's, so its rows stay whole.
        return None
    if key not in an.slice_pieces:
        cuts = {0, size}
        for user in source.users:
            name = an.op_name(user)
            if name in ("slice", "narrow") and args(user)[0] is source \
                    and _slice_dim(user, len(an.dims(source))) == dim:
                bounds = _bounds(user, size, name)
                if bounds is None:
                    an.slice_pieces[key] = None
                    return None
                cuts.update(bounds)
        edges = sorted(cuts)
        pieces = [(s, e, an.new_class(e - s)) for s, e in zip(edges, edges[1:], strict=False)
                  if e > s]
        an.compose(an.dims(source)[dim], "cat", [c for _, _, c in pieces])
        covered = [b for u in source.users if an.op_name(u) in ("slice", "narrow")
                   and (b := _bounds(u, size, an.op_name(u))) is not None]
        for s, e, c in pieces:  # a part no slice reads is never checked by the probe
            if not any(lo <= s and e <= hi for lo, hi in covered):
                an.lock(c, "sliced off")
        an.slice_pieces[key] = pieces
    return an.slice_pieces[key]


@rule("select")
def select(an: Analyser, node: torch.fx.Node) -> None:
    x, out = an.dims(args(node)[0]), an.value(node)
    dim = args(node)[1] % len(x)
    an.lock(x[dim], "indexed by select")
    for i, j in zip([d for k, d in enumerate(x) if k != dim], out, strict=True):
        an.tie(i, j)


@rule("index")
def index(an: Analyser, node: torch.fx.Node) -> None:
    """x[idx] with index tensors on a run of consecutive leading-or-inner axes: those axes are
    looked up (locked); the axes before and after pass through (Swin's bias table[index] keeps
    its head axis, a class-token lookup keeps the width)."""
    x, out = an.dims(args(node)[0]), an.value(node)
    indices = list(args(node)[1])
    used = [k for k, i in enumerate(indices) if i is not None]
    if not used or used != list(range(used[0], used[-1] + 1)):
        an.lock_node(node, "indexed by index")  # scattered index axes move to the front
        return
    start, end = used[0], used[-1] + 1
    for k in range(start, end):
        an.lock(x[k], "indexed by index")
    for i in indices:
        if an.has(i):
            for d in an.dims(i):
                an.lock(d, "index tensor")
    rest = len(x) - end
    for k in range(start):
        an.tie(x[k], out[k])
    for k in range(1, rest + 1):
        an.tie(x[-k], out[-k])
    for d in out[start:len(out) - rest]:
        an.lock(d, "indexed by index")


@rule(*INDEXING)
def indexing(an: Analyser, node: torch.fx.Node) -> None:
    an.lock_node(node, f"indexed by {an.op_name(node)}")




@rule("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
      "replication_pad2d", "reflection_pad3d", "replication_pad3d")
def pad(an: Analyser, node: torch.fx.Node) -> None:
    """Padding widens the trailing dimensions it pads (pairs listed from the last dim back);
    the rest pass through, so a channel dimension under "same" padding of its spatial ones is
    still cut."""
    x, out = an.dims(args(node)[0]), an.value(node)
    widths = list(args(node)[1]) if len(args(node)) > 1 else list(kwargs(node)["pad"])
    padded = {len(x) - 1 - k // 2 for k, w in enumerate(widths) if w != 0}
    for k, (i, j) in enumerate(zip(x, out, strict=True)):
        if k in padded:
            an.lock(i, "padded")
            an.lock(j, "padded")
        else:
            an.tie(i, j)
