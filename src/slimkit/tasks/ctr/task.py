"""The CTR task adapter (MovieLens-100k or synthetic data) and its teacher-training recipe."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.context import Context
from ...core.errors import SlimkitError
from ...core.task import Batch
from ...eval.metrics import auc, logloss
from ...train.teacher import TeacherRecipe, train_best_on_valid
from ..batching import calibration_order, epoch_order, run_eval
from .data import CTRData, load_movielens
from .demo_plan import DEMO_PLAN_YAML
from .models import DCNv2, DeepFM
from .search_space import CTR_SPACE_YAML
from .synthetic import make_synthetic

log = logging.getLogger(__name__)

MODELS: dict[str, type[nn.Module]] = {"deepfm": DeepFM, "dcnv2": DCNv2}
EVAL_BATCH = 8192


class CTRTask:
    """Binary click prediction; batches are {"sparse", "bag", "label"}, the metric is ROC AUC."""

    primary_metric = "auc"
    higher_is_better = True

    def __init__(self, data: CTRData, *, name: str) -> None:
        self.name = name
        self.data = data
        self.field_dims = list(data.field_dims)
        self.bag_dim = data.bag_dim

    @classmethod
    def movielens(cls) -> CTRTask:
        """MovieLens-100k, click = rating >= 4, time-ordered 80/10/10 split."""
        return cls(load_movielens(), name="movielens-100k")

    @classmethod
    def synthetic(cls, n_rows: int = 100_000, cardinalities: Sequence[int] = (1000, 1000, 100, 10),
                  bag_cardinality: int = 50, bag_len: int = 4, embed_dim: int = 8,
                  zipf_a: float = 1.2, seed: int = 0) -> CTRTask:
        """Zipf ids with labels from a fixed hidden model; see `synthetic.make_synthetic`."""
        data = make_synthetic(n_rows, list(cardinalities), bag_cardinality, bag_len,
                              embed_dim=embed_dim, zipf_a=zipf_a, seed=seed)
        return cls(data, name=f"synthetic-{n_rows}-seed{seed}")

    @classmethod
    def from_table(cls, path: str, *, label: str, categorical: str | Sequence[str] = (),
                   numeric: str | Sequence[str] = (), bag: str | Sequence[str] = (),
                   time: str | None = None, split: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0, bins: int = 16) -> CTRTask:
        """A CSV/TSV (optionally .gz) or parquet file; `label` holds 0/1 (or true/false).

        `categorical` columns get vocabularies from the train split (unseen values -> id 0),
        `numeric` columns `bins` quantile bins fitted on train (missing values: their own id),
        `bag` names 0/1 flag columns forming one multi-valued field (none: an all-padding bag).
        With `time` the rows are sorted by it (stable) before the `split` cut, else shuffled
        with `seed`. Column lists may be one comma-separated string. See `tabular.py`.
        """
        from .tabular import load_table  # tabular subclasses CTRTask, so it imports this module

        return load_table(path, label=label, categorical=categorical, numeric=numeric, bag=bag,
                          time=time, split=split, seed=seed, bins=bins)

    def split(self, name: str) -> Batch:
        if name not in self.data.splits:
            raise SlimkitError(f"split: expected one of {sorted(self.data.splits)}, got {name!r}")
        return self.data.splits[name]

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        """One shuffled epoch; the last batch may be short."""
        train = self.split("train")
        for idx in epoch_order(len(train["label"]), batch_size, seed):
            yield {k: v[idx] for k, v in train.items()}

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.split("train")["label"]) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """`n` fixed batches of training rows; a fixed shuffle so they span the whole time range."""
        train = self.split("train")
        return [{k: v[chunk] for k, v in train.items()}
                for chunk in calibration_order(len(train["label"]), n, batch_size)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return batch["sparse"], batch["bag"]

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.reshape(-1), batch["label"])

    def predict(self, model: nn.Module, split: str = "test") -> torch.Tensor:
        """Logits for every row of a split, in eval mode; the model's own mode is restored."""
        data = self.split(split)
        chunks = zip(data["sparse"].split(EVAL_BATCH), data["bag"].split(EVAL_BATCH), strict=True)
        return run_eval(model, chunks, lambda out: out.reshape(-1))

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """AUC on logits (no sigmoid saturation ties) and log loss on float64 probabilities."""
        logits = self.predict(model, split)
        labels = self.split(split)["label"]
        return {"auc": auc(labels, logits),
                "logloss": logloss(labels, torch.sigmoid(logits.double()))}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first `batch_size` test rows, tiled when the split is smaller."""
        test = self.split("test")
        idx = torch.arange(batch_size) % len(test["label"])
        return test["sparse"][idx], test["bag"][idx]

    model_kinds = tuple(MODELS)

    def teacher_recipe(self, kind: str | None) -> TeacherRecipe:
        return RECIPES.get(kind or "deepfm", TeacherRecipe())

    def default_plan(self) -> str:
        return DEMO_PLAN_YAML

    def search_space(self) -> str:
        return CTR_SPACE_YAML

    def build_model(self, kind: str, **kwargs: Any) -> nn.Module:
        if kind not in MODELS:
            raise SlimkitError(f"kind: expected one of {sorted(MODELS)}, got {kind!r}")
        return MODELS[kind](self.field_dims, self.bag_dim, **kwargs)

    def describe(self) -> dict[str, Any]:
        splits = self.data.splits
        return {
            "name": self.name,
            "rows": {k: len(v["label"]) for k, v in splits.items()},
            "positive_rate": {k: round(float(v["label"].mean()), 4) for k, v in splits.items()},
            "fields": list(self.data.field_names),
            "field_dims": self.field_dims,
            "bag_dim": self.bag_dim,
            "bag_len": int(splits["train"]["bag"].shape[1]),
        }


# Chosen on MovieLens-100k's valid split (about 8 s per teacher on 2 CPU threads). Valid AUC sat
# in 0.694-0.700 over lr 3e-4..3e-3, batch 256..2048, weight decay 0..1e-4, dropout and embedding
# widths 8..32; the best epoch was usually the 5th. Hiding user ids during training (most test
# users are new) lowered AUC: learned user biases de-confound the item effects.
RECIPES = {"deepfm": TeacherRecipe(), "dcnv2": TeacherRecipe(weight_decay=1e-4)}


def train_teacher(task: CTRTask, ctx: Context, kind: str = "deepfm", *,
                  recipe: TeacherRecipe | None = None, **model_kwargs: Any) -> nn.Module:
    """Build `kind` with the task's fields and train it; returns the best-on-valid epoch's weights.

    Global RNG state is forked, so the caller's random streams are untouched and the result
    depends only on `ctx.seed`.
    """
    recipe = recipe or RECIPES.get(kind, TeacherRecipe())
    return train_best_on_valid(task, ctx, kind, recipe, **model_kwargs)
