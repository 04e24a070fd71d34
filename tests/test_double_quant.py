"""Double-quantized group parameters (nn/double_quant.py, nn/group_params.py): the error bound the
docstring derives, exact storage size, save/load, GPTQ against quantized parameters, ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.layerwise import HessianAccumulator
from slimkit.methods.quantize.gptq import gptq_quantize_dq, hessian_error
from slimkit.nn.double_quant import double_quantize, quantize_groups_dq
from slimkit.nn.groupwise import (
    dequantize_groups,
    grouped,
    pack_codes,
    packed_width,
    unpack_codes,
)
from slimkit.nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding
from slimkit.nn.lowbit_linear import WeightOnlyLinear


def _weight(rows: int = 48, cols: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[:, :7] *= 8.0  # outlier columns: the groups' scales differ widely within a row
    w[3] = 0.0  # a pruned row: constant groups
    return w


def _group_error(w: torch.Tensor, approx: torch.Tensor, group: int) -> tuple[torch.Tensor, ...]:
    diff = grouped(w - approx, group)
    return diff.abs().amax(dim=2), diff.pow(2).mean(dim=2).sqrt()


def test_six_bit_codes_pack_four_in_three_bytes() -> None:
    codes = torch.randint(0, 64, (5, 37), dtype=torch.uint8)
    assert packed_width(37, 6) == 30 and packed_width(36, 6) == 27
    assert pack_codes(codes, 6).shape == (5, 30)
    assert torch.equal(unpack_codes(pack_codes(codes, 6), 6, 37), codes)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("param_bits", [6, 8])
@pytest.mark.parametrize("bits,group", [(4, 32), (3, 64), (2, 48)])
def test_error_stays_within_the_derived_bound(symmetric, param_bits, bits, group) -> None:
    """Coverage choice: |w - w^| <= s'/2 with s' <= span/maxq + step_o/maxq + step_s, where span
    is hi - lo (asymmetric) or 2 max|w| (symmetric). The searched choice's RMS per group is at most
    the coverage choice's, hence within the same bound."""
    w = _weight()
    maxq = (1 << bits) - 1
    g = grouped(w, group)
    span = 2 * g.abs().amax(dim=2) if symmetric else g.amax(dim=2) - g.amin(dim=2)
    plain = torch.where(span > 0, span / maxq, torch.ones_like(span))
    results = {}
    for search in (False, True):
        codes, dq = quantize_groups_dq(w, bits, group, symmetric, param_bits, search=search)
        assert int(dq.scale_codes.min()) >= 1 and int(dq.scale_codes.max()) < 1 << param_bits
        approx = dequantize_groups(codes, dq.scale(), dq.offset(), bits, group)
        excess = dq.scale_step.float()[:, None].expand_as(plain).clone()
        if not symmetric:
            excess += dq.offset_step.float()[:, None] / maxq
        bound = plain + excess
        results[search] = _group_error(w, approx, group)
        if not search:
            assert (dq.scale() <= bound * (1 + 1e-6)).all()
            assert (results[search][0] <= dq.scale() / 2 * (1 + 1e-5)).all()
        assert (results[search][1] <= bound / 2 * (1 + 1e-5)).all()
    assert (results[True][1] <= results[False][1] * (1 + 1e-5) + 1e-9).all()


def test_exact_bits_per_weight() -> None:
    """576 inputs, group 32: 18 groups; 4-bit codes (288 B), 36 six-bit codes (27 B) and three
    fp16 row values (6 B) per row = 321 B = 4.458 bits per weight (5.0 with fp16 params)."""
    linear = nn.Linear(576, 10, bias=False)
    new = WeightOnlyLinear.from_linear(linear, bits=4, group_size=32, param_bits=6)
    assert new.stored_bytes() == 10 * 321
    assert 8 * new.stored_bytes() / linear.weight.numel() == pytest.approx(4.4583, abs=1e-4)
    sym = WeightOnlyLinear.from_linear(linear, bits=4, group_size=32, symmetric=True,
                                       param_bits=8)
    assert sym.stored_bytes() == 10 * (288 + 18 + 2)
    plain = WeightOnlyLinear.from_linear(linear, bits=4, group_size=32)
    assert plain.stored_bytes() == 10 * (288 + 2 * 18 * 2)
    assert sorted(plain.state_dict()) == ["offset", "qweight", "scale"]


