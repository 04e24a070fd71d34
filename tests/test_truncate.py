"""Depth truncation: Block Influence finds the block that changes its input least."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.truncate.importance import block_influence


class Near(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1e-3 * torch.tanh(x)


def test_block_influence_ranks_near_identity_lowest() -> None:
    torch.manual_seed(0)
    blocks = nn.Sequential(nn.Linear(8, 8), Near(), nn.Linear(8, 8), nn.Linear(8, 4))
    scores, removable = block_influence(blocks, blocks, [(torch.randn(32, 8),)])
    assert min(range(3), key=lambda i: scores[i]) == 1
    assert removable == [True, True, True, False]


def test_truncate_by_importance_and_by_index(tiny_task, make_model) -> None:
    model = make_model()
    ctx = slimkit.Context(task=tiny_task)
    step = slimkit.Layers(container="tower", drop=1, recover="none")
    record = slimkit.compress_(model, slimkit.Plan(steps=(step,)), ctx)[0]
    assert len(model.tower) == 2
    assert record.info["dropped"][0] in (1, 2)  # block 0 changes width: never removable
    assert record.edits == [{"op": "drop", "path": "tower", "indices": record.info["dropped"]}]
    with pytest.raises(slimkit.ConfigError, match="indices"):
        slimkit.compress_(make_model(), slimkit.Plan(
            steps=(slimkit.Layers(container="tower", indices=(0,), recover="none"),)), ctx)
    with pytest.raises(slimkit.ConfigError, match="container"):
        slimkit.compress_(make_model(), slimkit.Plan(
            steps=(slimkit.Layers(container="nope", indices=(1,), recover="none"),)), ctx)


def test_block_influence_uses_the_running_input_of_multi_argument_blocks(tiny_task,
                                                                         make_model) -> None:
    """DCN-v2 calls cross(x0, x_l): the score must compare with x_l, not x0."""
    model = make_model("dcnv2")
    for i in (0, 2):  # layers that clearly change their input
        torch.nn.init.normal_(model.cross[i].linear.weight, std=3.0)
        torch.nn.init.constant_(model.cross[i].linear.bias, 5.0)
    torch.nn.init.zeros_(model.cross[1].linear.weight)
    torch.nn.init.zeros_(model.cross[1].linear.bias)  # cross 1 is now exactly the identity on x_l
    batches = [tiny_task.inputs(b) for b in tiny_task.calibration_batches(2)]
    scores, removable = block_influence(model, model.cross, batches)
    assert all(removable) and scores[1] == pytest.approx(0.0, abs=1e-6)
    assert min(scores[0], scores[2]) > 1e-4
