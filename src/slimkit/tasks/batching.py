"""Index plumbing shared by the task adapters: epoch shuffles, fixed calibration rows, and
running a model over a split in eval mode with its own mode restored."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..core.errors import SlimkitError


def epoch_order(rows: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices of one shuffled epoch, batch by batch; the last batch may be short."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    yield from order.split(batch_size)


def calibration_order(rows: int, n: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """`n` fixed batches of row indices from a fixed shuffle (so they span the whole split),
    wrapping round when more rows are asked for than exist."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    return order[torch.arange(n * batch_size) % rows].split(batch_size)


def run_eval(model: nn.Module, chunks: Iterable[tuple[torch.Tensor, ...]],
             post: Callable[[torch.Tensor], torch.Tensor],
             call: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Concatenated `post(call(*chunk))` (`call` defaults to the model itself; a bound method
    such as a tower's encoder otherwise) in eval mode on the model's device, under
    inference_mode; the model's train/eval mode is restored afterwards."""
    call = model if call is None else call
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = [post(call(*(t.to(device) for t in chunk))).float().cpu()
                    for chunk in chunks]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """Train, valid and test fractions, each > 0 and summing to 1; SlimkitError otherwise."""
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise SlimkitError("split: expected three fractions > 0 summing to 1 (train, valid, "
                           f"test), got {split!r}")
    return fractions[0], fractions[1], fractions[2]
