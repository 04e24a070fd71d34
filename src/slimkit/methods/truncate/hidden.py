"""Width truncation of a BERT-family encoder: a narrower model built directly from the wide one.

The hidden (residual) width H becomes `width`, each layer keeps `heads` attention heads and `ffn`
FFN neurons. One set of hidden dimensions is kept for the whole residual stream (every embedding
table's columns, every LayerNorm, every Linear that reads or writes the stream, the pooler), so
the narrow model reads and writes the same coordinates everywhere. What is kept is what carries
the most activation energy on the task's calibration batches (real tokens only):

- hidden dimension d: the sum over every LayerNorm output (embeddings, two per layer) of the
  mean of out[..., d]^2;
- head h of a layer: the mean of ||context_h||^2 (its slice of the output projection's input)
  times ||W_o[:, h]||_F^2, what the head can add to the stream;
- FFN neuron n: the mean of act_n^2 (the input of output.dense) times ||W_out[:, n]||^2.

LayerNorm over the kept subset normalises with the subset's mean and variance, not the full
width's, so the cut model is close but not equal to the wide one: recovery (fine-tuning, or a
following distill.encoder step, which projects between widths) trains it back. The same layout as
transformers' BertModel (also RoBERTa, MiniLM), with heads * head size == width by default so the
result is a stock BertConfig (export.encoder.plain_encoder).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...core import Context, check_range, register
from ...core.config import DATA, DATA_AND_TEACHER
from ...core.errors import ConfigError, SlimkitError
from ...core.task import batches_used
from ...graph import cut_tensors, get_submodule
from ...graph.trace import tensors_of
from ..recovery import Recovery, recover
from .activation_energy import ActivationEnergy

log = logging.getLogger(__name__)

_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense")
_LAYER_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")
_EXPECTED_LAYER = ("a list of BERT layers (attention.self.query/key/value, attention.output."
                   "dense/LayerNorm, intermediate.dense, output.dense/LayerNorm)")
_EXPECTED_EMBEDDINGS = ("a BERT embeddings block (word_embeddings and other nn.Embedding tables, "
                        "LayerNorm)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hidden(Recovery):
    """Narrow the hidden width to `width`, the heads per layer to `heads` (default width // head
    size) and the FFN to `ffn` neurons (default intermediate size * width / hidden size), keeping
    the dimensions, heads and neurons with the most activation energy on the task's batches."""

    method = "truncate.hidden"
    width: int
    heads: int | None = None
    ffn: int | None = None
    calibration_batches: int = 8
    embeddings: str = "embeddings"
    layers: str = "encoder.layer"

    def requires(self) -> frozenset[str]:
        return DATA_AND_TEACHER if self.recover == "distill" else DATA

    def validate(self) -> None:
        # Upper bounds depend on the model and are checked when the step runs.
        check_range("width", self.width, 1, 1 << 20)
        if self.heads is not None:
            check_range("heads", self.heads, 1, 1 << 20)
        if self.ffn is not None:
            check_range("ffn", self.ffn, 1, 1 << 24)
        check_range("calibration_batches", self.calibration_batches, 1, 1 << 20)
        self.check_recovery()


@dataclasses.dataclass
class _Layer:
    path: str  # full path of the layer
    heads: int
    head_size: int
    ffn: int


@dataclasses.dataclass
class _Layout:
    hidden: int
    embeddings: str  # full path
    tables: list[str]  # full paths of the nn.Embedding tables
    norms: list[str]  # full paths of every LayerNorm on the residual stream
    layers: list[_Layer]
    pooler: str | None  # full path of the pooler's dense layer


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        found = get_submodule(model, path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.Module) else None


