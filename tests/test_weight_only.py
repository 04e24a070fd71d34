"""Weight-only quantization: group-wise error bounds, 8/4/3/2-bit packing, the packed module, AWQ,
the registered method on the tiny CTR models (save/load exact) and config validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.export import artifact_bytes
from slimkit.methods.quantize.awq import fake_quantize, search_scales
from slimkit.methods.quantize.weight_only import AWQOptions, GPTQOptions, WeightOnly
from slimkit.nn.groupwise import (
    dequantize_groups,
    effective_group,
    pack_codes,
    packed_width,
    quantize_groups,
    unpack_codes,
)
from slimkit.nn.lowbit_linear import WeightOnlyLinear


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [16, 7, -1, 1000])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_groupwise_error_within_half_a_step(bits, group, symmetric, dtype) -> None:
    torch.manual_seed(bits)
    w = torch.randn(12, 50) * 3 + torch.randn(12, 1) * 4  # groups that need not straddle zero
    codes, scale, offset = quantize_groups(w, bits, group, symmetric, dtype)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= (1 << bits) - 1
    assert scale.dtype == dtype and scale.shape == (12, -(-50 // effective_group(50, group)))
    assert (offset is None) == symmetric
    approx = dequantize_groups(codes, scale, offset, bits, group)
    step = scale.float()[:, torch.arange(50) // effective_group(50, group)]
    assert ((approx - w).abs() <= step / 2 * (1 + 1e-5) + 1e-6).all()


def test_ragged_last_group_has_its_own_parameters() -> None:
    w = torch.ones(2, 10)
    w[:, 8:] = 100.0  # the short last group (2 columns of 10 with group 4) holds the outliers
    codes, scale, offset = quantize_groups(w, 4, 4, False, torch.float32)
    assert scale.shape == (2, 3)
    assert torch.allclose(dequantize_groups(codes, scale, offset, 4, 4), w)


@pytest.mark.parametrize("cols", [1, 8, 13, 53])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_packing_round_trip(bits: int, cols: int) -> None:
    codes = torch.randint(0, 1 << bits, (5, cols), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_width(cols, bits))
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


def test_packed_sizes_and_int3_layout() -> None:
    assert [packed_width(64, b) for b in (8, 4, 3, 2)] == [64, 32, 24, 16]
    assert packed_width(9, 3) == 6  # 9 codes need two 3-byte words
    # 8 INT3 codes 0..7, low bits first, in 3 little-endian bytes.
    word = sum(v << (3 * i) for i, v in enumerate(range(8)))
    packed = pack_codes(torch.arange(8, dtype=torch.uint8)[None], 3)
    assert packed[0].tolist() == [word & 0xFF, (word >> 8) & 0xFF, word >> 16]


@pytest.mark.parametrize("bits,group,symmetric", [(4, 16, False), (3, 24, True), (2, -1, False),
                                                  (8, 32, True)])
def test_module_matches_dequantized_weight_and_rebuilds_exactly(bits, group, symmetric) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    q = WeightOnlyLinear.from_linear(linear, bits=bits, group_size=group, symmetric=symmetric)
    x = torch.randn(7, 3, 40)
    out = q(x)
    assert torch.equal(out, nn.functional.linear(x, q.dequantized_weight(), q.bias))
    with torch.no_grad():
        rel = float((out - linear(x)).norm() / linear(x).norm())
    assert rel < {8: 0.01, 4: 0.1, 3: 0.2, 2: 0.6}[bits]
    state = q.state_dict()
    assert all(type(t) is torch.Tensor for t in state.values())
    assert state["qweight"].dtype == torch.uint8
    assert state["qweight"].numel() == 24 * packed_width(40, bits)
    again = WeightOnlyLinear(**q.spec())
    again.load_state_dict(state)
    assert torch.equal(again(x), out)


def test_cache_is_invalidated_on_load_and_deepcopy_is_independent() -> None:
    torch.manual_seed(0)
    a = WeightOnlyLinear.from_linear(nn.Linear(16, 8), bits=4, group_size=8, cache=True)
    b = WeightOnlyLinear.from_linear(nn.Linear(16, 8), bits=4, group_size=8)
    x = torch.randn(3, 16)
    before = a(x)  # builds a's cache
    assert a._dense is not None and b._dense is None
    clone = copy.deepcopy(a)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), before)
    assert torch.equal(clone(x), before)


def test_awq_scale_search_never_worse_than_rounding_and_helps_outlier_channels() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(1024, 128)
    x[:, :4] *= 50.0  # a few input channels with large magnitude, as in LLM activations
    ref = x @ w.T
    s, alpha, losses = search_scales(w, x, x.abs().mean(0), bits=3, group_size=64,
                                     symmetric=False, grid=20)
    assert len(losses) == 20 and min(losses) <= losses[0] and alpha > 0
    rtn = fake_quantize(w, 3, 64, False)
    awq = fake_quantize(w * s, 3, 64, False) / s
    err_rtn = float((x @ rtn.T - ref).pow(2).mean())
    err_awq = float((x @ awq.T - ref).pow(2).mean())
    assert err_awq < 0.7 * err_rtn


def _quantized(make_model, task, kind, config, seed=0):
    model = make_model(kind)
    ctx = slimkit.Context(task=task, seed=seed)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), ctx)
    return model, ctx


@pytest.mark.parametrize("kind,config", [
    ("deepfm", WeightOnly(bits=4, group_size=16)),
    ("dcnv2", WeightOnly(bits=3, group_size=32, algorithm="gptq", calibration_batches=2,
                         gptq=GPTQOptions(act_order=True))),
    ("deepfm", WeightOnly(bits=2, group_size=-1, symmetric=True, algorithm="awq",
                          calibration_batches=2, awq=AWQOptions(clip=True, grid=5))),
])
def test_save_load_round_trip_is_exact(make_model, tiny_task, tmp_path, kind, config) -> None:
    model, ctx = _quantized(make_model, tiny_task, kind, config)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert not linears and ctx.info["quantized"]
    x = tiny_task.example_inputs(64)
    with torch.inference_mode():
        out = model(*x)
    assert torch.isfinite(out).all()
    path = slimkit.save(model, tmp_path / "q")
    base = slimkit.save(make_model(kind), tmp_path / "fp32")
    assert artifact_bytes(path) < artifact_bytes(base)
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path).model(*x), out)


def test_gptq_beats_rtn_on_the_tiny_model(make_model, tiny_task) -> None:
    x = tiny_task.example_inputs(512)
    with torch.inference_mode():
        ref = make_model("deepfm")(*x)
    errors = {}
    for algorithm in ("rtn", "gptq"):
        config = WeightOnly(bits=3, group_size=-1, algorithm=algorithm, calibration_batches=4)
        model, ctx = _quantized(make_model, tiny_task, "deepfm", config)
        with torch.inference_mode():
            errors[algorithm] = float((model(*x) - ref).pow(2).mean())
        if algorithm == "gptq":
            assert set(ctx.info["layers"]) == set(ctx.info["quantized"])
    assert errors["gptq"] < errors["rtn"]


@pytest.mark.parametrize("kwargs,field", [
    ({"bits": 5}, "bits"), ({"group_size": 0}, "group_size"), ({"group_size": -2}, "group_size"),
    ({"algorithm": "hqq"}, "algorithm"), ({"calibration_batches": 0}, "calibration_batches"),
    ({"scale_dtype": "bfloat16"}, "scale_dtype"),
])
def test_bad_config_raises_config_error_naming_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError) as info:
        WeightOnly(**kwargs)
    assert info.value.field == field


def test_bad_nested_options_name_their_path_in_a_plan() -> None:
    with pytest.raises(ConfigError) as info:
        GPTQOptions(damp_percent=0.0)
    assert info.value.field == "damp_percent"
    with pytest.raises(ConfigError) as info:
        AWQOptions(grid=0)
    assert info.value.field == "grid"
    plan = {"version": 1, "steps": [{"method": "quantize.weight_only", "gptq": {"block_size": 0}}]}
    with pytest.raises(ConfigError) as info:
        slimkit.Plan.from_dict(plan)
    assert info.value.field == "steps[0].gptq.block_size"


def test_plan_round_trip_with_nested_options() -> None:
    config = WeightOnly(bits=3, algorithm="gptq", gptq=GPTQOptions(act_order=True),
                        awq=AWQOptions(clip=True))
    plan = slimkit.Plan(steps=(config,))
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan
    assert "data" in config.requires() and not WeightOnly().requires()


class _QKV(nn.Module):
    """Three layers fed the same tensor (as q, k, v are), then one fed their result."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.out(torch.relu(self.q(x) * self.k(x) + self.v(x)))


