"""Shared fixtures: a tiny synthetic CTR task and small reference models (seconds, not minutes)."""

from __future__ import annotations

import pytest
import torch

from slimkit.tasks.ctr import CTRTask

TINY = {"n_rows": 4000, "cardinalities": [200, 150, 5, 8], "bag_cardinality": 20, "bag_len": 3,
        "seed": 0}


@pytest.fixture(scope="session")
def tiny_task() -> CTRTask:
    return CTRTask.synthetic(**TINY)


def small_model(task: CTRTask, kind: str = "deepfm", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build_model(kind, embed_dim=8, hidden=[32, 32, 32]).eval()


@pytest.fixture
def make_model(tiny_task: CTRTask):
    """Factory: make_model(kind="deepfm", seed=0) -> a small model on the tiny task."""
    return lambda kind="deepfm", seed=0: small_model(tiny_task, kind, seed)


@pytest.fixture(params=["deepfm", "dcnv2"])
def model_kind(request: pytest.FixtureRequest) -> str:
    return request.param