def _layout(model: nn.Module, config: Hidden) -> _Layout:
    """The encoder's layout, or ConfigError naming `embeddings` or `layers` and what was
    expected there."""
    emb = _module(model, config.embeddings)
    if emb is None:
        raise ConfigError("embeddings", config.embeddings,
                          f"the path of {_EXPECTED_EMBEDDINGS}")
    word = _module(emb, "word_embeddings")
    if word is None:
        raise ConfigError("embeddings", config.embeddings,
                          f"{_EXPECTED_EMBEDDINGS}; it has no word_embeddings")
    if not isinstance(word, nn.Embedding):
        raise ConfigError("embeddings", config.embeddings,
                          f"a block whose word_embeddings is an nn.Embedding, not a "
                          f"{type(word).__name__} (run truncate.hidden before truncate.vocab "
                          "and the embedding methods)")
    hidden = int(word.embedding_dim)
    prefix = f"{config.embeddings}."
    tables, norms = [], []
    for name, child in emb.named_children():
        if isinstance(child, nn.Embedding) and int(child.embedding_dim) == hidden:
            tables.append(prefix + name)
        elif isinstance(child, nn.LayerNorm) and _is_norm(child, hidden):
            norms.append(prefix + name)
        elif any(True for _ in child.parameters()):
            raise ConfigError("embeddings", config.embeddings,
                              f"{_EXPECTED_EMBEDDINGS}; {name} is a {type(child).__name__} of "
                              "other sizes")
    if not norms or any(True for _ in emb.parameters(recurse=False)):
        raise ConfigError("embeddings", config.embeddings,
                          f"{_EXPECTED_EMBEDDINGS} with one LayerNorm of width {hidden}")
    blocks = _module(model, config.layers)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise ConfigError("layers", config.layers, f"the path of {_EXPECTED_LAYER}")
    layers = []
    for i, block in enumerate(blocks):
        path = f"{config.layers}.{i}"
        parts = {p: _module(block, p) for p in (*_LAYER_PARTS, *_LAYER_NORMS)}
        missing = [p for p in _LAYER_PARTS if not isinstance(parts[p], nn.Linear)] + \
                  [p for p in _LAYER_NORMS if not isinstance(parts[p], nn.LayerNorm)
                   or not _is_norm(parts[p], hidden)]
        attn = _module(block, "attention.self")
        heads = getattr(attn, "num_attention_heads", None)
        size = getattr(attn, "attention_head_size", None)
        if missing or not isinstance(heads, int) or not isinstance(size, int):
            what = f"no nn.Linear/LayerNorm({hidden}) {missing[0]}" if missing else \
                "no integer attention.self.num_attention_heads/attention_head_size"
            raise ConfigError("layers", config.layers, f"{_EXPECTED_LAYER}; layer {i} has {what}")
        q, o = parts["attention.self.query"], parts["attention.output.dense"]
        up, down = parts["intermediate.dense"], parts["output.dense"]
        assert isinstance(q, nn.Linear) and isinstance(o, nn.Linear)
        assert isinstance(up, nn.Linear) and isinstance(down, nn.Linear)
        qkv = [parts[p] for p in _LAYER_PARTS[:3]]
        sizes_fit = (all(isinstance(m, nn.Linear) and (m.in_features, m.out_features)
                         == (hidden, heads * size) for m in qkv)
                     and (o.in_features, o.out_features) == (heads * size, hidden)
                     and up.in_features == hidden == down.out_features
                     and down.in_features == up.out_features
                     and all(m.bias is not None for m in (*qkv, o, up, down)
                             if isinstance(m, nn.Linear)))
        if not sizes_fit:
            raise ConfigError("layers", config.layers,
                              f"{_EXPECTED_LAYER} of width {hidden} with biases; layer {i}'s "
                              "projections have other sizes")
        layers.append(_Layer(path, heads, size, int(up.out_features)))
        norms.extend(f"{path}.{n}" for n in _LAYER_NORMS)
    parent = config.embeddings.rpartition(".")[0]
    pooler_path = f"{parent}.pooler.dense" if parent else "pooler.dense"
    pooler = _module(model, pooler_path)
    if not (isinstance(pooler, nn.Linear) and pooler.in_features == hidden
            == pooler.out_features):
        pooler_path, pooler = "", None
    return _Layout(hidden, config.embeddings, tables, norms, layers, pooler_path or None)


def _is_norm(module: nn.Module, hidden: int) -> bool:
    return (isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (hidden,)
            and module.weight is not None and module.bias is not None)


