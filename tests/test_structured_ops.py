"""Operations that used to lock whole groups: in-place forms, no-grad and autocast regions,
padding, grouped convolutions, index lookups on another axis. Each model here must lose
channels exactly (zeroed channels removed, outputs unchanged) and none of its groups may be
locked by these operations."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.graph.deps import analyse


class InPlaceBlock(nn.Module):
    """ResNet's `out += identity`, ReLU6(inplace=True), SiLU(inplace=True), dropout_."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.b = nn.Conv2d(24, 16, 1)
        self.act6 = nn.ReLU6(inplace=True)
        self.silu = nn.SiLU(inplace=True)
        self.hs = nn.Hardswish(inplace=True)
        self.drop = nn.Dropout(0.1, inplace=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.silu(self.stem(x))
        identity = x
        out = self.hs(self.act6(self.bn(self.a(x))))
        out = self.b(out)
        out += identity
        out.mul_(0.5)
        return self.head(self.drop(out.mean((2, 3))))


class Rotary(nn.Module):
    """A Llama-style block: cos/sin computed under no_grad and autocast, the rest outside."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 32)
        self.freq = nn.Parameter(torch.rand(32), requires_grad=False)
        self.down = nn.Linear(32, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scale = torch.cos(self.freq * 0.0) + 1.0  # all 2.0: no channel depends on another
        with torch.autocast("cpu", enabled=False):
            h = F.gelu(self.up(x)) * scale
        return self.down(h)


class Padded(nn.Module):
    """TF-style "same" padding of spatial dims (MobileNet, EfficientNet in transformers) and a
    window pad on the last-but-one axes of a channels-last tensor (Swin)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 20, 3, stride=2)
        self.b = nn.Conv2d(20, 20, 3, groups=20)
        self.c = nn.Linear(20, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(F.pad(torch.relu(self.a(F.pad(x, (0, 1, 0, 1)))), (1, 1, 1, 1)))
        x = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, 2, 0, 2))  # channels-last, pad H and W
        return self.c(x).mean((1, 2))


class Grouped(nn.Module):
    """A ResNeXt / RegNet bottleneck: 1x1, grouped 3x3 (4 groups of 8), 1x1, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.reduce = nn.Conv2d(16, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 48, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(48)
        self.expand = nn.Conv2d(48, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.reduce(x)))
        y = torch.relu(self.bn2(self.grouped(y)))
        return self.head((x + self.expand(y)).mean((2, 3)))


class BiasTable(nn.Module):
    """Swin's relative position bias: a [positions, heads] table looked up by an index buffer,
    so the head axis passes through the lookup."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 16))
        self.register_buffer("index", torch.tensor([0, 3, 6, 2, 5]))
        self.inp = nn.Linear(6, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inp(x) + self.table[self.index])