class _Inputs:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = [{"x": torch.randn(64, 16, generator=g) @ torch.randn(16, 16, generator=g)}
                     for _ in range(3)]

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[dict]:
        return self.data[:n]

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return (batch["x"],)


def test_shared_inputs_are_captured_once_and_later_layers_see_quantized_inputs() -> None:
    from slimkit.methods.layerwise import HessianAccumulator
    from slimkit.methods.quantize.gptq import gptq_quantize

    torch.manual_seed(0)
    model = _QKV()
    task = _Inputs()
    ctx = slimkit.Context(task=task)
    slimkit.compress_(model, slimkit.Plan(steps=(WeightOnly(bits=3, algorithm="gptq",
                                                            calibration_batches=3),)), ctx)
    assert model.calls == 6  # two groups ({q, k, v} then {out}) x 3 batches
    assert set(ctx.info["layers"]) == {"q", "k", "v", "out"}
    # `out` was quantized with the Hessian of its inputs under the already-quantized q, k, v.
    torch.manual_seed(0)
    fresh = _QKV()
    acc = HessianAccumulator(16)
    with torch.no_grad():
        for batch in task.data:
            x = batch["x"]
            acc.add(torch.relu(model.q(x) * model.k(x) + model.v(x)))
    codes, _, _ = gptq_quantize(fresh.out.weight, acc.hessian, bits=3, group_size=128,
                                symmetric=False, act_order=True)  # the method's default
    assert torch.equal(model.out.codes(), codes)


