"""The fine-tune loop shared by every method that trains.

Masks (`weight_mask` bool buffers) are re-applied after every optimizer step, so zeros stay zeros
through any later training in the plan: a pruning step holds its own while it trains, and layers
flagged as pruned get one derived from their zeros for the length of each `fit` call only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch
from torch import nn

from ..core.context import Context
from ..core.errors import SlimkitError
from ..core.task import Batch, Task
from ..graph import MASK, training_masks

LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class StepHook(Protocol):
    def __call__(self, step: int, total: int) -> None: ...


def fit(model: nn.Module, task: Task, ctx: Context, *, epochs: float, lr: float,
        batch_size: int = 512, weight_decay: float = 0.0, loss_fn: LossFn | None = None,
        on_step: StepHook | None = None, desc: str = "train",
        extra_params: Sequence[nn.Parameter] = (),
        schedule: Literal["constant", "linear"] = "constant") -> list[float]:
    """Train `model` in place with Adam for `epochs` (fractions allowed); returns the
    per-step losses. `extra_params` (e.g. distillation projections) train alongside and are
    not part of the model; `linear` decays the learning rate to zero over the run."""
    blocked = [n for n, m in model.named_modules()
               if getattr(m, "supports_autograd", True) is False]
    if blocked:
        raise SlimkitError(f"{desc}: cannot train through {blocked[0]!r} (an int8 kernel without "
                           "gradients); put training steps before quantize steps")
    loss_fn = loss_fn or (lambda m, b: task.loss(m(*task.inputs(b)), b))
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    optimizer = torch.optim.Adam([*params, *extra_params], lr=lr, weight_decay=weight_decay)
    per_epoch = task.num_train_batches(batch_size)
    total = max(1, int(round(epochs * per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 1.0 - s / total) if schedule == "linear" else (lambda s: 1.0))
    gen = torch.Generator().manual_seed(ctx.seed)
    losses: list[float] = []
    with training_masks(model):
        model.train()
        step = 0
        bar = ctx.progress(range(total), total=total, desc=desc)
        it = iter(bar)
        while step < total:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            for batch in task.train_batches(batch_size, seed=seed):
                if step >= total:
                    break
                loss = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                apply_masks(model)
                losses.append(loss.item())
                step += 1
                next(it, None)
                if on_step is not None:
                    on_step(step, total)
        for _ in it:  # drain so a progress bar closes at 100%
            pass
    model.eval()
    return losses


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    for module in model.modules():
        mask = module._buffers.get(MASK)
        if isinstance(mask, torch.Tensor):
            module.weight.mul_(mask)