def _sizes(layout: _Layout, config: Hidden) -> tuple[int, list[int]]:
    """Heads kept per layer and FFN neurons kept per layer; ConfigError naming the field for a
    value the model cannot take."""
    h = layout.hidden
    if config.width > h:
        raise ConfigError("width", config.width, f"at most the model's hidden size {h}")
    head_sizes = {layer.head_size for layer in layout.layers}
    if config.heads is None:
        size = min(head_sizes)
        if len(head_sizes) > 1 or config.width % size:
            raise ConfigError("width", config.width,
                              f"a multiple of the attention head size {sorted(head_sizes)} "
                              "(or set heads)")
        heads = config.width // size
    else:
        heads = config.heads
    fewest = min(layer.heads for layer in layout.layers)
    if heads > fewest:
        raise ConfigError("heads", heads, f"at most {fewest}, the model's heads per layer"
                          + (" (width // head size by default)" if config.heads is None else ""))
    if config.ffn is None:
        ffn = [max(1, round(layer.ffn * config.width / h)) for layer in layout.layers]
    else:
        narrowest = min(layer.ffn for layer in layout.layers)
        if config.ffn > narrowest:
            raise ConfigError("ffn", config.ffn, f"at most {narrowest}, the model's FFN width")
        ffn = [config.ffn] * len(layout.layers)
    return heads, ffn


