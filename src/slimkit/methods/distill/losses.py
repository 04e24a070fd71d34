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
