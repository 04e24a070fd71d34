"""Structured pruning: dependency groups, exact removal of zeroed channels, reload, reporting."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import SlimkitError
from slimkit.graph.deps import analyse
from slimkit.graph.dims import Dims
from slimkit.graph.shrink import shrink
from slimkit.graph.trace import TraceError
from slimkit.methods.prune import importance
from slimkit.tasks.inputs import InputsTask
from slimkit.tasks.vision.models import SmallCNN


def test_dims_product_and_concat_index_maps() -> None:
    d = Dims()
    heads, head_dim, hidden = d.new(3), d.new(2), d.new(6)
    d.compose(hidden, "prod", [heads, head_dim])
    assert d.owner(hidden, heads).tolist() == [0, 0, 1, 1, 2, 2]
    assert d.keep(hidden, {heads: torch.tensor([0, 2])}).tolist() == [0, 1, 4, 5]
    other, fused = d.new(6), d.new(12)
    d.compose(fused, "cat", [hidden, other])
    assert d.keep(fused, {heads: torch.tensor([1])}).tolist() == [2, 3, *range(6, 12)]


def test_zeroed_channels_removed_exactly_ctr(make_model, tiny_task, model_kind, tmp_path,
                                             check_exact_removal) -> None:
    model = make_model(model_kind)
    pruned = check_exact_removal(model, tiny_task.example_inputs(16))
    slimkit.save(pruned, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m").model
    x = tiny_task.example_inputs(64)
    assert torch.equal(loaded(*x), pruned(*x))


def test_zeroed_channels_removed_exactly_cnn(check_exact_removal) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = (torch.randn(4, 1, 28, 28),)
    pruned = check_exact_removal(model, x)
    assert pruned.conv1.out_channels == 16 and pruned.conv2.in_channels == 16
    assert pruned.fc1.in_features < model.fc1.in_features


class BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(torch.relu(self.bn(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_batchnorm_and_depthwise_follow_their_channels(check_exact_removal) -> None:
    torch.manual_seed(0)
    model = BnNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.weight.uniform_(0.1, 1.0)
    x = (torch.randn(2, 3, 8, 8),)
    analysis = analyse(model, x)
    names = {(m.name, m.dim) for g in analysis.prunable for m in g.members}
    assert ("bn.running_mean", 0) in names and ("dw.weight", 0) in names
    scores, fallbacks = importance.scores(model, analysis, analysis.prunable, "bn_scale")
    assert fallbacks == 0
    g = analysis.prunable[0]
    assert torch.allclose(scores[g.id], model.bn.weight.detach().abs())
    pruned = check_exact_removal(model, x)
    assert pruned.bn.num_features == 4 and pruned.dw.groups == 4


class Odd(nn.Module):
    """One block the analysis understands, one behind an operation it does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.b1, self.b2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a2(torch.relu(self.a1(x)))
        return self.b2(torch.special.i0(torch.tanh(self.b1(h))))


def test_unknown_operation_is_reported_and_left_alone() -> None:
    model = Odd().eval()
    task = InputsTask([(torch.randn(8, 8),)])
    analysis = analyse(model, task.example_inputs(2))
    assert "special_i0" in analysis.unknown_ops
    locked = [g for g in analysis.groups if g.locked and "b1.weight" in
              {m.name for m in g.members}]
    assert any("unknown operation special_i0" in g.locked for g in locked)
    ctx = slimkit.Context(task=task)
    records = slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.5)]), ctx)
    assert model.a1.out_features == 8 and model.b1.out_features == 16
    assert "special_i0" in records[0].info["analysis"]["unknown_ops"]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        if h.sum() > 0:  # data-dependent branch: export cannot trace it
            h = h * 2
        return self.l2(h)


