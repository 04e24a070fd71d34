"""Causal-LM export to ONNX with a key/value cache: ONNX Runtime's prefill and token-by-token
decode match torch, WeightOnlyLinear runs as MatMulNBits, layers the kernel cannot take fall back.

Tolerance: both runtimes compute in fp32 with their own accumulation order, so neither is exact.
The reference is the same model in float64 (weights de-quantized exactly as torch does); ONNX
Runtime passes when its error against that reference is at most TOLERANCE_FACTOR times torch's
own fp32 error (plus a floor of a few fp32 ulps of the logits for an error that is 0 by luck).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from slimkit.export.lm_onnx import export_causal_lm  # noqa: E402
from slimkit.export.lm_onnx_runtime import OrtCausalLM  # noqa: E402
from slimkit.graph import set_submodule  # noqa: E402
from slimkit.nn.groupwise import quantize_groups  # noqa: E402
from slimkit.nn.lowbit_linear import WeightOnlyLinear  # noqa: E402

try:  # quantized tables arrived after this exporter; their tests skip without them
    from slimkit.nn import lowbit_embedding
    from slimkit.nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding
except ImportError:
    lowbit_embedding = None

TOLERANCE_FACTOR = 8.0
PROMPT, DECODE = 10, 3
LAYERS = 2
PROJECTIONS = 7  # q, k, v, o, gate, up, down


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True,
        max_position_embeddings=64, attn_implementation="eager")
    return transformers.LlamaForCausalLM(config).eval()


def quantize(model: nn.Module, bits: int, symmetric: bool, awq: bool,
             group_size: int = 32, odd: dict[str, int] | None = None) -> nn.Module:
    """Every decoder Linear as WeightOnlyLinear (the tied head stays); `odd` gives some layers
    another group size."""
    generator = torch.Generator().manual_seed(1)
    for name, linear in list(model.named_modules()):
        if not isinstance(linear, nn.Linear) or name == "lm_head":
            continue
        group = (odd or {}).get(name, group_size)
        scale = torch.rand(linear.in_features, generator=generator) + 0.5 if awq else None
        weight = linear.weight if scale is None else linear.weight * scale
        codes, s, offset = quantize_groups(weight, bits, group, symmetric)
        set_submodule(model, name, WeightOnlyLinear.from_codes(
            linear, codes, s, offset, bits=bits, group_size=group, input_scale=scale))
    return model


def quantize_table(model: nn.Module, bits: int, symmetric: bool, group_size: int = 16
                   ) -> nn.Module:
    """The tied embedding as WeightOnlyEmbedding and the head as a TiedLowBitHead over it."""
    table = WeightOnlyEmbedding.from_embedding(model.model.embed_tokens, bits=bits,
                                               group_size=group_size, symmetric=symmetric)
    model.model.embed_tokens = table
    model.lm_head = TiedLowBitHead.tied_to(table)
    return model


def float64_reference(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    if lowbit_embedding and isinstance(ref.model.embed_tokens,
                                       lowbit_embedding.WeightOnlyEmbedding):
        with torch.no_grad():
            table = nn.Embedding.from_pretrained(ref.model.embed_tokens.dequantized_weight())
        ref.model.embed_tokens = table
        ref.lm_head = nn.Linear(table.embedding_dim, table.num_embeddings, bias=False)
        ref.lm_head.weight = table.weight
    for name, module in list(ref.named_modules()):
        if isinstance(module, WeightOnlyLinear):
            dense = nn.Linear(module.in_features, module.out_features, module.bias is not None)
            with torch.no_grad():
                dense.weight.copy_(module.dequantized_weight())
            set_submodule(ref, name, dense)
    return ref.double()


def ort_logits(path, ids: torch.Tensor) -> list[np.ndarray]:
    """Prefill of the first PROMPT tokens, then one decode step per further token."""
    session = OrtCausalLM(path, threads=1)
    mask = np.ones((1, PROMPT), np.int64)
    logits, cache = session.step(ids[:, :PROMPT].numpy(), mask, session.empty_cache(1))
    out = [logits]
    for t in range(PROMPT, ids.shape[1]):
        mask = np.ones((1, t + 1), np.int64)
        logits, cache = session.step(ids[:, t:t + 1].numpy(), mask, cache)
        out.append(logits)
    return out


def check_parity(model: nn.Module, path) -> float:
    """Prefill and each decode step against torch's full-sequence forward (no cache)."""
    ids = torch.randint(0, 256, (1, PROMPT + DECODE), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch32 = model(ids).logits[0].double()
        exact = float64_reference(model)(ids).logits[0]
    ort = torch.from_numpy(np.concatenate(ort_logits(path, ids), axis=1)[0]).double()
    torch_err = float((torch32 - exact).abs().max())
    ort_err = float((ort - exact).abs().max())
    floor = 4 * float(np.finfo(np.float32).eps) * float(exact.abs().max())
    assert ort_err <= TOLERANCE_FACTOR * torch_err + floor, (ort_err, torch_err)
    return ort_err


def op_count(path, op_type: str) -> int:
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(str(path)).graph.node)


