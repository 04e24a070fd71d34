"""Shared fixtures: a tiny synthetic CTR task and small reference models (seconds, not minutes)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimkit.graph.deps import analyse
from slimkit.graph.shrink import probe, shrink, zero_removed
from slimkit.graph.trace import tensors_of
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


def _check_exact_removal(model: nn.Module, inputs) -> nn.Module:
    model = copy.deepcopy(model).eval()
    analysis = analyse(model, inputs)
    probed = {g.id: probe(model, analysis, g, inputs) for g in analysis.prunable}
    groups = [g for g in analysis.prunable if not isinstance(probed[g.id], str)]
    assert groups, "expected prunable groups"
    keep = {g.id: torch.arange(0, g.size, 2) for g in groups}
    fixes = [f for g in groups for f in probed[g.id]]
    zero_removed(model, analysis, keep)
    with torch.no_grad():
        before = [t.clone() for t in tensors_of(model(*inputs))]
    n_before = sum(p.numel() for p in model.parameters())
    shrink(model, analysis, keep, fixes)
    with torch.no_grad():
        after = tensors_of(model(*inputs))
    assert [t.shape for t in after] == [t.shape for t in before]
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) < n_before
    return model


@pytest.fixture
def check_exact_removal():
    """check_exact_removal(model, inputs) -> pruned copy: every prunable group loses half its
    channels after those channels' slices were zeroed; outputs must not change."""
    return _check_exact_removal
