"""GPTQ math: equals rounding when the Hessian is uniform-diagonal, beats it on correlated inputs,
handles dead inputs, and its lazy block updates do not change the result."""

from __future__ import annotations

import pytest
import torch

from slimkit.methods.layerwise import HessianAccumulator
from slimkit.methods.quantize.gptq import gptq_quantize, hessian_error
from slimkit.nn.groupwise import dequantize_groups, quantize_groups


def _correlated_inputs(rows: int = 2048, features: int = 256, rank: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(rows, rank, generator=g) @ torch.randn(rank, features, generator=g)
    x = base + 0.1 * torch.randn(rows, features, generator=g)
    x[:, :3] *= 20.0  # and a few outlier channels
    return x


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[1])
    for chunk in x.split(300):  # uneven chunks: the running mean must still be exact
        acc.add(chunk)
    return acc.hessian


def test_hessian_accumulator_is_two_x_t_x_over_n() -> None:
    x = torch.randn(1000, 12)
    expected = 2.0 * x.double().T @ x.double() / 1000
    assert torch.allclose(_hessian(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, False), (3, -1, True), (2, 20, False)])
def test_uniform_diagonal_hessian_gives_round_to_nearest(bits, group, symmetric,
                                                         act_order) -> None:
    w = torch.randn(16, 70)
    codes, scale, offset = gptq_quantize(w, 3.0 * torch.eye(70), bits=bits, group_size=group,
                                         symmetric=symmetric, act_order=act_order, block_size=32)
    rtn_codes, rtn_scale, rtn_offset = quantize_groups(w, bits, group, symmetric)
    assert torch.equal(codes, rtn_codes) and torch.equal(scale, rtn_scale)
    assert (offset is None and rtn_offset is None) or torch.equal(offset, rtn_offset)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int, act_order: bool) -> None:
    x = _correlated_inputs()
    h = _hessian(x)
    w = torch.randn(64, 256)
    rtn = dequantize_groups(*quantize_groups(w, bits, 64, False), bits, 64)
    gptq = dequantize_groups(*gptq_quantize(w, h, bits=bits, group_size=64, symmetric=False,
                                            act_order=act_order), bits, 64)
    err_rtn, err_gptq = hessian_error(w, rtn, h), hessian_error(w, gptq, h)
    assert err_gptq < 0.6 * err_rtn
    # The Hessian error is the relative output error on the calibration rows.
    ref = x @ w.T
    direct = float((x @ gptq.T - ref).pow(2).sum() / ref.pow(2).sum())
    assert direct == pytest.approx(err_gptq, rel=1e-3)


def test_dead_inputs_keep_rounded_weights_and_stay_finite() -> None:
    x = _correlated_inputs(features=64)
    x[:, [5, 40]] = 0.0  # never active on the calibration data
    w = torch.randn(8, 64)
    codes, scale, offset = gptq_quantize(w, _hessian(x), bits=4, group_size=-1, symmetric=False)
    approx = dequantize_groups(codes, scale, offset, 4, -1)
    assert torch.isfinite(approx).all()
    # Dead columns are rounded, not zeroed: a later input on them still sees its weight.
    step = scale.float()[:, 0]
    for col in (5, 40):
        assert ((approx[:, col] - w[:, col]).abs() <= step / 2 + 1e-5).all()


def test_lazy_block_updates_do_not_change_the_result() -> None:
    x = _correlated_inputs(features=96)
    h = _hessian(x)
    w = torch.randn(16, 96)
    results = [dequantize_groups(*gptq_quantize(w, h, bits=4, group_size=32, symmetric=False,
                                                block_size=b), 4, 32) for b in (1, 32, 96)]
    for other in results[1:]:
        # Float reassociation may flip a rare tie; the weights must agree almost everywhere.
        assert (torch.isclose(results[0], other, atol=1e-4)).float().mean() > 0.99


def test_singular_hessian_is_dampened_not_fatal() -> None:
    x = torch.randn(4, 32)  # 4 rows for 32 features: rank 4
    w = torch.randn(8, 32)
    codes, *_ = gptq_quantize(w, _hessian(x), bits=3, group_size=-1, symmetric=True)
    assert codes.shape == (8, 32) and int(codes.max()) <= 7
