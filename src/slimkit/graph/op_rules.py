"""How each ATen operation ties the channel dimensions of its inputs and outputs.

A rule receives the analyser and the node. Dimensions a rule does not tie stay independent;
dimensions whose size an operation depends on (normalised, softmaxed, sliced, indexed) are locked.
An operation without a rule locks every dimension it touches and is reported by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .deps import Analyser

Rule = Callable[["Analyser", torch.fx.Node], None]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def wrap(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn
    return wrap


ELEMENTWISE = (
    "add sub rsub mul div true_divide where relu relu_ gelu silu tanh sigmoid dropout neg exp "
    "log log1p sqrt rsqrt pow abs clamp clamp_min clamp_max hardtanh leaky_relu elu selu celu "
    "softplus mish hardswish hardsigmoid erf sin cos square reciprocal minimum maximum to "
    "_to_copy clone contiguous masked_fill type_as detach alias ne eq lt gt le ge logical_not "
    "logical_and logical_or __and__ __or__ bitwise_and bitwise_or bitwise_not "
    "sign floor ceil round remainder floor_divide fill feature_dropout alpha_dropout "
    "native_dropout zero copy"
).split()
CREATION = ("arange zeros ones full empty zeros_like ones_like full_like empty_like new_ones "
            "new_zeros new_full new_empty scalar_tensor lift_fresh_copy rand randn "
            "rand_like randn_like").split()
IGNORED = ("_assert_tensor_metadata sym_size sym_numel _assert_async "
           "_assert_scalar sym_constrain_range_for_size").split()
NORMALISING = ("mean var std norm linalg_vector_norm amax amin max min logsumexp prod "
               "argmax argmin").split()

# Statistics over a width whose value shifts smoothly when channels leave: a cut is inexact.
INEXACT_REDUCTIONS = ("mean", "var", "std", "norm", "linalg_vector_norm")


def args(node: torch.fx.Node) -> tuple[Any, ...]:
    """A node's positional arguments, typed loosely: rules check what they use."""
    return tuple(node.args)


def kwargs(node: torch.fx.Node) -> dict[str, Any]:
    return dict(node.kwargs)


def aligned(a: list[int], out: list[int]) -> list[tuple[int, int]]:
    """Pairs (i, j) of dims of `a` and `out` that broadcasting aligns (right to left)."""
    return [(len(a) - k, len(out) - k) for k in range(1, min(len(a), len(out)) + 1)]


@rule(*ELEMENTWISE)
def elementwise(an: Analyser, node: torch.fx.Node) -> None:
    out = an.value(node)
    for arg in an.tensor_args(node):
        dims = an.dims(arg)
        for i, j in aligned(dims, out):
            if an.size(dims[i]) == an.size(out[j]):
                an.tie(dims[i], out[j])


@rule("tril", "triu")
def triangle(an: Analyser, node: torch.fx.Node) -> None:
    """Which entries survive depends on both last indices: removing a row shifts the diagonal."""
    x, out = an.dims(args(node)[0]), an.value(node)
    for i, j in zip(x, out, strict=True):
        an.tie(i, j)
    for d in x[-2:]:
        an.lock(d, f"{an.op_name(node)} mask")


@rule(*CREATION)
def creation(an: Analyser, node: torch.fx.Node) -> None:
    an.value(node)


@rule(*IGNORED)
def ignored(an: Analyser, node: torch.fx.Node) -> None:
    if isinstance(node.meta.get("val"), torch.Tensor):
        an.value(node)


@rule("linear")
def linear(an: Analyser, node: torch.fx.Node) -> None:
    x, w = an.dims(args(node)[0]), an.dims(args(node)[1])
    out = an.value(node)
    an.tie(x[-1], w[1])
    an.tie(out[-1], w[0])
    if len(args(node)) > 2 and args(node)[2] is not None:
        an.tie(out[-1], an.dims(args(node)[2])[0])
    for i, j in zip(x[:-1], out[:-1], strict=True):
        an.tie(i, j)


@rule("mm", "matmul", "bmm", "addmm", "baddbmm", "addbmm")
def matmul(an: Analyser, node: torch.fx.Node) -> None:
    name = an.op_name(node)
    offset = 1 if name in ("addmm", "baddbmm", "addbmm") else 0
    a, b = an.dims(args(node)[offset]), an.dims(args(node)[offset + 1])
    out = an.value(node)
    if len(a) < 2 or len(b) < 2:
        an.lock_node(node, "vector matmul")
        return
    an.tie(a[-1], b[-2])
    an.tie(out[-2], a[-2])
    an.tie(out[-1], b[-1])
    for m in (a[:-2], b[:-2]):
        for i, j in aligned(m, out[:-2]):
            if an.size(m[i]) == an.size(out[j]):
                an.tie(m[i], out[j])
    if offset:
        bias = an.dims(args(node)[0])
        for i, j in aligned(bias, out):
            if an.size(bias[i]) == an.size(out[j]):
                an.tie(bias[i], out[j])


