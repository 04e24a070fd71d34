"""Columns of the contract matrix (tests/test_contract.py) beyond slimkit's CTR models: a small
CNN on Fashion-MNIST, a tiny Llama-style causal transformer on a synthetic sequence task, and a
"user model": a model class and a task written here, outside slimkit, the way a user brings their
own (two input tensors, a regression loss and a lower-is-better metric).

Every task has a real signal a small model learns in a few seconds, so each column's trained
baseline sits far above what a model that ignores its inputs scores (`Column.chance`)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


# --- the user's own model and task (nothing here is known to slimkit) -----------------------

class ResidualMLP(nn.Module):
    """h + W2 relu(W1 h): a shape-preserving block, so truncate.layers may drop it."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.relu(self.fc1(h)))


class UserRegressor(nn.Module):
    """forward(features [B, F] float, group [B] int64) -> prediction [B]. Constructor arguments
    are required (no defaults), so slimkit cannot rebuild it alone: artifacts are loaded with
    `slimkit.load(path, model=UserRegressor(...))`."""

    def __init__(self, n_features: int, n_groups: int, group_dim: int, width: int,
                 depth: int) -> None:
        super().__init__()
        self.group_emb = nn.Embedding(n_groups, group_dim)
        self.inp = nn.Linear(n_features + group_dim, width)
        self.blocks = nn.ModuleList(ResidualMLP(width, 2 * width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, features: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(torch.cat([features, self.group_emb(group)], dim=1)))
        for block in self.blocks:
            h = block(h)
        return self.out(h).squeeze(-1)


class UserRegressionTask:
    """y = sin(2 x0) + x1 x2 + <w_g, x3..x5> + b_g + noise, for a group g per row: a nonlinear
    signal plus a per-group linear one that only the group embedding can carry. The metric is
    RMSE on the test split (lower is better); the loss a Huber loss, not the metric's MSE."""

    name = "user-regression"
    primary_metric = "rmse"
    higher_is_better = False
    n_features, n_groups = 6, 40

    def __init__(self, rows: int = 10000, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, self.n_features, generator=gen)
        g = torch.randint(0, self.n_groups, (rows,), generator=gen)
        w = 0.5 * torch.randn(self.n_groups, 3, generator=gen)
        b = 0.5 * torch.randn(self.n_groups, generator=gen)
        y = (torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + (w[g] * x[:, 3:6]).sum(1) + b[g]
             + 0.1 * torch.randn(rows, generator=gen))
        cut = [int(rows * 0.7), int(rows * 0.85)]
        parts = {"train": slice(0, cut[0]), "valid": slice(cut[0], cut[1]),
                 "test": slice(cut[1], rows)}
        self.splits = {k: {"features": x[s], "group": g[s], "target": y[s]}
                       for k, s in parts.items()}

    def build(self) -> UserRegressor:
        return UserRegressor(self.n_features, self.n_groups, group_dim=16, width=64, depth=2)

    def _rows(self, split: str, idx: torch.Tensor) -> Batch:
        return {k: v[idx] for k, v in self.splits[split].items()}

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        rows = len(self.splits["train"]["target"])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
        for idx in order.split(batch_size):
            yield self._rows("train", idx)

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.splits["train"]["target"]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        rows = len(self.splits["train"]["target"])
        return [self._rows("train", torch.arange(i * batch_size, (i + 1) * batch_size) % rows)
                for i in range(n)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return batch["features"], batch["group"]

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.huber_loss(outputs, batch["target"])

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        data = self.splits[split]
        with torch.no_grad():
            pred = model(data["features"], data["group"]).double()
        err = pred - data["target"].double()
        return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        rows = len(self.splits["test"]["target"])
        return self.inputs(self._rows("test", torch.arange(batch_size) % rows))

    def chance(self) -> float:
        """RMSE of the best constant (the train mean): what ignoring the inputs scores."""
        mean = self.splits["train"]["target"].mean()
        return float((self.splits["test"]["target"] - mean).pow(2).mean().sqrt())


# --- a tiny causal transformer's task ------------------------------------------------------

def main_output(out: Any) -> torch.Tensor:
    """The logits of a transformers output object; a plain tensor as it is."""
    if isinstance(out, torch.Tensor):
        return out
    return out["logits"]


class SequenceTask:
    """Next-token prediction on sequences [mode, x1, ..., x15]: the mode token (3 or 4) picks one
    of two fixed permutations, and x_{t+1} = perm_mode[x_t] with probability 0.9 (else a random
    token). Predicting the next token needs the current token and the mode at position 0, so
    attention must carry information across positions. Metric: accuracy (%) of the predictions
    of x2..x15 (x1 is random)."""

    name = "mode-sequences"
    primary_metric = "token_accuracy"
    higher_is_better = True
    vocab, first, length = 40, 8, 16  # content tokens first..vocab-1; 0-2 special, 3-4 modes

    def __init__(self, rows: int = 3000, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        n = self.vocab - self.first
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(2)])
        mode = torch.randint(0, 2, (rows,), generator=gen)
        seq = torch.empty(rows, self.length, dtype=torch.long)
        seq[:, 0] = 3 + mode
        cur = torch.randint(0, n, (rows,), generator=gen)
        seq[:, 1] = cur + self.first
        for t in range(2, self.length):
            follow = torch.rand(rows, generator=gen) < 0.9
            cur = torch.where(follow, perms[mode, cur], torch.randint(0, n, (rows,),
                                                                      generator=gen))
            seq[:, t] = cur + self.first
        cut = [int(rows * 0.7), int(rows * 0.85)]
        self.splits = {"train": seq[:cut[0]], "valid": seq[cut[0]:cut[1]], "test": seq[cut[1]:]}

    def build(self, seed: int = 0) -> nn.Module:
        from slimkit.models import tiny_model

        return tiny_model("llama", seed, vocab_size=self.vocab, hidden_size=64,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=self.length)

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        train = self.splits["train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        for idx in order.split(batch_size):
            yield {"ids": train[idx]}

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.splits["train"]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        train = self.splits["train"]
        return [{"ids": train[torch.arange(i * batch_size, (i + 1) * batch_size) % len(train)]}
                for i in range(n)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return (batch["ids"],)

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        logits = main_output(outputs)[:, 1:-1]  # predictions of x2..x15
        return F.cross_entropy(logits.flatten(0, 1), batch["ids"][:, 2:].flatten())

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        ids = self.splits[split]
        with torch.no_grad():
            logits = main_output(model(ids))[:, 1:-1].double()
        target = ids[:, 2:]
        return {"token_accuracy": 100.0 * float((logits.argmax(-1) == target).double().mean()),
                "loss": float(F.cross_entropy(logits.flatten(0, 1), target.flatten()))}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        test = self.splits["test"]
        return (test[torch.arange(batch_size) % len(test)],)

    def chance(self) -> float:
        """Accuracy (%) of the best constant guess: the most frequent target token of the test
        split (about 1 / 32: content tokens are equally likely)."""
        target = self.splits["test"][:, 2:].flatten()
        return 100.0 * float(torch.bincount(target).max()) / len(target)


# --- columns --------------------------------------------------------------------------------

def train_baseline(model: nn.Module, task: Any, *, epochs: int, lr: float, batch_size: int,
                   seed: int = 0) -> nn.Module:
    """Plain Adam on the task's loss, independent of slimkit's own training loop (the baseline
    must not depend on the code under test); returns the model in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for epoch in range(epochs):
            for batch in task.train_batches(batch_size, seed=seed + epoch):
                loss = task.loss(model(*task.inputs(batch)), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@dataclasses.dataclass
class Column:
    """One column: a task, its trained baseline, and how to build a fresh instance (for loading
    artifacts of classes slimkit cannot build alone)."""

    name: str
    task: Any
    baseline: nn.Module
    fresh: Callable[[], nn.Module]
    chance: float  # the primary metric of a model that ignores its inputs
    out_shape: Callable[[int], tuple[int, ...]]  # of the main output for a batch of n
    needs_instance: bool = False  # load with slimkit.load(path, model=fresh())
    base_bytes: int = 0  # the baseline's artifact size, filled in by the test's fixture

    def __post_init__(self) -> None:
        self.base_metric = self.task.evaluate(self.baseline)[self.task.primary_metric]

    def model(self) -> nn.Module:
        """A copy of the trained baseline, to compress."""
        return copy.deepcopy(self.baseline)

    def retained(self, metric: float) -> float:
        """The share of the baseline's margin over chance that `metric` keeps: 1 = as good as the
        baseline, 0 = no better than ignoring the inputs (works for either metric direction)."""
        return (metric - self.chance) / (self.base_metric - self.chance)


def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """`build` run with seed 0 on a forked RNG: the same initial weights on every call, and
    the caller's random state left alone."""
    def fresh() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build().eval()

    return fresh


def ctr_column(task: Any, kind: str) -> Column:
    # The recipe of conftest.small_model.
    fresh = seeded(lambda: task.build_model(kind, embed_dim=8, hidden=[32, 32, 32]))
    baseline = train_baseline(fresh(), task, epochs=3, lr=3e-3, batch_size=128)
    return Column(kind, task, baseline, fresh, chance=0.5, out_shape=lambda n: (n,))


def cnn_column() -> Column:
    from slimkit.tasks.vision import SmallCNN, VisionTask

    task = VisionTask.fashion_mnist(limit=2000)  # the first 2,000 images of every split
    fresh = seeded(lambda: SmallCNN(channels=(8, 16), hidden=64))
    baseline = train_baseline(fresh(), task, epochs=2, lr=3e-3, batch_size=64)
    # The best constant guess: the most frequent test class (about 10% of ten classes).
    labels = task.data.labels["test"]
    chance = 100.0 * float(torch.bincount(labels).max()) / len(labels)
    return Column("cnn", task, baseline, fresh, chance=chance, out_shape=lambda n: (n, 10))


def transformer_column() -> Column:
    task = SequenceTask()
    baseline = train_baseline(task.build(), task, epochs=3, lr=1e-2, batch_size=128)
    return Column("transformer", task, baseline, task.build, chance=task.chance(),
                  out_shape=lambda n: (n, task.length, task.vocab))


def user_column() -> Column:
    task = UserRegressionTask()
    fresh = seeded(task.build)
    baseline = train_baseline(fresh(), task, epochs=6, lr=1e-2, batch_size=128)
    return Column("user", task, baseline, fresh, chance=task.chance(),
                  out_shape=lambda n: (n,), needs_instance=True)
