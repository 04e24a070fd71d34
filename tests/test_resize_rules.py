"""Resize rules: a user's module whose forward reads a size the name probe cannot guess is cut
once a rule for its type is registered, and the sizes the rule sets are replayed by `load`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
from slimkit.core.compress import edit_log
from slimkit.core.errors import SlimkitError
from slimkit.graph import apply_edit, register_resize_rule, resize_rules, shrink
from slimkit.graph.resize_rules import Resize
from slimkit.tasks.inputs import InputsTask


class KAttention(nn.Module):
    """Attention over `k` heads: `k` is neither size-like by name nor a tensor's size."""

    def __init__(self, dim: int = 24, k: int = 4) -> None:
        super().__init__()
        self.k = k
        self.q, self.kp, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, self.k, -1).transpose(1, 2) for f in (self.q, self.kp, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


class Splitter(nn.Module):
    """No tensors of its own: a gated unit over two halves `parts` wide."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.parts = parts

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, g = torch.split(h, self.parts, dim=-1)
        return a * torch.sigmoid(g)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = KAttention()
        self.up, self.glu, self.down = nn.Linear(24, 32), Splitter(16), nn.Linear(16, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return self.head(x + self.down(self.glu(self.up(x))))


def _heads(module: KAttention, resize: Resize) -> dict[str, int]:
    # From the shapes: heads keep their width, so the count scales with q's rows.
    new, old = resize.shapes["q.weight"][0], resize.old_shapes["q.weight"][0]
    return {"k": module.k * new // old}


def _parts(module: Splitter, resize: Resize) -> None:
    module.parts = resize.new_size(module.parts)  # set in place: shrink logs the change


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test are undone after it (the registry is per process)."""
    monkeypatch.setattr(resize_rules, "_RULES", dict(resize_rules._RULES))


def _prune(model: nn.Module) -> list[slimkit.Record]:
    task = InputsTask([(torch.randn(4, 5, 24),)])
    return slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.5)]),
                             slimkit.Context(task=task))


def _model() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def test_without_rules_the_probe_cannot_cut_them(rules: None) -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SlimkitError, match="no group of channels can be removed") as info:
        _prune(model)
    assert "head group of 4" in str(info.value) and "channel group of 16" in str(info.value)
    assert model.attn.k == 4 and model.glu.parts == 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registered_rules_cut_the_groups_and_load_replays_them(rules: None, tmp_path) -> None:
    register_resize_rule(KAttention, _heads)
    register_resize_rule(Splitter)(_parts)  # the decorator form
    model = _model()
    x = torch.randn(2, 7, 24)
    _prune(model)
    assert model.attn.k == 2 and model.attn.q.out_features == 12
    assert model.glu.parts == 8 and model.up.out_features == 16
    assert model(x).shape == (2, 7, 3)
    attrs = edit_log(model)[-1]["attrs"]
    assert attrs["attn"] == {"k": 2} and attrs["glu"] == {"parts": 8}

    slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m", model=Net()).model
    assert loaded.attn.k == 2 and loaded.glu.parts == 8
    assert torch.equal(loaded(x), model(x))
    # The logged edits are plain JSON and replay onto a fresh instance on their own.
    fresh = Net()
    for edit in json.loads(json.dumps(edit_log(model))):
        apply_edit(fresh, edit)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), model(x))


def test_a_rule_replaces_the_attribute_search(rules: None, monkeypatch) -> None:
    fewest, checks = [], []
    real_fewest, real_check = shrink._fewest, shrink._check
    monkeypatch.setattr(shrink, "_fewest", lambda *a: fewest.append(1) or real_fewest(*a))
    monkeypatch.setattr(shrink, "_check", lambda *a: checks.append(1) or real_check(*a))
    with pytest.raises(SlimkitError):
        _prune(_model())
    assert fewest, "without rules the probe searches attributes"
    register_resize_rule(KAttention, _heads)
    register_resize_rule(Splitter, _parts)
    fewest.clear()
    checks.clear()
    rec = _prune(_model())
    assert rec[0].info["analysis"]["probe_failed"] == []
    # Both groups (heads, split parts) are fully ruled, so one trial run probes them together;
    # no attribute search.
    assert fewest == [] and len(checks) == 1


def test_a_failing_rule_refuses_its_group(rules: None) -> None:
    register_resize_rule(KAttention, _heads)

    @register_resize_rule(Splitter)
    def bad(module: Splitter, resize: Resize) -> dict[str, object]:
        return {"parts": torch.tensor(8)}  # not JSON: load could not replay it

    model = _model()
    rec = _prune(model)
    assert model.attn.k == 2 and model.glu.parts == 16  # the split group was left whole
    (failed,) = rec[0].info["analysis"]["probe_failed"]
    assert "resize rule for Splitter must return" in failed["reason"]


def test_ambiguous_sizes_raise() -> None:
    resize = Resize("blk", {}, {}, {16: 8}, frozenset({4}))
    assert resize.new_size(16) == 8 and resize.new_size(5) == 5
    with pytest.raises(ValueError, match="ambiguous"):
        resize.new_size(4)


@pytest.mark.parametrize("cls, rule", [(int, _heads), (KAttention, 3), (KAttention(), _heads)])
def test_registering_bad_types_or_rules_is_refused(rules: None, cls, rule) -> None:
    with pytest.raises(SlimkitError, match="register_resize_rule"):
        register_resize_rule(cls, rule)
    assert KAttention not in resize_rules._RULES


def test_torch_layers_use_the_same_registry() -> None:
    assert resize_rules.find_rule(nn.Conv2d)[0] is nn.modules.conv._ConvNd
    assert resize_rules.find_rule(nn.LazyLinear)[0] is nn.Linear
    assert resize_rules.find_rule(Splitter) is None


class WideLinear(nn.Linear):
    """A torch layer's subclass with a size of its own (found by the name probe)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.width = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).view(*x.shape[:-1], self.width)


def test_a_subclass_found_through_the_mro_is_still_probed() -> None:
    model = nn.Sequential(WideLinear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    task = InputsTask([(torch.randn(4, 8),)])
    slimkit.compress_(model, slimkit.Plan([slimkit.Structured()]), slimkit.Context(task=task))
    assert model[0].out_features == 8 and model[0].width == 8  # Linear's rule, then the probe
    assert edit_log(model)[-1]["attrs"]["0"]["width"] == 8