class Outer(nn.Module):
    """Untraceable at the top; its MLP block traces on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 4))
        self.out = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        if h.sum() > 0:
            h = -h
        return self.out(h)


def test_untraceable_model_fails_cleanly_and_is_untouched() -> None:
    model = DataDependent()
    state = copy.deepcopy(model.state_dict())
    task = InputsTask([(torch.randn(4, 4),)])
    with pytest.raises(TraceError, match="cannot trace DataDependent"):
        slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_untraceable_model_falls_back_to_submodules(tmp_path) -> None:
    torch.manual_seed(0)
    model = Outer()
    task = InputsTask([(torch.randn(16, 4),)])
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.5)]),
                            slimkit.Context(task=task))
    assert model.mlp[0].out_features == 16 and model.mlp[2].in_features == 16
    assert "not traceable" in rec[0].info["analysis"]["notes"][0]


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "taylor", "activation"])
def test_criteria_rank_and_global_scope(make_model, tiny_task, criterion) -> None:
    model = make_model("deepfm")
    for scope in ("layer", "global"):
        m = copy.deepcopy(model)
        config = slimkit.Structured(ratio=0.5, criterion=criterion, scope=scope, round_to=4,
                                    targets=slimkit.Targets(names=("tower.*", "head")))
        rec = slimkit.compress_(m, slimkit.Plan([config]), slimkit.Context(task=tiny_task))
        widths = [m.tower[i][0].out_features for i in range(3)]
        assert all(w % 4 == 0 for w in widths)
        if scope == "layer":
            assert widths == [16, 16, 16]
        else:
            assert 48 <= sum(widths) <= 48 + 3 * 3 and rec[0].info["criterion_fallbacks"] == 0
        assert m.embeddings[0].embedding_dim == 8  # not targeted


def test_bad_config_names_field() -> None:
    with pytest.raises(slimkit.ConfigError, match="ratio"):
        slimkit.Structured(ratio=1.0)
    with pytest.raises(slimkit.ConfigError, match="round_to"):
        slimkit.Structured(round_to=0)


def test_failing_prune_restores_model(make_model, tiny_task, monkeypatch) -> None:
    model = make_model("deepfm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import slimkit.methods.prune.structured as st

    def broken(m, *a, **k):
        shrink(m, *a, **k)
        m.head = nn.Linear(3, 1)  # any damage that makes the forward fail

    monkeypatch.setattr(st, "shrink", broken)
    with pytest.raises(SlimkitError, match="left unchanged"):
        slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]),
                          slimkit.Context(task=tiny_task))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class SigmoidSum(nn.Module):  # sigmoid(0) = 0.5: a zeroed channel still adds to the sum
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) + torch.sigmoid(self.a(x)).sum(-1, keepdim=True)


class HandAttention(nn.Module):  # the scale reads q.shape[-1], baked into the trace
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x), self.k(x)
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ self.v(x)


class Rolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.roll(self.a(x), 1, dims=-1))


class CatOfOne(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.o(torch.cat([h], -1) + h)


def test_concatenation_of_one_part_is_that_part() -> None:
    model = CatOfOne().eval()
    task = InputsTask([(torch.randn(4, 8),)])
    slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert model.a.out_features == 8


@pytest.mark.parametrize("cls", [SigmoidSum, HandAttention, Rolled])
def test_groups_that_cannot_be_cut_exactly_are_refused(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    task = InputsTask([(torch.randn(2, 5, 8),)])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SlimkitError, match="no group of channels can be removed"):
        slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Scaled(nn.Module):
    """A root attribute equal to a group's width, a non-persistent buffer on another group."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features = 16
        self.a, self.o = nn.Linear(16, 16), nn.Linear(16, 2)
        self.c, self.d = nn.Linear(16, 12), nn.Linear(12, 2)
        self.register_buffer("gain", torch.linspace(0.5, 2, 12), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x / self.in_features ** 0.5))
        return self.o(h) + self.d(torch.relu(self.c(x)) * self.gain)


def test_root_attributes_and_unsaved_buffers_are_left_alone() -> None:
    model = Scaled().train()
    task = InputsTask([(torch.randn(8, 16),)])
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert model.in_features == 16 and model.a.out_features == 8
    assert model.c.out_features == 12 and model.gain.shape == (12,)  # gain is not saved
    assert model.training  # the caller's mode is kept
    assert any("non-persistent" in g["reason"] for g in rec[0].info["analysis"]["locked"])


def test_outputs_inside_dataclasses_are_outputs() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> Out:
            return Out(self.o(torch.relu(self.a(x))))

    model = Model()
    task = InputsTask([(torch.randn(4, 8),)])
    slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert model.a.out_features == 8 and model(torch.randn(3, 8)).logits.shape == (3, 4)


def test_example_inputs_leave_shared_inputs_alone() -> None:
    task = InputsTask([(torch.randn(4, 5, 8), torch.ones(5, 5, dtype=torch.bool),
                        torch.tensor(2.0))])
    x, mask, scalar = task.example_inputs(2)
    assert x.shape == (2, 5, 8) and mask.shape == (5, 5) and scalar.shape == ()
