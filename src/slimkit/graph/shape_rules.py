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
    dim = (args(node)[1] if len(args(node)) > 1 else kwargs(node).get("dim", 0)) % len(x)
    for k, (i, j) in enumerate(zip(x, out, strict=True)):
        if k != dim or an.size(i) == an.size(j):
            an.tie(i, j)
        else:
            an.lock(i, "sliced")
            an.lock(j, "sliced")


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
