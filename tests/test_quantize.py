"""Quantization math: INT8 within half a step, packing round trips, int8 kernels, bag lookups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.nn.int8_linear import DynamicInt8Linear, quantize_weight_int8
from slimkit.nn.quantized_embedding import QuantizedEmbedding
from slimkit.nn.rowwise import dequantize, pack, quantize_rows, unpack


def test_int8_weight_round_trip_within_half_a_step() -> None:
    w = torch.randn(32, 48) * torch.rand(32, 1) * 5
    q, scale = quantize_weight_int8(w, per_channel=True)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127


def test_per_tensor_scale_is_shared() -> None:
    _, scale = quantize_weight_int8(torch.randn(8, 8), per_channel=False)
    assert torch.all(scale == scale[0])


def test_dynamic_int8_linear_runs_int8_kernel_close_to_float() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = DynamicInt8Linear.from_linear(linear)
    x = torch.randn(128, 64)
    ref = linear(x)
    out = q(x)
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.02
    assert q.state_dict()["weight"].dtype == torch.int8
    # Rebuilt from its spec and state dict, it gives bit-identical outputs.
    again = DynamicInt8Linear(**q.spec())
    again.load_state_dict(q.state_dict())
    assert torch.equal(again(x), out)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_rowwise_quantization_within_half_a_step(bits: int) -> None:
    w = torch.randn(50, 13) * 3 + torch.randn(50, 1)
    codes, scale, offset = quantize_rows(w, bits)
    assert int(codes.max()) <= (1 << bits) - 1
    err = (dequantize(codes, scale, offset) - w).abs()
    assert (err <= scale.float()[:, None] / 2 + 1e-4).all()


@pytest.mark.parametrize("bits", [4, 2])
def test_sub_byte_packing_round_trip(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (7, 13), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (7, -(-13 * bits // 8))
    assert torch.equal(unpack(packed, bits, 13), codes)
    # Low nibble first: value 0x0F in column 0 and 0x01 in column 1 -> byte 0x1F.
    if bits == 4:
        assert int(pack(torch.tensor([[15, 1]], dtype=torch.uint8), 4)[0, 0]) == 0x1F


@pytest.mark.parametrize("dim", [8, 5, 6, 3])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fused_kernel_lookup_matches_dequantized_table(bits: int, dim: int) -> None:
    table = nn.Embedding(30, dim)
    q = QuantizedEmbedding.from_float(table, bits)
    idx = torch.randint(0, 30, (5, 4))
    ref = nn.functional.embedding(idx, q.dequantized_weight())
    assert q(idx).shape == (5, 4, dim)
    assert torch.allclose(q(idx), ref, atol=1e-6)
    assert q.packed.numel() == 30 * -(-dim * bits // 8)  # sub-byte codes really packed


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize(("bits", "dim"), [(8, 6), (4, 6), (4, 5), (2, 6), (2, 7)])
def test_quantized_bag_matches_embedding_bag_with_padding(mode: str, bits: int, dim: int) -> None:
    bag = nn.EmbeddingBag(20, dim, mode=mode, padding_idx=0)
    q = QuantizedEmbedding.from_float(bag, bits)
    idx = torch.tensor([[3, 5, 0], [0, 0, 0], [7, 7, 2]])
    ref = nn.functional.embedding_bag(idx, q.dequantized_weight(), mode=mode, padding_idx=0)
    assert torch.allclose(q(idx), ref, atol=1e-6)
    if bits == 8:  # and INT8 stays close to the float table itself
        assert torch.allclose(q(idx), bag(idx), atol=0.02)
