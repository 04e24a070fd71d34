"""Distillation for text encoders, from the uncompressed model (or any teacher) on unlabelled
text: sentence embeddings (cosine or MSE, Reimers and Gurevych 2020), hidden states through an
automatic layer mapping with learned projections where widths differ (TinyBERT, Jiao et al. 2020),
and self-attention relations of the last layer (MiniLMv2, Wang et al. 2021): softmax(X X^T) over
relation heads for queries, keys and values, matched with KL divergence, which works across
different head counts and widths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...core import Batch, Context, MethodConfig, check_range, check_training, register
from ...core.config import DATA_AND_TEACHER
from ...core.errors import ConfigError, SlimkitError
from ...models.pooling import masked_mean_pool
from ...train import fit
from .losses import attention_relations

PROJECTIONS = ("query", "key", "value")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderKD(MethodConfig):
    """loss = w_e * embedding loss + w_h * hidden-state MSE + w_a * attention-relation KL.

    With the embedding loss alone and `cache_teacher`, the teacher embeds each training text
    once (the first time a batch holds it) and later epochs reuse its embedding, so an epoch
    after the first costs the student's passes only (hidden states and attention relations are
    per token and are not cached).

    `matryoshka` (widths such as (64, 128)): each prefix of the student's embedding, renormalised,
    is also trained so that its in-batch cosine similarities match the teacher's (MSE), as
    Matryoshka representation learning (Kusupati et al. 2022) does with a similarity loss, so an
    index may keep only the first dimensions; the teacher may have any width.

    A student narrower (or wider) than the teacher (truncate.hidden) has embeddings in another
    space: the embedding loss then compares the teacher's with a training-only linear map of the
    student's (least squares on calibration texts to start), and the in-batch similarity
    matrices of the student's own embedding and the teacher's are matched too (MSE, weight
    `similarity_weight`; None: 10 where the widths differ, else 0), which is what search with
    the student's embeddings relies on. (On a tiny BERT cut to half width, the similarity error
    on held-out text fell 28% with weight 10 and rose with 1: the MSE of cosines is much smaller
    than the cosine loss.)"""

    method = "distill.encoder"
    embedding_loss: Literal["cosine", "mse"] = "cosine"
    embedding_weight: float = 1.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    relation_heads: int = 12
    layer_map: tuple[int, ...] = ()
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 32
    schedule: Literal["constant", "linear"] = "linear"
    cache_teacher: bool = True
    matryoshka: tuple[int, ...] = ()
    matryoshka_weight: float = 1.0
    similarity_weight: float | None = None

    def requires(self) -> frozenset[str]:
        return DATA_AND_TEACHER

    def validate(self) -> None:
        for name in ("embedding_weight", "hidden_weight", "attention_weight"):
            check_range(name, getattr(self, name), 0.0, 1000.0)
        if self.embedding_weight + self.hidden_weight + self.attention_weight <= 0:
            raise ConfigError("embedding_weight", self.embedding_weight,
                              "a positive weight on at least one loss")
        check_range("relation_heads", self.relation_heads, 1, 1024)
        for d in self.matryoshka:
            check_range("matryoshka", d, 1, 1 << 16)
        check_range("matryoshka_weight", self.matryoshka_weight, 0.0, 1000.0)
        if self.similarity_weight is not None:
            check_range("similarity_weight", self.similarity_weight, 0.0, 1000.0)
        for i in self.layer_map:
            check_range("layer_map", i, 0, 1024)
        check_training(self)


def _layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the largest ModuleList of the encoder."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise SlimkitError("distill.encoder: the model has no list of layers")
    return max(lists, key=len)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Uniform mapping: student layer i learns teacher layer ceil((i + 1) * T / S) - 1, so the
    last layers meet and the others spread evenly."""
    return [-(-(i + 1) * n_teacher // n_student) - 1 for i in range(n_student)]


class _Relations:
    """Captures the query/key/value projections of one layer during a forward pass."""

    def __init__(self, layer: nn.Module) -> None:
        self.out: dict[str, torch.Tensor] = {}
        found = {name.rpartition(".")[2]: m for name, m in layer.named_modules()
                 if name.rpartition(".")[2] in PROJECTIONS}
        if set(found) != set(PROJECTIONS):
            raise SlimkitError("distill.encoder: attention relations need query/key/value "
                               "projections in the last layer")
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in found.items()]

    def _hook(self, key: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
            self.out[key] = out
        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _hidden(model: nn.Module, batch: Batch, task: Any) -> tuple[torch.Tensor, ...]:
    out = model(*task.inputs(batch), output_hidden_states=True)
    return tuple(out.hidden_states)


def encoder_loss_fn(teacher: nn.Module, student: nn.Module, task: Any, config: EncoderKD,
                    projections: nn.ModuleList, mapping: list[int],
                    emb_map: nn.Module | None = None
                    ) -> Callable[[nn.Module, Batch], torch.Tensor]:
    use_attn = config.attention_weight > 0
    similarity = config.similarity_weight if config.similarity_weight is not None else \
        (10.0 if emb_map is not None else 0.0)
    t_rel = _Relations(_layers(teacher)[-1]) if use_attn else None
    s_rel = _Relations(_layers(student)[-1]) if use_attn else None

    cache = TeacherCache() if config.cache_teacher and config.hidden_weight == 0 and \
        not use_attn else None

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        mask = task.inputs(batch)[1]
        s_hidden = _hidden(model, batch, task)
        s_emb = masked_mean_pool(s_hidden[-1], mask)
        if cache is not None:
            t_emb = cache.embeddings(teacher, batch, task)
        else:
            with torch.no_grad():
                t_hidden = _hidden(teacher, batch, task)
            t_emb = masked_mean_pool(t_hidden[-1], mask)
        mapped = s_emb if emb_map is None else emb_map(s_emb)
        if config.embedding_loss == "cosine":
            loss = config.embedding_weight * (1 - F.cosine_similarity(mapped, t_emb)).mean()
        else:
            loss = config.embedding_weight * F.mse_loss(mapped, t_emb)
        if similarity > 0:  # the student's own space: its similarities, not its vectors
            loss = loss + similarity * matryoshka_loss(s_emb, t_emb, (s_emb.shape[-1],))
        if config.matryoshka:
            loss = loss + config.matryoshka_weight * matryoshka_loss(s_emb, t_emb,
                                                                     config.matryoshka)
        if config.hidden_weight > 0:
            keep = mask.unsqueeze(-1).to(s_hidden[-1].dtype)
            for i, t in enumerate(mapping):
                diff = (projections[i](s_hidden[i + 1]) - t_hidden[t + 1]) * keep
                loss = loss + config.hidden_weight * diff.pow(2).sum() / keep.sum() / \
                    diff.shape[-1] / len(mapping)
        if t_rel is not None and s_rel is not None:
            for key in PROJECTIONS:
                loss = loss + config.attention_weight * attention_relations(
                    s_rel.out[key], t_rel.out[key].detach(), mask, config.relation_heads) / 3
        return loss

    loss_fn.cleanup = lambda: [r.remove() for r in (t_rel, s_rel) if r is not None]  # type: ignore[attr-defined]
    loss_fn.cache = cache  # type: ignore[attr-defined]
    return loss_fn


def matryoshka_loss(student: torch.Tensor, teacher: torch.Tensor,
                    widths: tuple[int, ...]) -> torch.Tensor:
    """Mean over `widths` of the MSE between the in-batch cosine-similarity matrix of the
    student's first d dimensions and the teacher's full one."""
    target = F.normalize(teacher, dim=-1)
    target = target @ target.T
    losses = []
    for d in widths:
        prefix = F.normalize(student[:, :d], dim=-1)
        losses.append(F.mse_loss(prefix @ prefix.T, target))
    return torch.stack(losses).mean()


class TeacherCache:
    """The teacher's sentence embedding of each text seen, keyed by its unpadded token ids."""

    def __init__(self) -> None:
        self.rows: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def embeddings(self, teacher: nn.Module, batch: Batch, task: Any) -> torch.Tensor:
        ids, mask = task.inputs(batch)[:2]
        keys = [row[m.bool()].numpy().tobytes() for row, m in zip(ids, mask, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if missing:
            sub = {k: v[missing] if isinstance(v, torch.Tensor) and v.dim() and
                   v.shape[0] == len(keys) else v for k, v in batch.items()}
            with torch.no_grad():
                hidden = _hidden(teacher, sub, task)[-1]
                emb = masked_mean_pool(hidden, task.inputs(sub)[1]).detach()
            for j, i in enumerate(missing):
                self.rows[keys[i]] = emb[j].clone()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.rows[k] for k in keys])


def _embedding_map(student: nn.Module, teacher: nn.Module, task: Any,
                   batches: int = 4) -> nn.Linear:
    """A linear map from the student's embedding space to the teacher's, started at the least
    squares fit on `batches` calibration batches (training-only, like the hidden projections)."""
    with torch.no_grad():
        pairs = []
        for batch in task.calibration_batches(batches, 64):
            mask = task.inputs(batch)[1]
            pairs.append((masked_mean_pool(_hidden(student, batch, task)[-1], mask),
                          masked_mean_pool(_hidden(teacher, batch, task)[-1], mask)))
        s = torch.cat([p[0] for p in pairs]).double()
        t = torch.cat([p[1] for p in pairs]).double()
        # Ridge keeps the fit defined when there are fewer texts than dimensions.
        gram = s.T @ s + 1e-3 * torch.eye(s.shape[1], dtype=s.dtype) * s.pow(2).mean()
        weight = torch.linalg.solve(gram, s.T @ t).T
    layer = nn.Linear(s.shape[1], t.shape[1], bias=False)
    layer.weight.data.copy_(weight.float())
    return layer


@register(EncoderKD)
def apply_encoder_kd(model: nn.Module, config: EncoderKD, ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    teacher = ctx.teacher
    if teacher is None:
        raise SlimkitError("distill.encoder: no teacher (Context.teacher is None)")
    teacher.eval()
    n_s, n_t = len(_layers(model)), len(_layers(teacher))
    mapping = list(config.layer_map) or layer_map(n_s, n_t)
    if len(mapping) != n_s or max(mapping) >= n_t:
        raise ConfigError("layer_map", list(config.layer_map),
                          f"{n_s} teacher layer indices in [0, {n_t})")
    with torch.no_grad():
        sample = task.calibration_batches(1, 2)[0]
        s_dim = _hidden(model, sample, task)[-1].shape[-1]
        t_dim = _hidden(teacher, sample, task)[-1].shape[-1]
    # Projections exist only while training (TinyBERT's W_h); identity where widths agree.
    projections = nn.ModuleList(nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim)
                                for _ in range(n_s))
    emb_map = None if s_dim == t_dim else _embedding_map(model, teacher, task)
    fn = encoder_loss_fn(teacher, model, task, config, projections, mapping, emb_map)
    extra = [*projections.parameters(), *(emb_map.parameters() if emb_map else ())]
    try:
        losses = fit(model, task, ctx, epochs=config.epochs, lr=config.lr,
                     batch_size=config.batch_size, loss_fn=fn, desc="distill: encoder",
                     extra_params=extra, schedule=config.schedule)
    finally:
        fn.cleanup()  # type: ignore[attr-defined]
    ctx.info.update({"layer_map": mapping, "steps": len(losses),
                     "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 6)})
    if (cache := fn.cache) is not None:  # type: ignore[attr-defined]
        ctx.info["teacher_cache"] = {"texts": len(cache.rows), "hits": cache.hits,
                                     "misses": cache.misses}
    return model