@rule("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
      "conv_transpose3d")
def conv(an: Analyser, node: torch.fx.Node) -> None:
    name = an.op_name(node)
    a = args(node)
    x, w, out = an.dims(a[0]), an.dims(a[1]), an.value(node)
    transposed = name.startswith("conv_transpose") or (name == "convolution" and bool(a[6]))
    if name == "convolution":
        groups = int(a[8])
    elif name.startswith("conv_transpose"):
        groups = int(a[6]) if len(a) > 6 else 1
    else:
        groups = int(a[6]) if len(a) > 6 else 1
    an.tie(x[0], out[0])
    for d in [*x[2:], *w[2:], *out[2:]]:
        an.lock(d, "spatial dimension")
    bias = an.dims(a[2]) if len(a) > 2 and a[2] is not None else None
    w_in, w_out = (w[0], w[1]) if transposed else (w[1], w[0])
    if groups == 1:
        an.tie(x[1], w_in)
        an.tie(out[1], w_out)
    elif not transposed and an.size(x[1]) == groups == an.size(out[1]) == an.size(w[0]):
        # Depthwise: channel c in -> channel c out; the group count follows the width.
        an.tie(x[1], out[1])
        an.tie(out[1], w[0])
        an.lock(w[1], "depthwise kernel")
    elif not transposed:
        # Grouped: channel = group x position within it, on both sides. The group count stays
        # (a module attribute and often a config value), so channels are cut evenly within
        # every group: the same positions of each.
        count = an.new_class(groups)
        an.lock(count, f"convolution group count (groups={groups})")
        per_in = an.new_class(an.size(x[1]) // groups)
        per_out = an.new_class(an.size(out[1]) // groups)
        an.compose(x[1], "prod", [count, per_in])
        an.compose(out[1], "prod", [count, per_out])
        an.tie(w[0], out[1])
        an.tie(w[1], per_in)
    else:
        for d in (x[1], out[1], w[0], w[1]):
            an.lock(d, f"grouped transposed convolution (groups={groups})")
    if bias is not None:
        an.tie(out[1], bias[0])


@rule("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
      "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
      "adaptive_max_pool2d", "max_pool2d_with_indices", "upsample_nearest2d",
      "upsample_bilinear2d", "_adaptive_avg_pool2d")
def pool(an: Analyser, node: torch.fx.Node) -> None:
    x = an.dims(args(node)[0])
    outs = an.values(node)
    name = an.op_name(node)
    spatial = 1 if "1d" in name else 3 if "3d" in name else 2
    for out in outs:
        if len(out) != len(x):
            continue
        for i in range(len(x) - spatial):  # batch (if any) and channels pass through
            an.tie(x[i], out[i])
        for d in [*x[len(x) - spatial:], *out[len(x) - spatial:]]:
            an.lock(d, "spatial dimension")


@rule("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
      "native_batch_norm", "instance_norm")
def batch_norm(an: Analyser, node: torch.fx.Node) -> None:
    x = an.dims(args(node)[0])
    outs = an.values(node)
    out = outs[0]
    for i, j in zip(x, out, strict=True):
        an.tie(i, j)
    # weight, bias, running mean, running var: one entry per channel.
    for arg in args(node)[1:5]:
        if isinstance(arg, torch.fx.Node) and an.has(arg):
            an.tie(x[1], an.dims(arg)[0])
    for extra in outs[1:]:
        for d in extra:
            an.lock(d, "batch-norm statistics output")


@rule("layer_norm", "native_layer_norm", "rms_norm", "group_norm", "native_group_norm")
def layer_norm(an: Analyser, node: torch.fx.Node) -> None:
    name = an.op_name(node)
    x = an.dims(args(node)[0])
    outs = an.values(node)
    out = outs[0]
    for i, j in zip(x, out, strict=True):
        an.tie(i, j)
    if "group" in name:
        # group_norm(x, groups, weight, bias, eps); native_group_norm(x, weight, bias, N, C,
        # HxW, groups, eps).
        native = name.startswith("native")
        groups = int(args(node)[6] if native else args(node)[1])
        for arg in args(node)[1:3] if native else args(node)[2:4]:
            if isinstance(arg, torch.fx.Node) and an.has(arg):
                an.tie(x[1], an.dims(arg)[0])
        if groups == 1:  # a LayerNorm over channels and positions (PoolFormer)
            an.lock_inexact(x[1], f"normalised by {name}")
        else:
            an.lock(x[1], f"normalised by {name} (groups={groups})")
        return
    k = len(args(node)[1])
    for arg in args(node)[2:4]:
        if isinstance(arg, torch.fx.Node) and an.has(arg):
            for i, d in enumerate(an.dims(arg)):
                an.tie(x[len(x) - k + i], d)
    for d in x[len(x) - k:]:
        # Dropping a channel changes the mean and variance of the rest: not exact, but it
        # runs, so a caller that recovers afterwards may ask for it (a transformer's width).
        an.lock_inexact(d, f"normalised by {name}")


@rule("embedding")
def embedding(an: Analyser, node: torch.fx.Node) -> None:
    w, idx, out = an.dims(args(node)[0]), an.dims(args(node)[1]), an.value(node)
    an.lock(w[0], "vocabulary rows")
    an.tie(out[-1], w[1])
    for i, j in zip(idx, out[:-1], strict=True):
        an.tie(i, j)


@rule("embedding_bag", "_embedding_bag", "_embedding_bag_forward_only")
def embedding_bag(an: Analyser, node: torch.fx.Node) -> None:
    w = an.dims(args(node)[0])
    outs = an.values(node)
    an.lock(w[0], "vocabulary rows")
    an.tie(outs[0][-1], w[1])
    for extra in outs[1:]:
        for d in extra:
            an.lock(d, "embedding-bag bookkeeping")


@rule("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
def attention(an: Analyser, node: torch.fx.Node) -> None:
    q, k, v = (an.dims(a) for a in args(node)[:3])
    out = an.values(node)[0]
    for i, j in zip(q[:-3], out[:-3], strict=True):
        an.tie(i, j)
    an.tie(q[-2], out[-2])
    an.tie(k[-2], v[-2])
    # head_dim sets the softmax scale and usually rotary embeddings: kept whole.
    for d in (q[-1], k[-1], v[-1], out[-1]):
        an.lock(d, "attention head dimension")
    heads_q, heads_kv = q[-3], k[-3]
    an.tie(heads_q, out[-3])
    an.tie(heads_kv, v[-3])
    if an.size(heads_q) == an.size(heads_kv):
        an.tie(heads_q, heads_kv)
    else:  # grouped-query attention: query head = kv head x position within its group
        group = an.new_class(an.size(heads_q) // an.size(heads_kv))
        an.compose(heads_q, "prod", [heads_kv, group])
    an.mark_heads(heads_q)
    mask = args(node)[3] if len(args(node)) > 3 else kwargs(node).get("attn_mask")
    if isinstance(mask, torch.fx.Node) and an.has(mask):
        m = an.dims(mask)
        for i, j in aligned(m, out):
            if an.size(m[i]) == an.size(out[j]) and j != len(out) - 1:
                an.tie(m[i], out[j])


@rule("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "diff",
      "sort", "topk", "flip", "roll")
def along_dim(an: Analyser, node: torch.fx.Node) -> None:
    x = an.dims(args(node)[0])
    outs = an.values(node)
    name = an.op_name(node)
    # Where the dim argument sits: roll(x, shifts, dims), topk(x, k, dim), diff(x, n, dim).
    at = 2 if name in ("roll", "topk", "diff") else 1
    dim = args(node)[at] if len(args(node)) > at else kwargs(node).get(
        "dims" if name == "roll" else "dim", -1)
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if name == "roll" and not dims:  # roll over the flattened tensor
        dims = list(range(len(x)))
    for out in outs:
        if len(out) == len(x):
            for i, j in zip(x, out, strict=True):
                an.tie(i, j)
    for d in dims:
        if isinstance(d, int):
            an.lock(x[d], f"{an.op_name(node)} along it")


@rule("sum", *NORMALISING)
def reduction(an: Analyser, node: torch.fx.Node) -> None:
    name = an.op_name(node)
    if name in ("max", "min") and len(an.tensor_args(node)) > 1:  # elementwise max(a, b)
        elementwise(an, node)
        return
    x = an.dims(args(node)[0])
    outs = an.values(node)
    at = 2 if name in ("norm", "linalg_vector_norm") else 1  # norm(x, ord, dim, keepdim)
    dim = args(node)[at] if len(args(node)) > at else kwargs(node).get("dim")
    if dim is None or isinstance(dim, bool):
        reduced = list(range(len(x)))
    else:
        reduced = [d % len(x) for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    if name in INEXACT_REDUCTIONS:  # a hand-written norm (RMSNorm): mean of squares
        for d in reduced:
            an.lock_inexact(x[d], f"{name} over it")
    elif name != "sum":  # a sum of zeros is zero; a max over fewer channels is not the max
        for d in reduced:
            an.lock(x[d], f"{name} over it")
    for out in outs:
        keep = [i for i in range(len(x)) if len(out) == len(x) or i not in reduced]
        if len(keep) == len(out):
            for i, j in zip(keep, out, strict=True):
                if an.size(x[i]) == an.size(j):
                    an.tie(x[i], j)