def test_non_sequential_capture_uses_the_float_model_in_one_pass() -> None:
    from slimkit.methods.layerwise import HessianAccumulator
    from slimkit.methods.quantize.gptq import gptq_quantize

    torch.manual_seed(0)
    model = _QKV()
    fresh = copy.deepcopy(model)
    task = _Inputs()
    config = WeightOnly(bits=3, algorithm="gptq", calibration_batches=3, sequential=False)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=task))
    assert model.calls == 3
    acc = HessianAccumulator(16)
    with torch.no_grad():
        for batch in task.data:
            x = batch["x"]
            acc.add(torch.relu(fresh.q(x) * fresh.k(x) + fresh.v(x)))
    codes, _, _ = gptq_quantize(fresh.out.weight, acc.hessian, bits=3, group_size=128,
                                symmetric=False, act_order=True)  # the method's default
    assert torch.equal(model.out.codes(), codes)


def test_cache_built_in_inference_mode_still_allows_backward() -> None:
    q = WeightOnlyLinear.from_linear(nn.Linear(8, 4), bits=4, group_size=-1, cache=True)
    with torch.inference_mode():
        q(torch.randn(2, 8))
    x = torch.randn(2, 8, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, q.dequantized_weight().sum(0).expand(2, 8))


def test_the_record_says_what_calibration_used(tiny_task, make_model) -> None:
    """No silent cap: the step's record names the batches asked for, those the task gave, and
    the rows they held."""
    model = make_model()
    record = slimkit.compress_(model, slimkit.Plan(steps=(slimkit.WeightOnly(
        bits=4, group_size=16, algorithm="gptq", calibration_batches=3),)),
        slimkit.Context(task=tiny_task))[0]
    used = record.info["calibration"]
    assert used["asked"] == 3 and 1 <= used["batches"] <= 3 and used["rows"] >= used["batches"]
