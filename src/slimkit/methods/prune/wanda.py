"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
prune by |W_ij| * ||X_j||_2, the weight's magnitude times the norm of its input feature over the
calibration inputs, compared within each output row (the paper's comparison group), or in N:M
groups along the inputs. No weight update: the score alone keeps the weights on the few
large-norm input channels of an LLM that magnitude pruning removes."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, register
from ...core.config import DATA
from .calibrated import check_options, keep_mask, prune_calibrated


class InputNorms:
    """Sum over every input row seen of x_j^2 per input feature j (||X_j||_2 squared), in
    float64: a vector, not a Hessian, so Wanda's calibration costs one pass of squares."""

    def __init__(self, features: int) -> None:
        self.features = features
        self.squares = torch.zeros(features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.features).float()
        self.squares += x.pow(2).sum(0).double()
        self.rows += x.shape[0]

    def norms(self) -> torch.Tensor:
        return self.squares.sqrt().float()


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs() * norms[None, :]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wanda(MethodConfig):
    """Zero the weights of lowest |W_ij| * ||X_j||_2 (Sun et al. 2023), exactly `sparsity` of
    every output row, or with `n` and `m` set (2 and 4) the n highest of every m consecutive
    inputs kept (then the pattern fixes the sparsity and `sparsity` is not used). Calibration on
    `calibration_batches` of the task; `sequential` takes each layer's input norms with the
    layers upstream already pruned (as the paper's code does), False from the dense model."""

    method = "prune.wanda"
    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    calibration_batches: int = 8
    sequential: bool = True
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA

    def validate(self) -> None:
        check_options(self)


@register(Wanda)
def apply_wanda(model: nn.Module, config: Wanda, ctx: Context) -> nn.Module:
    def prune(weight: torch.Tensor, stats: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return weight * keep_mask(wanda_scores(weight, stats.norms()), config), {}

    return prune_calibrated(model, config, ctx, make=InputNorms, prune=prune)
