"""Binary / ternary weights: math against the papers' formulas, bit packing, the straight-through
estimator, the packed layers and the quantize.binary method on the tiny CTR models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import slimkit
from slimkit.export import artifact_bytes
from slimkit.methods.quantize.binary import BinaryWeights
from slimkit.nn.binary_linear import BinaryLinear, FakeSignLinear, TernaryLinear
from slimkit.nn.binary_math import (
    fake_quantize,
    pack_codes,
    signs,
    ste,
    ternarize,
    unpack_codes,
    xnor_scale,
)


def test_sign_maps_zero_to_plus_one() -> None:
    w = torch.tensor([[0.0, -0.0, 2.0, -3.0]])
    assert signs(w).tolist() == [[1.0, 1.0, 1.0, -1.0]]


def test_xnor_scale_is_mean_abs_per_row() -> None:
    w = torch.tensor([[1.0, -3.0, 0.0, 4.0], [0.5, 0.5, -0.5, -0.5]])
    assert torch.allclose(xnor_scale(w), torch.tensor([2.0, 0.5]))
    assert torch.allclose(fake_quantize(w, "xnor"),
                          torch.tensor([[2.0, -2.0, 2.0, 2.0], [0.5, 0.5, -0.5, -0.5]]))
    # BinaryConnect has no scale: plain +-1.
    assert torch.equal(fake_quantize(w, "binaryconnect").abs(), torch.ones(2, 4))


def test_ternary_threshold_and_scale_follow_twn() -> None:
    # mean|w| = (0.1 + 1 + 2 + 0.9) / 4 = 1.0 -> delta = 0.7: keeps 1, -2, 0.9 -> alpha = 1.3
    w = torch.tensor([[0.1, 1.0, -2.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    codes, alpha = ternarize(w)
    assert codes.tolist() == [[0.0, 1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    assert torch.allclose(alpha, torch.tensor([1.3, 0.0]))
    # A larger threshold factor keeps only the largest weight.
    codes, alpha = ternarize(w, factor=1.5)
    assert codes[0].tolist() == [0.0, 0.0, -1.0, 0.0] and alpha[0] == 2.0


@pytest.mark.parametrize("kind,bits", [("xnor", 1), ("ternary", 2)])
@pytest.mark.parametrize("cols", [1, 8, 13, 37])
def test_packing_round_trip(kind: str, bits: int, cols: int) -> None:
    low = -1 if kind == "ternary" else 0
    codes = torch.randint(low, 2, (5, cols)).float()
    if kind != "ternary":
        codes = codes * 2 - 1
    packed = pack_codes(codes, kind)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-cols * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


def test_ste_passes_gradient_inside_clip_only() -> None:
    latent = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    out = ste(latent, torch.sign(latent.detach()), clip=1.0)
    assert torch.equal(out.detach(), torch.sign(latent.detach()))
    out.sum().backward()
    assert latent.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_fake_sign_linear_trains_latent_and_clips() -> None:
    linear = nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight[0, 0] = 5.0
    fake = FakeSignLinear(linear, "xnor", 0.7, 1.0)
    fake(torch.randn(2, 4)).sum().backward()
    assert linear.weight.grad[0, 0] == 0.0 and linear.weight.grad[1].abs().sum() > 0
    fake.clip_latent()
    assert linear.weight.abs().max() <= 1.0


@pytest.mark.parametrize("cls,kind", [(BinaryLinear, "xnor"), (TernaryLinear, "ternary")])
def test_packed_linear_matches_fake_quantized_float(cls, kind) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(21, 7)
    q = cls.from_linear(linear, kind)
    x = torch.randn(4, 21)
    ref = F.linear(x, fake_quantize(linear.weight, kind), linear.bias)
    assert torch.allclose(q(x), ref, atol=1e-6)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == 7 * (-(-21 * cls.bits // 8))
    # Rebuilt from spec + state dict, and deep-copied: bit-identical.
    again = cls(**q.spec())
    again.load_state_dict(q.state_dict())
    assert torch.equal(again(x), q(x)) and torch.equal(copy.deepcopy(q)(x), q(x))
    # Loading other weights drops the cached dense weight.
    other = cls.from_linear(nn.Linear(21, 7), kind)
    again.load_state_dict(other.state_dict())
    assert torch.equal(again(x), other(x))


def test_cache_built_in_inference_mode_still_serves_autograd() -> None:
    q = BinaryLinear.from_linear(nn.Linear(8, 4), "xnor", cache=True)
    with torch.inference_mode():
        q(torch.randn(2, 8))
    x = torch.randn(2, 8, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("kind", ["binaryconnect", "xnor", "ternary"])
def test_method_round_trip_on_tiny_models(kind, make_model, tiny_task, model_kind,
                                          tmp_path) -> None:
    model = make_model(model_kind)
    ctx = slimkit.Context(task=tiny_task)
    records = slimkit.compress_(model, slimkit.Plan(steps=(BinaryWeights(kind=kind),)), ctx)
    info = records[0].info
    assert "head" in info["skipped_small"] and isinstance(model.head, nn.Linear)
    assert info["quantized"] and all(
        isinstance(model.get_submodule(n), TernaryLinear if kind == "ternary" else BinaryLinear)
        for n in info["quantized"])
    x = tiny_task.example_inputs(16)
    with torch.inference_mode():
        out = model(*x)
    path = slimkit.save(model, tmp_path / "m")
    assert artifact_bytes(path) < artifact_bytes(slimkit.save(make_model(model_kind),
                                                              tmp_path / "base"))
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path).model(*x), out)


def test_recovery_training_converts_and_keeps_scale_one_for_binaryconnect(make_model,
                                                                          tiny_task) -> None:
    model = make_model("deepfm")
    config = BinaryWeights(kind="binaryconnect", epochs=0.25, batch_size=256)
    records = slimkit.compress_(model, slimkit.Plan(steps=(config,)),
                                slimkit.Context(task=tiny_task))
    assert not any(isinstance(m, FakeSignLinear) for m in model.modules())
    layer = model.get_submodule(records[0].info["quantized"][0])
    assert isinstance(layer, BinaryLinear)
    assert torch.equal(layer.scale, torch.ones_like(layer.scale))
    assert "final_loss" in records[0].info
    assert torch.isfinite(model(*tiny_task.example_inputs(8))).all()


@pytest.mark.parametrize("data", [{"kind": "binary"}, {"threshold": 0.0}, {"clip": -1.0},
                                  {"min_features": 0}, {"epochs": -1.0}])
def test_bad_values_raise_config_error(data) -> None:
    with pytest.raises(slimkit.ConfigError):
        BinaryWeights.from_dict({"method": "quantize.binary", **data})