class _LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(300, 64)
        self.proj = nn.Linear(64, 64)
        self.head = nn.Linear(64, 300, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.emb(ids))))


def test_rtn_step_saves_and_loads_identically(tmp_path) -> None:
    torch.manual_seed(0)
    model = _LM().eval()
    ids = torch.arange(0, 294, 7).reshape(2, -1)
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [{
        "method": "quantize.weight_only", "bits": 4, "group_size": 16, "param_bits": 6,
        "embedding_bits": 4}]})
    slimkit.compress_(model, plan, slimkit.Context())
    assert model.proj.param_bits == 6 and model.emb.param_bits == 6
    assert isinstance(model.head, TiedLowBitHead) and model.head.is_tied_to(model.emb)
    expected = model(ids)
    path = slimkit.save(model, tmp_path / "dq")
    loaded = slimkit.load(path, model=_LM()).model
    assert isinstance(loaded.emb, WeightOnlyEmbedding) and loaded.head.is_tied_to(loaded.emb)
    assert torch.equal(loaded(ids), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_gptq_against_quantized_params_beats_rtn() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2048, 16, generator=g) @ torch.randn(16, 256, generator=g)
    x = base + 0.1 * torch.randn(2048, 256, generator=g)
    acc = HessianAccumulator(256)
    acc.add(x)
    h = acc.hessian
    w = torch.randn(64, 256, generator=g)
    for act_order in (False, True):
        codes, dq = gptq_quantize_dq(w, h, bits=4, group_size=32, symmetric=False,
                                     param_bits=6, act_order=act_order)
        assert torch.equal(dq.scale_codes, double_quantize(w, 4, 32, False, 6).scale_codes)
        gptq = dequantize_groups(codes, dq.scale(), dq.offset(), 4, 32)
        rtn_codes, rtn_dq = quantize_groups_dq(w, 4, 32, False, 6)
        rtn = dequantize_groups(rtn_codes, rtn_dq.scale(), rtn_dq.offset(), 4, 32)
        assert hessian_error(w, gptq, h) < 0.6 * hessian_error(w, rtn, h)


def test_onnx_export_matches_with_double_quantized_layers(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    lm_onnx = pytest.importorskip("test_lm_onnx")
    from slimkit.export.lm_onnx import export_causal_lm
    from slimkit.graph import set_submodule

    model = lm_onnx.tiny_llama()
    for name, linear in list(model.named_modules()):
        if isinstance(linear, nn.Linear) and name != "lm_head":
            set_submodule(model, name, WeightOnlyLinear.from_linear(
                linear, bits=4, group_size=32, symmetric=name.endswith("v_proj"),
                param_bits=6))
    table = WeightOnlyEmbedding.from_embedding(model.model.embed_tokens, bits=4, group_size=16,
                                               param_bits=6)
    model.model.embed_tokens = table
    model.lm_head = TiedLowBitHead.tied_to(table)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0)
    assert lm_onnx.op_count(path, "MatMulNBits") == lm_onnx.LAYERS * lm_onnx.PROJECTIONS + 1
    lm_onnx.check_parity(model, path)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_packing_a_block_of_rows_at_a_time_gives_the_same_bytes(monkeypatch, bits) -> None:
    from slimkit.nn import rowwise

    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (37, 45), generator=g, dtype=torch.uint8)
    whole = pack_codes(codes, bits)
    monkeypatch.setattr(rowwise, "PACK_ELEMENTS", 100)  # blocks of 2 rows, the last one short
    assert torch.equal(pack_codes(codes, bits), whole)
    assert torch.equal(unpack_codes(whole, bits, 45), codes)
