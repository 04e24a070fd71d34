"""Distil a text encoder into static token embeddings (Model2Vec, Tulkens and van Dongen 2024,
"Model2Vec: Fast State-of-the-Art Static Embeddings"; as sentence-transformers' StaticEmbedding):

1. every vocabulary token, alone as `[CLS] token [SEP]`, goes through the teacher; its vector is
   the mean of the output over the three positions ("mean") or the token's own ("token");
   special tokens and BERT's [unusedN] placeholders get zero rows;
2. PCA (fitted on those vectors) to `dims`: Model2Vec finds the smaller width loses little
   and the leading components drop the direction all token vectors share;
3. each row is scaled by a weight that shrinks frequent tokens: SIF (Arora et al. 2017,
   "A Simple but Tough-to-Beat Baseline for Sentence Embeddings"), a / (a + p(token)) with p
   counted on the task's training text ("sif") or estimated from the vocabulary rank as Model2Vec
   does ("zipf");
4. optionally (as Tulkens and van Dongen's tokenlearn), the table alone is trained so that the
   sum of a text's rows points where the teacher's embedding of that text does, projected by the
   same PCA. The teacher embeds the training text once, before the first epoch.

The result replaces the whole model: a StaticEncoder (slimkit.nn.static_encoder).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...core import Context, MethodConfig, check_range, register
from ...core.config import DATA
from ...core.errors import ConfigError, SlimkitError
from ...models.hf import first_tensor
from ...models.pooling import masked_mean_pool
from ...nn.static_encoder import StaticEncoder
from ..row_reads import token_counts

_UNUSED = re.compile(r"\[unused\d+\]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StaticKD(MethodConfig):
    """Replace the encoder by a table of `dims`-wide token vectors distilled from the teacher
    (Context.teacher, else the model itself); `train_epochs` 0 keeps the table as computed."""

    method = "distill.static"
    dims: int = 256
    weighting: Literal["sif", "zipf", "none"] = "sif"
    sif_a: float = 1e-3
    token_pooling: Literal["mean", "token"] = "mean"
    train_epochs: int = 2
    lr: float = 1e-2
    batch_size: int = 64
    vocab_batch: int = 512

    def requires(self) -> frozenset[str]:
        return DATA  # the teacher is optional: the model being replaced teaches by default

    def validate(self) -> None:
        check_range("dims", self.dims, 0, 1 << 16)
        check_range("sif_a", self.sif_a, 0.0, 1.0, lo_open=True)
        check_range("train_epochs", self.train_epochs, 0, 1000)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("vocab_batch", self.vocab_batch, 1, 1 << 20)


def _output(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq, dim] hidden states, or [batch, dim] from a model that pools itself."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = model(ids.to(device), mask.to(device))
    hidden = getattr(out, "last_hidden_state", None)
    return (hidden if isinstance(hidden, torch.Tensor) else first_tensor(out)).float().cpu()


def dead_tokens(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """[vocab] bool: special tokens and [unusedN] placeholders, which get zero rows."""
    dead = torch.zeros(vocab_size, dtype=torch.bool)
    specials = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < vocab_size]
    dead[torch.tensor(specials, dtype=torch.long)] = True
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    for i, tok in enumerate(tokens):
        if tok is None or _UNUSED.fullmatch(tok):
            dead[i] = True
    return dead


def token_vectors(teacher: nn.Module, ids: torch.Tensor, cls_id: int, sep_id: int,
                  pooling: str, batch: int) -> torch.Tensor:
    """[len(ids), dim]: the teacher's output for each token run alone as `[CLS] token [SEP]`."""
    chunks = []
    with torch.inference_mode():
        for part in ids.split(batch):
            seqs = torch.stack([torch.full_like(part, cls_id), part,
                                torch.full_like(part, sep_id)], dim=1)
            hidden = _output(teacher, seqs, torch.ones_like(seqs))
            if hidden.dim() == 2:  # a pooled model: one vector per sequence already
                chunks.append(hidden)
            else:
                chunks.append(hidden.mean(dim=1) if pooling == "mean" else hidden[:, 1])
    return torch.cat(chunks)


def pca(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean [D], components [D, dims], share of the variance kept) of the rows of `x`,
    from the eigenvectors of the covariance (float64: D is small, so this is exact and fast)."""
    x64 = x.double()
    mean = x64.mean(dim=0)
    centred = x64 - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / max(1, len(x) - 1))
    order = values.argsort(descending=True)[:dims]
    # A fixed sign per component (largest loading positive): the same table on every run.
    comps = vectors[:, order]
    comps = comps * torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    kept = float(values[order].clamp(min=0).sum() / values.clamp(min=0).sum().clamp(min=1e-30))
    return mean.float(), comps.float(), kept


def token_weights(kind: str, a: float, live: torch.Tensor, counts: torch.Tensor | None
                  ) -> torch.Tensor:
    """[vocab] row weights a / (a + p(token)); p from `counts` ("sif") or, as Model2Vec does,
    from Zipf's law over the vocabulary order ("zipf": the i-th live token has p ~ 1/(i+2))."""
    weights = torch.ones(len(live))
    if kind == "none":
        return weights
    if kind == "sif":
        assert counts is not None
        c = counts.double() * live
        p = c / c.sum().clamp(min=1)
    else:
        rank = torch.cumsum(live.long(), 0) - 1  # rank among the live tokens, in id order
        p = (1.0 / (rank.double() + 2)) * live
        p = p / p.sum()
    return (a / (a + p)).float()