@torch.no_grad()
def _importance(model: nn.Module, layout: _Layout, batches: list[tuple[torch.Tensor, ...]]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Scores of the hidden dimensions, of each layer's heads and FFN neurons, and the shape of
    the model's first output tensor (for the recovery check)."""
    energy = ActivationEnergy()
    handles = []

    def output_hook(key: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
            energy.add(key, out)
        return fn

    def input_hook(key: str) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            energy.add(key, args[0])
        return fn

    for path in layout.norms:
        handles.append(get_submodule(model, path).register_forward_hook(output_hook(path)))
    for layer in layout.layers:
        for part in ("attention.output.dense", "output.dense"):
            path = f"{layer.path}.{part}"
            handles.append(get_submodule(model, path).register_forward_pre_hook(input_hook(path)))
    was_training = model.training
    model.eval()
    out_shape: list[int] = []
    try:
        for inputs in batches:
            # (input_ids, attention_mask): padded positions are not counted.
            energy.mask = inputs[1] if len(inputs) > 1 and inputs[1].dim() == 2 else None
            first = tensors_of(model(*inputs))
            out_shape = list(first[0].shape) if first else []
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    hidden: torch.Tensor = sum(energy.mean(p) for p in layout.norms)  # type: ignore[assignment]
    heads, ffn = [], []
    for layer in layout.layers:
        w_o = get_submodule(model, f"{layer.path}.attention.output.dense").weight.detach().float()
        context = energy.mean(f"{layer.path}.attention.output.dense")
        heads.append(context.view(layer.heads, layer.head_size).sum(1)
                     * w_o.pow(2).view(-1, layer.heads, layer.head_size).sum((0, 2)))
        w_out = get_submodule(model, f"{layer.path}.output.dense").weight.detach().float()
        ffn.append(energy.mean(f"{layer.path}.output.dense") * w_out.pow(2).sum(0))
    return hidden, heads, ffn, out_shape


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best indices, ascending (the kept dimensions keep their order)."""
    return torch.topk(scores, k).indices.sort().values


def _share(scores: torch.Tensor, kept: torch.Tensor) -> float:
    total = float(scores.sum())
    return round(float(scores[kept].sum()) / total, 4) if total > 0 else 1.0


def _plan(model: nn.Module, layout: _Layout, hid: torch.Tensor, heads: list[torch.Tensor],
          ffn: list[torch.Tensor]) -> tuple[dict[str, list[tuple[int, torch.Tensor]]],
                                            dict[str, dict[str, Any]]]:
    """Tensor cuts and size attributes for cut_tensors."""
    width = len(hid)
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    attrs: dict[str, dict[str, Any]] = {}

    def linear(path: str, rows: torch.Tensor, cols: torch.Tensor) -> None:
        cuts[f"{path}.weight"] = [(0, rows), (1, cols)]
        cuts[f"{path}.bias"] = [(0, rows)]
        attrs[path] = {"in_features": len(cols), "out_features": len(rows)}

    def norm(path: str) -> None:
        cuts[f"{path}.weight"] = [(0, hid)]
        cuts[f"{path}.bias"] = [(0, hid)]
        attrs[path] = {"normalized_shape": [width]}

    for path in layout.tables:
        cuts[f"{path}.weight"] = [(1, hid)]
        attrs[path] = {"embedding_dim": width}
    for path in layout.norms:
        norm(path)
    for layer, kept_heads, kept_ffn in zip(layout.layers, heads, ffn, strict=True):
        size = layer.head_size
        cols = (kept_heads[:, None] * size + torch.arange(size, device=hid.device)).flatten()
        for part in ("query", "key", "value"):
            linear(f"{layer.path}.attention.self.{part}", cols, hid)
        attrs[f"{layer.path}.attention.self"] = {"num_attention_heads": len(kept_heads),
                                                 "all_head_size": len(cols)}
        linear(f"{layer.path}.attention.output.dense", hid, cols)
        linear(f"{layer.path}.intermediate.dense", kept_ffn, hid)
        linear(f"{layer.path}.output.dense", hid, kept_ffn)
    if layout.pooler is not None:
        linear(layout.pooler, hid, hid)
    # Tied tensors (an LM head sharing the word table) are cut once, by their first name.
    first = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    names = {n for n, t in [*model.named_parameters(remove_duplicate=False),
                            *model.named_buffers(remove_duplicate=False)]
             if n in cuts and first[id(t)] != n}
    for name in names:
        del cuts[name]
    return cuts, attrs


def _others(model: nn.Module, cuts: dict[str, Any], hidden: int) -> list[str]:
    """Parameters the cut does not reach that have a dimension of the hidden width (a task head
    reading the hidden state): cutting would leave them reading the wrong coordinates."""
    cut = {id(model.get_parameter(n)) for n in cuts}
    return [f"{n} {list(p.shape)}" for n, p in model.named_parameters()
            if id(p) not in cut and hidden in p.shape]


@register(Hidden)
def apply_hidden(model: nn.Module, config: Hidden, ctx: Context) -> nn.Module:
    layout = _layout(model, config)
    n_heads, n_ffn = _sizes(layout, config)
    task = ctx.require_task(config.method)
    device = next(model.parameters()).device
    raw = task.calibration_batches(config.calibration_batches)
    if not raw:
        raise SlimkitError("truncate.hidden: the task gave no calibration batches")
    batches = [tuple(t.to(device) for t in task.inputs(b)) for b in raw]
    scores, head_scores, ffn_scores, out_before = _importance(model, layout, batches)
    hid = _top(scores, config.width)
    kept_heads = [_top(s, n_heads) for s in head_scores]
    kept_ffn = [_top(s, k) for s, k in zip(ffn_scores, n_ffn, strict=True)]
    cuts, attrs = _plan(model, layout, hid.to(device), [h.to(device) for h in kept_heads],
                        [f.to(device) for f in kept_ffn])
    others = _others(model, cuts, layout.hidden)
    if others:
        raise SlimkitError(f"truncate.hidden: {others[0]} also has the hidden width "
                           f"{layout.hidden} but is not part of a BERT encoder's embeddings, "
                           f"layers ({config.layers}) or pooler; narrow the bare encoder")
    before = sum(p.numel() for p in model.parameters())
    cut_tensors(model, cuts, attrs)
    after = sum(p.numel() for p in model.parameters())
    ctx.info.update({
        "calibration": batches_used(task, raw, config.calibration_batches),
        "hidden_before": layout.hidden, "hidden_after": config.width,
        "hidden_importance_kept": _share(scores, hid),
        "heads_before": [layer.heads for layer in layout.layers], "heads_after": n_heads,
        "heads_kept": [h.tolist() for h in kept_heads],
        "head_importance_kept": [_share(s, k) for s, k in zip(head_scores, kept_heads,
                                                               strict=True)],
        "ffn_before": [layer.ffn for layer in layout.layers], "ffn_after": n_ffn,
        "ffn_importance_kept": [_share(s, k) for s, k in zip(ffn_scores, kept_ffn,
                                                              strict=True)],
        "params_before": before, "params_after": after,
        "params_removed": round(1 - after / before, 4)})
    log.info("truncate.hidden: width %d -> %d, %d heads, FFN %s; %.1f%% of the hidden energy "
             "kept", layout.hidden, config.width, n_heads, n_ffn,
             100 * ctx.info["hidden_importance_kept"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = tensors_of(model(*batches[0]))
    except Exception as exc:  # reported: the layout had a size the cut did not reach
        raise SlimkitError(f"truncate.hidden: the narrowed model does not run "
                           f"({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"
                           ) from exc
    finally:
        model.train(was_training)
    out_after = list(first[0].shape) if first else []
    if config.recover == "distill" and config.epochs > 0 and out_after != out_before:
        raise ConfigError("recover", config.recover,
                          f"none or finetune: the model's output narrows {out_before} -> "
                          f"{out_after}, which logits distillation cannot compare with the "
                          "teacher's (follow with distill.encoder, which projects widths)")
    recover(model, config, ctx, desc=f"truncate.hidden: {config.recover}")
    return model
