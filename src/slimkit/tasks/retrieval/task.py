"""The two-tower retrieval task: batches of (user, item) interactions trained with in-batch
negatives, evaluated by ranking the FULL item catalogue for every user of a split, items the
user saw before excluded."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.errors import SlimkitError
from ...core.task import Batch
from ...train.teacher import TeacherRecipe
from ..batching import calibration_order, epoch_order, run_eval
from .data import SPLITS, RetrievalData, load_movielens, synthetic
from .metrics import KS, ranking_metrics, top_k
from .model import TwoTower

EVAL_BATCH = 4096

# Half of each tower's hidden neurons (Taylor importance, distilled on the in-batch logits), INT8
# Linear layers, then 4-bit tables: the id tables hold most of the bytes.
DEFAULT_PLAN = """\
version: 1
steps:
- method: prune.structured
  ratio: 0.5
  criterion: taylor
  recover: distill
  epochs: 1.0
  round_to: 8
  targets: {names: [user_tower.*, item_tower.*]}
- method: quantize.dynamic_int8
- method: quantize.embedding
  bits: 4
"""


class TwoTowerTask:
    """Batches are {"user" [B, F], "history" [B, H], "item" [B], "genres" [B, G], "logq" [B]};
    the model maps the first four to in-batch logits [B, B]; the metric is recall@10."""

    primary_metric = "recall@10"
    higher_is_better = True
    model_kinds = ("two-tower",)
    latency_batches = (1, 256)

    def __init__(self, data: RetrievalData, *, name: str, logq: bool = True,
                 temperature: float = 0.05, dim: int = 64) -> None:
        self.name, self.data = name, data
        self.logq, self.temperature, self.dim = bool(logq), float(temperature), int(dim)
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        counts = data.item_counts.to(torch.float64) + 1.0  # +1: items unseen in training
        self.log_freq = (counts / counts.sum()).log().float()

    @classmethod
    def movielens(cls, *, min_rating: int = 0, history: int = 20, logq: bool = True,
                  temperature: float = 0.05, dim: int = 64) -> TwoTowerTask:
        """MovieLens-100k, each user's ratings >= `min_rating` split 80/10/10 by time."""
        data = load_movielens(min_rating=min_rating, history=history)
        return cls(data, name="movielens-100k-two-tower", logq=logq, temperature=temperature,
                   dim=dim)

    @classmethod
    def synthetic(cls, *, seed: int = 0, logq: bool = True, temperature: float = 0.1,
                  dim: int = 16, **sizes: int) -> TwoTowerTask:
        """A tiny clustered world (`data.synthetic`), for tests."""
        return cls(synthetic(seed=seed, **sizes), name=f"synthetic-two-tower-seed{seed}",
                   logq=logq, temperature=temperature, dim=dim)

    def split(self, name: str) -> dict[str, torch.Tensor]:
        if name not in SPLITS:
            raise SlimkitError(f"split: expected one of {list(SPLITS)}, got {name!r}")
        return self.data.interactions[name]

    def _batch(self, rows: dict[str, torch.Tensor], idx: torch.Tensor) -> Batch:
        item = rows["item"][idx]
        return {"user": self.data.user_features[rows["user"][idx]],
                "history": rows["history"][idx], "item": item,
                "genres": self.data.item_genres[item], "logq": self.log_freq[item]}

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        train = self.split("train")
        for idx in epoch_order(len(train["item"]), batch_size, seed):
            yield self._batch(train, idx)

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.split("train")["item"]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        train = self.split("train")
        return [self._batch(train, idx)
                for idx in calibration_order(len(train["item"]), n, batch_size)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return batch["user"], batch["history"], batch["item"], batch["genres"]

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Sampled softmax over the batch's items. With `logq`, each column's logit is lowered
        by log(item frequency) (Yi et al. 2019): popular items appear as negatives more often
        than uniform sampling would, and uncorrected they are pushed down too far. Copies of
        the positive item elsewhere in the batch are masked: they are not negatives."""
        logits = outputs
        if self.logq:
            logits = logits - batch["logq"][None, :]
        item = batch["item"]
        dup = (item[:, None] == item[None, :]) & ~torch.eye(len(item), dtype=torch.bool,
                                                           device=item.device)
        logits = logits.masked_fill(dup, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(item), device=logits.device))

    def item_embeddings(self, model: nn.Module) -> torch.Tensor:
        """[n_items + 1, dim] for the whole catalogue (row 0, padding, included)."""
        ids = torch.arange(self.data.n_items + 1)
        chunks = ((i, self.data.item_genres[i]) for i in ids.split(EVAL_BATCH))
        return _encode(model, "encode_items", chunks)

    def user_embeddings(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """[queries, dim]: each query user of `split` with its history at the split's start."""
        q = self.queries(split)
        feats = self.data.user_features[q["user"]]
        chunks = zip(feats.split(EVAL_BATCH), q["history"].split(EVAL_BATCH), strict=True)
        return _encode(model, "encode_users", chunks)

    def queries(self, split: str) -> dict[str, torch.Tensor]:
        if split not in self.data.queries:
            raise SlimkitError(f"split: expected one of {sorted(self.data.queries)}, "
                               f"got {split!r}")
        return self.data.queries[split]

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """recall@10, recall@50, nDCG@10 by exact inner product over every catalogue item."""
        q = self.queries(split)
        scores = self.user_embeddings(model, split) @ self.item_embeddings(model).T
        return ranking_metrics(top_k(scores, max(KS), q["exclude"]), q["relevant"])

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first `batch_size` test interactions, tiled when the split is smaller."""
        test = self.split("test")
        return self.inputs(self._batch(test, torch.arange(batch_size) % len(test["item"])))

    def build_model(self, kind: str = "two-tower", **kwargs: Any) -> nn.Module:
        if kind not in self.model_kinds:
            raise SlimkitError(f"kind: expected one of {list(self.model_kinds)}, got {kind!r}")
        kwargs.setdefault("dim", self.dim)
        kwargs.setdefault("temperature", self.temperature)
        kwargs.setdefault("history", self.data.interactions["train"]["history"].shape[1] > 0)
        return TwoTower(self.data.user_field_dims, self.data.n_items, self.data.n_genres,
                        **kwargs)

    def teacher_recipe(self, kind: str | None) -> TeacherRecipe:
        return RECIPE

    def default_plan(self) -> str:
        return DEFAULT_PLAN

    def describe(self) -> dict[str, Any]:
        return {"name": self.name,
                "interactions": {k: len(v["item"]) for k, v in self.data.interactions.items()},
                "queries": {k: len(v["user"]) for k, v in self.data.queries.items()},
                "users": len(self.data.user_features) - 1, "items": self.data.n_items,
                "user_fields": self.data.user_field_dims, "genres": self.data.n_genres,
                "history": int(self.data.interactions["train"]["history"].shape[1]),
                "logq": self.logq, "temperature": self.temperature, "dim": self.dim}


def _encode(model: nn.Module, method: str, chunks: Any) -> torch.Tensor:
    """One tower of `model` over `chunks` in eval mode (restored after). A model without the
    tower methods (a caller's own) is refused by name."""
    fn = getattr(model, method, None)
    if fn is None:
        raise SlimkitError(f"model: {type(model).__name__} has no {method}(); the two-tower "
                           "task needs a model with encode_users and encode_items")
    return run_eval(model, chunks, lambda out: out, call=fn)


# Chosen on MovieLens-100k's valid split (8.5 s on one thread): the best epoch was the 5th-6th;
# temperature 0.03-0.1 and lr 1e-3-3e-3 read valid recall@10 0.176-0.183; without the logQ
# correction 0.073 (in-batch negatives then push popular items, the usual test items, down).
RECIPE = TeacherRecipe(epochs=8, lr=3e-3, batch_size=512, weight_decay=0.0)
