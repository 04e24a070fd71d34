"""Block importance for depth truncation: how much a block changes its input.

Block Influence (Men et al. 2024, ShortGPT): BI = 1 - mean cosine(x_in, x_out) over rows; a block
whose output is nearly its input contributes little and is the first to drop.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def block_influence(model: nn.Module, blocks: nn.Module,
                    batches: Iterable[tuple[torch.Tensor, ...]]) -> tuple[list[float], list[bool]]:
    """Per block: (BI score, removable). Removable means input and output shapes match."""
    children = list(blocks.children())
    sums = [0.0] * len(children)
    counts = [0] * len(children)
    removable = [True] * len(children)

    last_out: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def fn(_module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            # A block's input is what the previous block produced in this forward pass; args[0]
            # would be wrong for blocks called with several tensors (DCN's cross(x0, x_l)).
            x = last_out.pop(i - 1, None) if i > 0 else None
            if x is None:
                x = args[0] if args else None
            if isinstance(out, torch.Tensor):
                last_out[i] = out
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) \
                    or x.shape != out.shape:
                removable[i] = False
                return
            cos = F.cosine_similarity(x.flatten(1).float(), out.flatten(1).float(), dim=1)
            sums[i] += float((1 - cos).sum())
            counts[i] += cos.numel()
        return fn

    handles = [c.register_forward_hook(hook(i)) for i, c in enumerate(children)]
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = [s / c if c else float("inf") for s, c in zip(sums, counts, strict=True)]
    return scores, removable
