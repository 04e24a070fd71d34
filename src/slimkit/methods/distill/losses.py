"""Pure knowledge-distillation losses (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over rows.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    t = temperature
    log_p_s = F.log_softmax(student / t, dim=-1)
    log_p_t = F.log_softmax(teacher / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return kl.mean() * t * t


def binary_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same KL for single-logit (CTR) models: Bernoulli(sigmoid(z/T)) distributions."""
    t = temperature
    s, q = student / t, teacher / t
    p_t = torch.sigmoid(q)
    # KL(p_t || p_s) = p_t (log p_t - log p_s) + (1 - p_t)(log(1 - p_t) - log(1 - p_s))
    kl = p_t * (F.logsigmoid(q) - F.logsigmoid(s)) \
        + (1 - p_t) * (F.logsigmoid(-q) - F.logsigmoid(-s))
    return kl.mean() * t * t


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            binary: bool) -> torch.Tensor:
    return (binary_kd if binary else softmax_kd)(student, teacher, temperature)


def is_binary(logits: torch.Tensor) -> bool:
    """A single logit per row: shape [B] or [B, 1]."""
    return logits.dim() == 1 or logits.shape[-1] == 1


def attention_relations(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                        heads: int) -> torch.Tensor:
    """MiniLMv2 self-attention relation loss for one projection (queries, keys or values):
    KL(teacher || student) of softmax(X X^T / sqrt(d)) per relation head, over unmasked keys,
    averaged over unmasked queries. Widths may differ; both must divide by `heads`."""
    def log_relations(x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if d % heads:
            raise ValueError(f"relation heads {heads} do not divide width {d}")
        x = x.view(b, t, heads, d // heads).transpose(1, 2)
        scores = x @ x.transpose(-1, -2) / (d // heads) ** 0.5
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        return torch.log_softmax(scores.float(), dim=-1)

    log_s, log_t = log_relations(student), log_relations(teacher)
    p_t = log_t.exp()
    # Masked keys have p_t = 0 and -inf logs: count them as 0, not nan.
    kl = (p_t * (log_t - log_s)).nan_to_num(0.0).sum(-1)
    valid = mask.bool()[:, None, :].expand_as(kl)
    return kl[valid].mean()