def _bn_stats(model: nn.Module) -> nn.Module:
    """Random running statistics, so a BatchNorm's channels are not all alike."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


CASES = {
    "in-place": (InPlaceBlock, lambda: (torch.randn(2, 3, 8, 8),)),
    "regions": (Rotary, lambda: (torch.randn(2, 5, 12),)),
    "pad": (Padded, lambda: (torch.randn(2, 3, 15, 15),)),
    "grouped": (Grouped, lambda: (torch.randn(2, 3, 8, 8),)),
    "index": (BiasTable, lambda: (torch.randn(2, 5, 6),)),
}
# The looked-up axis itself stays locked ("indexed by index"): rows are positions, not channels.
BLAMED = ("unknown operation", "grouped", "padded")


def _build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    cls, inputs = CASES[name]
    torch.manual_seed(0)
    with torch.no_grad():
        return _bn_stats(cls()), inputs()


def test_no_group_is_locked_by_these_operations() -> None:
    for name in CASES:
        model, x = _build(name)
        analysis = analyse(model, x)
        assert not analysis.unknown_ops, (name, analysis.unknown_ops)
        blamed = [(g.describe(), g.locked) for g in analysis.groups
                  if g.locked and g.locked.startswith(BLAMED)]
        assert not blamed, (name, blamed)
        assert analysis.prunable, name


def test_channels_removed_exactly_through_them(check_exact_removal) -> None:
    for name in CASES:
        model, x = _build(name)
        check_exact_removal(model, x)


def test_grouped_convolution_keeps_its_group_count() -> None:
    model, x = _build("grouped")
    import slimkit
    from slimkit.tasks.inputs import InputsTask

    slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.5)]),
                      slimkit.Context(task=InputsTask([x])))
    conv = model.grouped
    assert conv.groups == 4
    # Half of each group's 8 inputs and 12 outputs, the same positions in every group.
    assert (conv.in_channels, conv.out_channels) == (16, 24)
    assert conv.weight.shape == (24, 4, 3, 3)
    with torch.no_grad():
        assert model(*x).shape == (2, 3)


class OneBadGroup(nn.Module):
    """Three hidden layers; the middle one's channels are summed after a sigmoid, so a zeroed
    channel still adds sigmoid(0) = 0.5 and cannot be removed exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 6)
        self.gate = nn.Linear(6, 12)
        self.c, self.d = nn.Linear(6, 14), nn.Linear(14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        h = h * torch.sigmoid(self.gate(x)).sum(-1, keepdim=True)
        return self.d(torch.relu(self.c(h)))


def test_probing_groups_together_finds_what_probing_each_finds() -> None:
    from slimkit.graph.shrink import probe, probe_all

    torch.manual_seed(0)
    model, x = OneBadGroup().eval(), (torch.randn(3, 6),)
    analysis = analyse(model, x)
    groups = analysis.prunable
    together = probe_all(model, analysis, groups, x)
    alone = {g.id: probe(model, analysis, g, x) for g in groups}
    assert together == alone
    failed = [g.describe() for g in groups if isinstance(alone[g.id], str)]
    assert failed == ["channel group of 12 in gate"]
    assert sum(1 for v in alone.values() if v == []) == 3  # a, c and the 6 wide b -> c


class PoolFormerish(nn.Module):
    """GroupNorm(1, C): a LayerNorm over channels and positions; GroupNorm(4, C) beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, 16, 3), nn.GroupNorm(1, 16)
        self.b, self.norm4 = nn.Conv2d(16, 16, 3), nn.GroupNorm(4, 16)
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm4(self.b(torch.relu(self.norm(self.a(x)))))
        return self.head(x.mean((2, 3)))


def test_group_norm_of_one_group_is_cut_only_on_request() -> None:
    import slimkit
    from slimkit.tasks.inputs import InputsTask

    x = (torch.randn(2, 3, 10, 10),)
    for inexact_ok, width in ((False, 16), (True, 8)):
        torch.manual_seed(0)
        model = PoolFormerish().eval()
        rec = slimkit.compress_(model, slimkit.Plan([slimkit.Structured(
            ratio=0.5, normalised_widths=inexact_ok)]), slimkit.Context(task=InputsTask([x])))
        assert model.norm.num_channels == model.a.out_channels == width
        assert model.norm4.num_channels == 16  # four groups: its channels stay
        locked = [g["reason"] for g in rec[0].info["analysis"]["locked"]]
        assert any("groups=4" in r for r in locked)
        with torch.no_grad():
            assert model(*x).shape == (2, 2)


def test_rounding_counts_the_width_of_all_groups() -> None:
    """round_to applies to the width a kernel sees: 4 groups x 6 channels is 24, a multiple of
    8, so the per-group count need not be one."""
    import slimkit
    from slimkit.tasks.inputs import InputsTask

    model, x = _build("grouped")
    slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.3, round_to=8)]),
                      slimkit.Context(task=InputsTask([x])))
    conv = model.grouped
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 24, 32)
    assert model.stem.out_channels % 8 == 0
