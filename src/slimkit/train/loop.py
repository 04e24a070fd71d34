"""The fine-tune loop shared by every method that trains.

Masks (`weight_mask` bool buffers) are re-applied after every optimizer step, so zeros stay zeros
through any later training in the plan: a pruning step holds its own while it trains, and layers
flagged as pruned get one derived from their zeros for the length of each `fit` call only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol

import torch
from torch import nn

from ..core.context import Context
from ..core.errors import SlimkitError
from ..core.task import Batch, Task
from ..graph import MASK, training_masks
from ..graph.edits import is_masked

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
    tables = large_tables(model, params)
    lazy = {id(t.weight) for t in tables}
    dense = [*(p for p in params if id(p) not in lazy), *extra_params]
    optimizers: list[torch.optim.Optimizer] = []
    if dense or not tables:  # (no parameter at all: Adam's own error names the problem)
        optimizers.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay))
    if tables:
        optimizers.append(torch.optim.SparseAdam([t.weight for t in tables], lr=lr))
    per_epoch = task.num_train_batches(batch_size)
    total = max(1, int(round(epochs * per_epoch)))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 1.0 - s / total) if schedule == "linear" else (lambda s: 1.0))
        for optimizer in optimizers]
    gen = torch.Generator().manual_seed(ctx.seed)
    losses: list[float] = []
    with training_masks(model), sparse_gradients(tables):
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
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                decay_touched_rows(tables, weight_decay)
                for optimizer, scheduler in zip(optimizers, schedulers, strict=True):
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


# Tables from this many rows up train with sparse gradients and lazy Adam (moments of the rows a
# batch touched): a dense gradient and Adam step over a 10M x 16 table move 3 GB per step, so a
# synthetic CTR epoch at that scale ran for hours. Smaller tables keep dense Adam, as before.
# SparseAdam has no weight decay: the L2 term is added to the rows a batch touched (lazily, as
# the moments are), which is Adam's weight_decay restricted to those rows.
SPARSE_TABLE_ROWS = 1 << 18


def large_tables(model: nn.Module, params: Sequence[nn.Parameter],
                 rows: int | None = None) -> list[nn.Embedding | nn.EmbeddingBag]:
    """The plain embedding tables of at least `rows` rows among the trained `params` (without
    a pruning mask: lazy Adam would leave masked rows' moments stale)."""
    rows = SPARSE_TABLE_ROWS if rows is None else rows
    trained = {id(p) for p in params}
    # A weight another module also holds (a head tied to the table) gets a dense gradient too.
    holders: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1
    return [m for m in model.modules()
            if type(m) in (nn.Embedding, nn.EmbeddingBag) and m.num_embeddings >= rows
            and id(m.weight) in trained and holders[id(m.weight)] == 1
            and MASK not in m._buffers and not is_masked(m)
            and (not isinstance(m, nn.EmbeddingBag) or m.mode in ("sum", "mean"))]


def decay_touched_rows(tables: Sequence[nn.Embedding | nn.EmbeddingBag], decay: float) -> None:
    """L2 weight decay on the rows each sparse gradient touched. A gradient that came out
    dense (the weight was also read outside the table's own forward) cannot go to SparseAdam:
    refused with the table's size."""
    for table in tables:
        grad = table.weight.grad
        if grad is None:
            continue
        if not grad.is_sparse:
            raise SlimkitError(f"train: the {table.num_embeddings}-row table's weight got a dense "
                               "gradient (it is read outside its own lookup); large tables train "
                               "with sparse gradients only")
        if decay:
            grad = grad.coalesce()
            rows = grad.indices()[0]
            values = grad.values() + decay * table.weight.detach()[rows]
            table.weight.grad = torch.sparse_coo_tensor(grad.indices(), values, grad.shape)


@contextlib.contextmanager
def sparse_gradients(tables: Sequence[nn.Embedding | nn.EmbeddingBag]) -> Iterator[None]:
    saved = [t.sparse for t in tables]
    for t in tables:
        t.sparse = True
    try:
        yield
    finally:
        for t, flag in zip(tables, saved, strict=True):
            t.sparse = flag


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    for module in model.modules():
        mask = module._buffers.get(MASK)
        if isinstance(mask, torch.Tensor):
            module.weight.mul_(mask)
