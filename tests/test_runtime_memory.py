"""Run-time memory of compressed layers: packed mode (the default) holds only codes and scales and
gives the same outputs as cached mode; every method that claims a smaller model is no larger in
memory after reload than fp32; torch layers that read their children's `.weight` still run."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from test_contract import METHODS
from torch import nn

import slimkit
from slimkit.graph import is_masked
from slimkit.nn import blockwise
from slimkit.nn.binary_linear import BinaryLinear, TernaryLinear
from slimkit.nn.blockwise import rounding_bound
from slimkit.nn.clustered_layer import ClusteredLayer
from slimkit.nn.lowbit_linear import WeightOnlyLinear
from slimkit.nn.runtime_memory import memory_report, runtime_bytes, storage_bytes

log = logging.getLogger(__name__)


def _layers(cache: bool) -> list[nn.Module]:
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        linear.weight[linear.weight.abs() < 0.05] = 0
    return [WeightOnlyLinear.from_linear(linear, bits=4, group_size=16, cache=cache),
            WeightOnlyLinear.from_linear(linear, bits=3, group_size=-1, symmetric=True,
                                         cache=cache),
            BinaryLinear.from_linear(linear, "xnor", cache=cache),
            TernaryLinear.from_linear(linear, "ternary", cache=cache),
            ClusteredLayer.from_module(linear, bits=5, cache=cache),
            ClusteredLayer.from_module(conv, bits=4, cache=cache)]


def _input(layer: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if getattr(layer, "kind", "linear") == "conv2d":
        return torch.randn(2, 3, 6, 6, generator=gen)
    return torch.randn(5, 40, generator=gen)


@pytest.mark.parametrize("block_bytes", [4 << 20, 4 * 40 * 5])  # one block; blocks of 5 rows
def test_packed_mode_equals_cached_mode_and_holds_no_dense_weight(block_bytes,
                                                                  monkeypatch) -> None:
    monkeypatch.setattr(blockwise, "BLOCK_BYTES", block_bytes)
    for packed, cached in zip(_layers(False), _layers(True), strict=True):
        x = _input(packed)
        with torch.inference_mode():
            out_packed, out_cached = packed(x), cached(x)
        # The same weights (same ops on the same codes); a linear layer's GEMM may sum in
        # another order block by block, so its outputs agree within the fp32 rounding bound.
        assert torch.equal(packed.weight, cached.weight)
        if getattr(packed, "kind", "linear") == "conv2d":
            assert torch.equal(out_packed, out_cached)
        else:
            bound = rounding_bound(x, cached.weight, cached.bias)
            assert bool(((out_packed - out_cached).double().abs() <= bound).all())
        assert packed.memory_mode == "packed" and cached.memory_mode == "cached"
        assert packed.spec()["cache"] is False and cached.spec()["cache"] is True
        # Resident state after a forward: the buffers only, no cache held.
        held = [v for v in vars(packed).values() if isinstance(v, torch.Tensor)]
        assert held == [], type(packed).__name__
        numel = packed.weight.numel()
        assert cached.runtime_bytes() == packed.runtime_bytes() + 4 * numel
        assert packed.runtime_bytes() == storage_bytes([*packed.parameters(),
                                                        *packed.buffers()])


def test_packed_layers_are_smaller_than_fp32_at_run_time() -> None:
    for layer in _layers(False):
        numel = layer.weight.numel()
        fp32 = 4 * (numel + layer.weight.shape[0])
        bits = getattr(layer, "bits", 1)
        # codes at `bits` a weight, plus per-row or per-group scales/offsets, bias, codebook
        assert layer.runtime_bytes() < fp32 * (bits + 1) / 32 + 400, type(layer).__name__


def test_weight_view_is_read_only_and_not_cached() -> None:
    layer = _layers(False)[0]
    w = layer.weight
    assert w.shape == (24, 40) and not w.requires_grad
    assert layer.weight is not w  # rebuilt on each access
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(24, 40)
    with pytest.raises(KeyError):  # torch refuses a Parameter over an existing attribute
        layer.weight = nn.Parameter(torch.zeros(24, 40))


def test_clustered_indices_are_packed_in_memory_and_a_byte_each_in_the_state_dict() -> None:
    layer = ClusteredLayer.from_module(nn.Linear(40, 24), bits=5)
    assert layer.indices.shape == (24, 25)  # 40 indices x 5 bits = 25 bytes a row
    state = layer.state_dict()
    assert state["indices"].shape == (24, 40) and state["indices"].dtype == torch.uint8
    twin = ClusteredLayer(**layer.spec())
    twin.load_state_dict(state)
    assert torch.equal(twin.indices, layer.indices) and torch.equal(twin.weight, layer.weight)


@pytest.mark.parametrize("config", [
    slimkit.WeightOnly(bits=4, group_size=16, cache=True),
    slimkit.BinaryWeights(kind="ternary", cache=True),
    slimkit.Cluster(linear_bits=4, epochs=0, cache=True)], ids=lambda c: c.method)
def test_cache_option_is_recorded_in_info_manifest_and_plan(config, make_model, tiny_task,
                                                            tmp_path) -> None:
    assert slimkit.Plan.from_yaml(slimkit.Plan(steps=(config,)).to_yaml()).steps == (config,)
    cached, packed = make_model(), make_model()
    ctx = slimkit.Context(task=tiny_task)
    record = slimkit.compress_(cached, slimkit.Plan(steps=(config,)), ctx)[0]
    slimkit.compress_(packed, slimkit.Plan(steps=(dataclasses.replace(config, cache=False),)),
                      ctx)
    assert record.info["memory_mode"] == "cached"
    loaded = slimkit.load(slimkit.save(cached, tmp_path / "art"))
    swaps = [e for e in loaded.manifest["edits"] if e["op"] == "swap"]
    assert swaps and all(e["args"]["cache"] is True for e in swaps)
    assert set(memory_report(loaded.model)["modes"].values()) == {"cached"}
    x = tiny_task.example_inputs(16)
    with torch.inference_mode():
        assert torch.equal(loaded.model(*x), packed(*x))
    assert runtime_bytes(loaded.model) > runtime_bytes(packed)


def _encoder(**kwargs: int) -> nn.Module:
    torch.manual_seed(0)
    args = {"d_model": 32, "nhead": 4, "dim_feedforward": 64, "dropout": 0.0,
            "batch_first": True, **kwargs}
    model = nn.TransformerEncoderLayer(**args).eval()
    model.slimkit_spec = {"builder": "torch.nn:TransformerEncoderLayer", "kwargs": args}
    return model


@pytest.mark.parametrize("types", [("Linear",), ("Linear", "NonDynamicallyQuantizableLinear")])
def test_weight_only_transformer_encoder_layer_runs_before_and_after_reload(types,
                                                                             tmp_path) -> None:
    model = _encoder()
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    config = slimkit.WeightOnly(bits=8, group_size=16, targets=slimkit.Targets(types=types))
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context())
    assert isinstance(model.linear1, WeightOnlyLinear)
    assert isinstance(model.self_attn.out_proj, WeightOnlyLinear) == (len(types) == 2)
    for grad in (False, True):  # torch's fused fast path (inference) and the plain path
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            out = model(x)
        # INT8 with groups of 16: a small, bounded change from fp32 (a loose sanity bound).
        assert (out - ref).abs().max() < 0.05
    loaded = slimkit.load(slimkit.save(model, tmp_path / "art")).model
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert runtime_bytes(loaded) < runtime_bytes(_encoder())


def _reloaded(name, make_model, task, kind, tmp_path) -> tuple[nn.Module, nn.Module]:
    config, _ = METHODS[name]
    model = make_model(kind)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=task, seed=0))
    return slimkit.load(slimkit.save(model, tmp_path / name)).model, make_model(kind)


@pytest.mark.parametrize("name", sorted(n for n, (_, shrinks) in METHODS.items() if shrinks))
def test_reloaded_model_is_no_larger_in_memory_than_fp32(name, make_model, tiny_task,
                                                          tmp_path) -> None:
    loaded, fp32 = _reloaded(name, make_model, tiny_task, "deepfm", tmp_path)
    report = memory_report(loaded)
    log.info("%s: %d run-time bytes vs fp32 %d", name, report["runtime_bytes"],
             runtime_bytes(fp32))
    assert report["runtime_bytes"] <= runtime_bytes(fp32)
    assert set(report["modes"].values()) <= {"packed"}  # the default keeps no dense cache
    assert not any("weight_mask" in m._buffers for m in loaded.modules())


def test_pruned_model_keeps_zeros_through_later_training_without_resident_masks(
        make_model, tiny_task, tmp_path) -> None:
    model = make_model()
    ctx = slimkit.Context(task=tiny_task)
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5),)), ctx)
    loaded = slimkit.load(slimkit.save(model, tmp_path / "art")).model
    masked = [m for m in loaded.modules() if is_masked(m)]
    assert masked and not any("weight_mask" in m._buffers for m in loaded.modules())
    zeros = [m.weight == 0 for m in masked]
    slimkit.compress_(loaded, slimkit.Plan(steps=(slimkit.Finetune(epochs=0.2, lr=1e-2),)), ctx)
    for m, before in zip(masked, zeros, strict=True):
        assert bool((m.weight[before] == 0).all())
    assert not any("weight_mask" in m._buffers for m in loaded.modules())


@pytest.mark.slow
def test_llama_weight_only_4bit_module_bytes() -> None:
    from slimkit.models import tiny_model

    kwargs = {"hidden_size": 768, "intermediate_size": 3072, "vocab_size": 8000}
    fp32 = tiny_model("llama", **kwargs)
    model = tiny_model("llama", **kwargs)
    ctx = slimkit.Context()
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.WeightOnly(bits=4),)), ctx)
    before, after = memory_report(fp32), memory_report(model)
    linear_fp32 = sum(4 * m.weight.numel() for m in fp32.modules() if isinstance(m, nn.Linear))
    linear_4bit = sum(m.runtime_bytes() for m in model.modules()
                      if isinstance(m, WeightOnlyLinear))
    print(f"llama (4 layers, hidden 768, ffn 3072, vocab 8000): run-time bytes fp32 "
          f"{before['runtime_bytes'] / 2**20:.1f} MiB -> weight-only 4-bit "
          f"{after['runtime_bytes'] / 2**20:.1f} MiB; Linear modules "
          f"{linear_fp32 / 2**20:.1f} MiB -> {linear_4bit / 2**20:.1f} MiB")
    # 4-bit codes + an fp16 scale and offset per 128 weights: 4.25 bits a weight, vs 32.
    assert linear_4bit <= linear_fp32 * 4.25 / 32 * 1.01
    assert after["runtime_bytes"] < before["runtime_bytes"]