def test_float_model_matches_and_stores_the_tied_table_once(tmp_path):
    model = tiny_llama()
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0)
    check_parity(model, path)
    import onnx

    tables = [i for i in onnx.load(str(path)).graph.initializer if list(i.dims) == [256, 64]]
    assert len(tables) == 1 and op_count(path, "MatMulNBits") == 0


@pytest.mark.parametrize("bits,symmetric,awq", [(4, True, False), (4, False, True),
                                                (8, True, True), (8, False, False),
                                                (3, True, False), (3, False, True),
                                                (2, True, True), (2, False, False)])
def test_weight_only_layers_run_as_matmul_nbits(tmp_path, bits, symmetric, awq):
    """2 and 3 bits run as 4-bit codes of the same values: parity shows the shift is exact."""
    model = quantize(tiny_llama(), bits, symmetric, awq)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0)
    assert op_count(path, "MatMulNBits") == LAYERS * PROJECTIONS
    check_parity(model, path)


def test_group_size_the_kernel_cannot_take_falls_back_to_dense(tmp_path):
    odd = {"model.layers.0.mlp.down_proj": 24, "model.layers.1.self_attn.o_proj": 8}
    model = quantize(tiny_llama(), 4, False, False, odd=odd)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0)
    assert op_count(path, "MatMulNBits") == LAYERS * PROJECTIONS - len(odd)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert "l0.mlp.down_proj: group size 24" in meta["slimkit.fallbacks"]
    assert "l1.attn.o_proj: group size 8" in meta["slimkit.fallbacks"]
    check_parity(model, path)


def test_int8_activation_kernel_stays_close(tmp_path):
    """accuracy_level 4 rounds activations to int8 per block of 32 (step max|x| / 127), a
    relative error of up to 0.4% per product: logits stay within a few percent."""
    model = quantize(tiny_llama(), 4, True, False)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=4)
    ids = torch.randint(0, 256, (1, PROMPT + DECODE), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits[0]
    ort = torch.from_numpy(np.concatenate(ort_logits(path, ids), axis=1)[0])
    relative = float((ort - ref).norm() / ref.norm())
    assert relative < 0.02, relative


def test_left_padded_batch_matches_torch(tmp_path):
    model = tiny_llama()
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0, logits="last")
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    session = OrtCausalLM(path, threads=1)
    logits, _ = session.step(ids.numpy(), mask.numpy(), session.empty_cache(2))
    assert logits.shape == (2, 1, 256)
    np.testing.assert_allclose(logits[:, 0], ref.numpy(), atol=1e-4, rtol=1e-4)


def test_greedy_decoding_agrees_with_torch(tmp_path):
    model = quantize(tiny_llama(), 4, False, True)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0, logits="last")
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(4))
    tokens = OrtCausalLM(path, threads=1).greedy(ids.numpy(), 5)
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert tokens.tolist() == seq[:, 8:].tolist()


needs_tables = pytest.mark.skipif(lowbit_embedding is None,
                                  reason="slimkit.nn.lowbit_embedding not present")


@needs_tables
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (3, True),
                                             (2, False)])
def test_quantized_tied_table_is_one_initializer_for_lookup_and_head(tmp_path, bits, symmetric):
    import onnx

    model = quantize_table(quantize(tiny_llama(), 4, True, False), bits, symmetric)
    path = export_causal_lm(model, tmp_path / "lm.onnx", accuracy_level=0)
    nodes = onnx.load(str(path)).graph.node
    gather = [n for n in nodes if n.op_type == "GatherBlockQuantized"]
    head = [n for n in nodes if n.op_type == "MatMulNBits" and n.output[0].startswith("lm_head")]
    assert len(gather) == 1 and len(head) == 1 and gather[0].input[0] == head[0].input[1]
    assert op_count(path, "MatMulNBits") == LAYERS * PROJECTIONS + 1
    check_parity(model, path)
