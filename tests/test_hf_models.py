"""Hugging Face transformers models as slimkit models: artifact round trip, refused builders,
ONNX export and parity, on tiny configs (the real MiniLM behind the slow marker)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import slimkit  # noqa: E402
from slimkit.export.artifact import build_model  # noqa: E402
from slimkit.export.onnx import check_parity, export_onnx  # noqa: E402
from slimkit.export.runtime import OrtSession  # noqa: E402
from slimkit.models import (  # noqa: E402
    ARCHS,
    attach_spec,
    example_inputs,
    first_tensor,
    tiny_model,
)

# hidden 48, 4 heads of 12 (qwen2: 2 key/value heads), 2 layers: each model builds in ~0.1 s.
SMALL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 96, "vocab_size": 300}
CLASSES = {"bert": "BertModel", "gpt2": "GPT2Model", "llama": "LlamaForCausalLM",
           "qwen2": "Qwen2ForCausalLM"}


def small(arch: str, seed: int = 0) -> torch.nn.Module:
    return tiny_model(arch, seed, **SMALL)


@pytest.fixture(params=sorted(ARCHS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def test_tiny_model_is_seeded_and_leaves_global_rng_alone(arch: str) -> None:
    state = torch.random.get_rng_state()
    a, b, c = small(arch, 0), small(arch, 0), small(arch, 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.training
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in
               zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_default_sizes_are_distinct_and_qwen2_is_gqa() -> None:
    from slimkit.models import tiny_config

    cfg = tiny_config("qwen2")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert len({cfg.hidden_size, cfg.num_attention_heads, head_dim}) == 3
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (8, 2)
    assert tiny_config("gpt2").n_embd == 256 and not tiny_config("bert").use_cache


def test_save_load_round_trip_is_exact(arch: str, tmp_path: Path) -> None:
    model = small(arch)
    inputs = example_inputs(model, batch=3, seq=12)
    slimkit.save(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["model"]["builder"] == f"transformers:{CLASSES[arch]}"
    loaded = slimkit.load(tmp_path / "m").model
    assert type(loaded) is type(model) and not loaded.training
    with torch.inference_mode():
        assert torch.equal(first_tensor(loaded(*inputs)), first_tensor(model(*inputs)))
    if arch == "llama":  # tied lm_head must stay tied after the strict load
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    if arch == "qwen2":
        assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight


def test_round_trip_keeps_half_precision(tmp_path: Path) -> None:
    # Built as from_pretrained(dtype=bfloat16) builds it: weights bf16, rotary tables fp32. (A
    # model cast with .to() has bf16 rotary tables, which are not saved: its reload agrees to
    # bf16 rounding only.)
    fp32 = small("llama")
    model = type(fp32)._from_config(fp32.config, dtype=torch.bfloat16).eval()
    model.load_state_dict(fp32.state_dict())
    attach_spec(model)  # the spec records the weights' dtype
    assert model.slimkit_spec["kwargs"]["config"]["dtype"] == "bfloat16"
    slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m").model
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = example_inputs(model)
    with torch.inference_mode():
        assert torch.equal(loaded(*ids).logits, model(*ids).logits)


def test_logged_edits_replay_on_a_transformers_model(tmp_path: Path) -> None:
    model = small("qwen2")
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.DynamicInt8(),)),
                      slimkit.Context(task=None, seed=0))
    assert model.slimkit_edits  # every Linear was swapped for an int8 module
    slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m").model
    inputs = example_inputs(model)
    with torch.inference_mode():
        assert torch.equal(loaded(*inputs).logits, model(*inputs).logits)


@pytest.mark.parametrize("builder", [
    "transformers:PreTrainedModel",        # the abstract base has no config class
    "transformers:AutoTokenizer",          # a transformers class, but not a model
    "transformers:AutoModel",              # a factory that could read files or the hub
    "transformers:PreTrainedModel.__init__",
    "transformers.utils:something",        # only the top-level namespace is accepted
    "transformers.models.bert:BertModel",
    "os:system",
])
def test_other_builders_are_refused(builder: str) -> None:
    manifest = {"model": {"builder": builder, "kwargs": {"config": {}}}, "edits": []}
    with pytest.raises(slimkit.ArtifactError):
        build_model(manifest)


@pytest.mark.parametrize("change", [
    {"attn_implementation": "kernels-community/flash-attn"},
    {"extra": 1},
    {"config": "not a dict"},
])
def test_bad_transformers_kwargs_are_refused(change: dict) -> None:
    spec = copy.deepcopy(small("bert").slimkit_spec)
    spec["kwargs"].update(change)
    with pytest.raises(slimkit.ArtifactError):
        build_model({"model": spec, "edits": []})


def test_config_with_quantizer_or_bad_dtype_is_refused() -> None:
    for key, value in (("quantization_config", {"quant_method": "bitsandbytes"}),
                       ("dtype", "Tensor"), ("num_attention_heads", "many")):
        spec = copy.deepcopy(small("bert").slimkit_spec)
        spec["kwargs"]["config"][key] = value
        with pytest.raises(slimkit.ArtifactError):
            build_model({"model": spec, "edits": []})


def test_first_tensor_picks_the_main_output() -> None:
    bert, llama = small("bert"), small("llama")
    with torch.inference_mode():
        out_b, out_l = bert(*example_inputs(bert)), llama(*example_inputs(llama))
    assert first_tensor(out_b) is out_b.last_hidden_state
    assert first_tensor(out_l) is out_l.logits
    assert first_tensor((out_l.logits,)) is out_l.logits
    with pytest.raises(TypeError):
        first_tensor({"loss": None})


def test_example_inputs_fit_the_forward_signature() -> None:
    assert len(example_inputs(small("gpt2"))) == 1  # GPT2Model's 2nd argument is the cache
    ids, mask = example_inputs(small("bert"), batch=2, seq=8)
    assert ids.shape == mask.shape == (2, 8) and mask[-1, -1] == 0 and mask[0].all()


def test_onnx_export_and_parity(arch: str, tmp_path: Path) -> None:
    model = small(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attn = model.config._attn_implementation
    path = export_onnx(model, example_inputs(model, batch=2, seq=8), tmp_path / "m.onnx")
    # The user's model is untouched: same attention kernel, same weights.
    assert model.config._attn_implementation == attn
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Batch and sequence axes are dynamic: parity on a different shape than the traced one.
    for batch, seq in ((2, 8), (3, 21)):
        inputs = example_inputs(model, batch=batch, seq=seq, seed=batch)
        parity = check_parity(model, path, inputs)
        assert parity.passed, (arch, batch, seq, parity)
        assert parity.cosine > 0.99999
    with torch.inference_mode():
        expected = first_tensor(model(*inputs))
    assert OrtSession(path)(*inputs).shape == expected.shape


@pytest.mark.slow
def test_minilm_round_trip_and_embeddings(tmp_path: Path) -> None:
    from transformers import AutoModel

    from slimkit.models import encode, load_minilm, minilm_path, minilm_tokenizer

    model, tokenizer = load_minilm(), minilm_tokenizer()
    assert model.slimkit_spec["builder"] == "transformers:BertModel"
    texts = ["A man is playing a guitar.", "Someone plays an instrument.",
             "The stock market fell sharply today.", "short", ""]
    slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m").model
    emb = encode(model, tokenizer, texts, batch_size=2)
    assert torch.equal(encode(loaded, tokenizer, texts, batch_size=2), emb)
    # Reference: sentence-transformers' recipe written out independently, eager attention.
    ref_model = AutoModel.from_pretrained(minilm_path(), local_files_only=True,
                                          attn_implementation="eager").eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = ref_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
    assert emb.shape == (5, 384)
    assert (emb - ref).abs().max() < 1e-5
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # paraphrase closer than an unrelated sentence
    parity = check_parity(model, export_onnx(model, (batch["input_ids"],
                                                     batch["attention_mask"]),
                                             tmp_path / "m.onnx"),
                          (batch["input_ids"], batch["attention_mask"]))
    assert parity.passed, parity
