"""Language-model quality on fixed token chunks: perplexity, and agreement of the next-token
distribution with a reference model (mean KL divergence and top-1 agreement), as llama.cpp's
perplexity tool reports them.

The reference distribution is kept as fp16 log-probabilities (half the memory of fp32),
renormalised when read, so the KL is computed exactly between that stored distribution and the
model's. Rounding a log-probability l to fp16 changes the probability by a factor of about
1 + |l| 2^-11, which moves the KL by about sum p (l 2^-11)^2 / 2: below 1e-5 nats for
next-token distributions, against ~1e-2 nats between quantized models. (fp16 probabilities were
tried first: the many tiny probabilities fall into fp16's subnormal range, and the KL of the
model against itself read 1.5e-4.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ...models.hf import first_tensor


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return first_tensor(model(ids)).float()


def next_token_logits(model: nn.Module, chunks: torch.Tensor,
                      batch: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, logits [rows, seq - 1, vocab]) for batches of `chunks` [n, seq], in eval mode
    under inference_mode (the mode is restored): the prediction of every token but the first."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(chunks), batch):
                yield start, _logits(model, chunks[start:start + batch])[:, :-1]
    finally:
        model.train(was_training)


def reference_logprobs(model: nn.Module, chunks: torch.Tensor, batch: int) -> torch.Tensor:
    """fp16 next-token log-probabilities [n, seq - 1, vocab] of `model` on `chunks`."""
    parts = [F.log_softmax(logits, dim=-1).half() for _, logits in
             next_token_logits(model, chunks, batch)]
    return torch.cat(parts)


def score(model: nn.Module, chunks: torch.Tensor, batch: int,
          reference: Callable[[int, int], torch.Tensor] | None) -> dict[str, float]:
    """Perplexity and mean negative log-likelihood over every predicted token of `chunks`;
    with `reference(start, stop)` (fp16 log-probabilities of those chunks), mean KL(reference ||
    model) per token in nats and the share of tokens whose top-1 prediction agrees."""
    nll = kl = agree = 0.0
    tokens = 0
    for start, logits in next_token_logits(model, chunks, batch):
        logq = F.log_softmax(logits, dim=-1)
        targets = chunks[start:start + len(logits), 1:]
        nll += -float(logq.gather(-1, targets.unsqueeze(-1)).sum())
        tokens += targets.numel()
        if reference is not None:
            logp = F.log_softmax(reference(start, start + len(logits)).float(), dim=-1)
            kl += float((logp.exp() * (logp - logq)).sum())
            agree += float((logp.argmax(-1) == logits.argmax(-1)).sum())
            del logp
        del logq, logits
    out = {"perplexity": math.exp(nll / tokens), "nll": nll / tokens}
    if reference is not None:
        out.update(kl=kl / tokens, top1=agree / tokens)
    return out
