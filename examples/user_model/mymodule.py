"""A user's own model and task, written without slimkit in mind: a small click model over a
CSV file, with the user's own metric (average precision). slimkit reaches them through
`make_task` and `make_model` only (`--task mymodule:make_task --model mymodule:make_model`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

DATA = Path(__file__).with_name("clicks.csv")
CATEGORICAL = ("segment", "category", "device")
NUMERIC = ("price", "hour")


class ClickNet(nn.Module):
    """Embeddings of the categorical columns and the numeric ones through an MLP; a logit out."""

    def __init__(self, cardinalities: list[int], numeric: int, dim: int = 8,
                 hidden: int = 64) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in cardinalities)
        self.mlp = nn.Sequential(nn.Linear(dim * len(cardinalities) + numeric, hidden),
                                 nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, cats: torch.Tensor, nums: torch.Tensor) -> torch.Tensor:
        parts = [emb(cats[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, nums], dim=1)).squeeze(1)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    order = torch.argsort(scores, descending=True)
    hits = labels[order].float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


class ClickTask:
    """The user's data and metric: 70/15/15 split of clicks.csv, vocabularies and numeric
    scaling fitted on the training rows."""

    name = "clicks"
    primary_metric = "average_precision"
    higher_is_better = True
    model_kinds = ("clicknet",)

    def __init__(self, path: str = str(DATA), seed: int = 0) -> None:
        frame = pd.read_csv(path)
        order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(seed))
        n_train, n_valid = int(0.7 * len(frame)), int(0.15 * len(frame))
        parts = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid],
                 "test": order[n_train + n_valid:]}
        train = frame.iloc[parts["train"].numpy()]
        vocab = {c: {v: i + 1 for i, v in enumerate(sorted(train[c].unique()))}
                 for c in CATEGORICAL}  # 0: a value the training rows never had
        self.cardinalities = [len(v) + 1 for v in vocab.values()]
        cats = torch.tensor([[vocab[c].get(v, 0) for v in frame[c]] for c in CATEGORICAL]).T
        raw = torch.tensor(frame[list(NUMERIC)].to_numpy(), dtype=torch.float32)
        raw[:, 0] = raw[:, 0].log()
        mean, std = raw[parts["train"]].mean(0), raw[parts["train"]].std(0)
        nums = (raw - mean) / std
        labels = torch.tensor(frame["clicked"].to_numpy(), dtype=torch.float32)
        self.splits = {k: {"cats": cats[i], "nums": nums[i], "label": labels[i]}
                       for k, i in parts.items()}

    def build_model(self, kind: str = "clicknet") -> nn.Module:
        return ClickNet(self.cardinalities, len(NUMERIC))

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        train = self.splits["train"]
        order = torch.randperm(len(train["label"]), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield {k: v[idx] for k, v in train.items()}

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.splits["train"]["label"]) // batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[dict[str, torch.Tensor]]:
        train = self.splits["train"]
        return [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in train.items()}
                for i in range(n)]

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return batch["cats"], batch["nums"]

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, batch["label"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        data = self.splits[split]
        scores = model.eval()(data["cats"], data["nums"])
        return {"average_precision": average_precision(scores, data["label"]),
                "logloss": float(F.binary_cross_entropy_with_logits(scores, data["label"]))}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        test = self.splits["test"]
        idx = torch.arange(batch_size) % len(test["label"])
        return test["cats"][idx], test["nums"][idx]


def make_task(path: str = str(DATA), seed: int = 0) -> ClickTask:
    return ClickTask(path, seed)


def make_model() -> ClickNet:
    return make_task().build_model()