def _teacher_targets(teacher: nn.Module, task: Any, batch_size: int, seed: int
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of training batches with the teacher's L2-normalised mean-pooled embedding
    (the task's own pooling), computed once and reused by every epoch."""
    cache = []
    with torch.inference_mode():
        for batch in task.train_batches(batch_size, seed=seed):
            ids, mask = task.inputs(batch)[:2]
            hidden = _output(teacher, ids, mask)
            pooled = hidden if hidden.dim() == 2 else masked_mean_pool(hidden, mask)
            cache.append((ids, mask, F.normalize(pooled, dim=-1)))
    return cache


def _mean_loss(model: StaticEncoder,
               cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        total = sum(float((1 - F.cosine_similarity(model(ids, mask), t)).sum())
                    for ids, mask, t in cache)
    return total / max(1, sum(len(t) for _, _, t in cache))


def train_table(model: StaticEncoder, cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                live: torch.Tensor, epochs: int, lr: float, seed: int) -> list[float]:
    """Adam on the table alone, loss 1 - cos(sum of rows, projected teacher embedding); dead rows
    get no gradient, so they stay zero. Returns each epoch's mean training loss."""
    table = model.table
    handle = table.register_hook(lambda g: g * live.unsqueeze(1).to(g.dtype))
    opt = torch.optim.Adam([table], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    try:
        for _ in range(epochs):
            total, seen = 0.0, 0
            for i in torch.randperm(len(cache), generator=gen).tolist():
                ids, mask, target = cache[i]
                loss = (1 - F.cosine_similarity(model(ids, mask), target)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, seen = total + float(loss.detach()) * len(ids), seen + len(ids)
            losses.append(total / max(1, seen))
    finally:
        handle.remove()
        model.eval()
    return losses


def distill_static(teacher: nn.Module, task: Any, config: StaticKD, *, seed: int = 0,
                   info: dict[str, Any] | None = None) -> StaticEncoder:
    """A new StaticEncoder distilled from `teacher` (left unchanged) on `task`'s tokenizer and
    training text; numbers go into `info`."""
    info = {} if info is None else info
    tokenizer = getattr(task, "tokenizer", None)
    cls_id, sep_id = (getattr(tokenizer, name, None) for name in ("cls_token_id", "sep_token_id"))
    if tokenizer is None or cls_id is None or sep_id is None:
        raise SlimkitError("distill.static: the task needs a tokenizer with [CLS] and [SEP] "
                           "tokens (a BERT-like text encoder task)")
    vocab = len(tokenizer)
    pad_id = int(getattr(task, "pad_id", None) or tokenizer.pad_token_id or 0)
    dead = dead_tokens(tokenizer, vocab)
    dead[pad_id] = True
    live = ~dead
    was_training = teacher.training
    teacher.eval()
    try:
        vectors = token_vectors(teacher, live.nonzero().flatten(), int(cls_id), int(sep_id),
                                config.token_pooling, config.vocab_batch)
        width = vectors.shape[1]
        if config.dims > width:
            raise ConfigError("dims", config.dims, f"at most the teacher's width {width} "
                              "(0 keeps it)")
        dims = config.dims or width
        mean, comps, kept = pca(vectors, dims)
        table = torch.zeros(vocab, dims)
        table[live] = (vectors - mean) @ comps
        counts = token_counts(task, vocab, 1.0, config.batch_size, seed) \
            if config.weighting == "sif" else None
        table *= token_weights(config.weighting, config.sif_a, live, counts).unsqueeze(1)
        model = StaticEncoder.from_table(table, pad_id)
        info.update({"vocab_size": vocab, "vocab_kept": int(live.sum()), "teacher_dim": width,
                     "dims": dims, "pca_variance_kept": round(kept, 4),
                     "token_pooling": config.token_pooling, "weighting": config.weighting})
        if config.train_epochs > 0:
            cache = _teacher_targets(teacher, task, config.batch_size, seed)
            # The target is the teacher's embedding projected by the token PCA, so the table
            # keeps its width and nothing but the table is trained. A learned dims x dims map
            # would add nothing: a linear map commutes with the sum and folds into the rows,
            # which the table can learn itself; a map to the teacher's width would widen the
            # output. Uncentred: sentence embeddings are not token vectors, and the shared
            # direction PCA removed is what a mean-pooled teacher adds to every text alike.
            cache = [(ids, mask, F.normalize(t @ comps, dim=-1)) for ids, mask, t in cache]
            before = _mean_loss(model, cache)
            losses = train_table(model, cache, live, config.train_epochs, config.lr, seed)
            info.update({"teacher_texts": sum(len(t) for _, _, t in cache),
                         "loss_before": round(before, 6),
                         "epoch_losses": [round(x, 6) for x in losses],
                         "loss_after": round(_mean_loss(model, cache), 6)})
    finally:
        teacher.train(was_training)
    return model.eval()


def _become(model: nn.Module, new: nn.Module) -> None:
    """Turn `model` into `new` in place: compress_ and the run pipeline hold the model object
    and require each step to return it (the same precedent as prune.structured's __dict__
    restore). The old state, its logged edits included, is dropped with its __dict__."""
    model.__dict__.clear()
    model.__dict__.update(new.__dict__)
    model.__class__ = new.__class__


@register(StaticKD)
def apply_static(model: nn.Module, config: StaticKD, ctx: Context) -> nn.Module:
    task = ctx.require_task(config.method)
    teacher = ctx.teacher if ctx.teacher is not None else model
    new = distill_static(teacher, task, config, seed=ctx.seed, info=ctx.info)
    if bool(torch.isnan(new.table.detach()).any()):
        raise SlimkitError("distill.static: the table holds NaN (lower lr)")
    _become(model, new)
    return model
