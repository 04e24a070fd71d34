"""truncate.hidden on a tiny random BERT (hidden 32, 4 heads of 8, FFN 64, 2 layers): shapes after
the cut, what is kept, exactness at full width, save/load replay, export as a stock BertModel,
and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.graph import apply_edit, cut_tensors
from slimkit.methods import Hidden

pytest.importorskip("transformers")

from slimkit.export.encoder import plain_encoder  # noqa: E402
from slimkit.models import tiny_model  # noqa: E402
from slimkit.models.hf import attach_spec, tiny_config  # noqa: E402
from slimkit.nn.remapped_embedding import RemappedEmbedding  # noqa: E402
from slimkit.tasks.inputs import InputsTask  # noqa: E402

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32}


def _model(seed: int = 0) -> nn.Module:
    return tiny_model("bert", seed, **SIZES)


def _task(n: int = 3, loss_fn=None) -> InputsTask:
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        ids = torch.randint(3, 100, (4, 10), generator=gen)
        mask = torch.ones_like(ids)
        mask[-1, 7:] = 0
        batches.append((ids, mask))
    return InputsTask(batches, loss_fn=loss_fn)


def _cut(model: nn.Module, task: InputsTask | None = None, **fields) -> slimkit.Record:
    config = Hidden(**{"recover": "none", **fields})
    return slimkit.compress_(model, slimkit.Plan([config]),
                             slimkit.Context(task=task or _task()))[0]


def _out(model: nn.Module, task: InputsTask) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(*task.inputs(task.batches[0]))
    return out.last_hidden_state, out.pooler_output


def test_shapes_after_the_cut_and_what_the_step_reports() -> None:
    model, task = _model(), _task()
    rec = _cut(model, task, width=16, heads=2, ffn=32)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["embeddings.word_embeddings.weight"] == (100, 16)
    assert shapes["embeddings.position_embeddings.weight"] == (32, 16)
    assert shapes["embeddings.token_type_embeddings.weight"] == (2, 16)
    assert shapes["pooler.dense.weight"] == (16, 16)
    for i in range(2):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            assert shapes[p + f"attention.self.{part}.weight"] == (16, 16)
            assert shapes[p + f"attention.self.{part}.bias"] == (16,)
        assert shapes[p + "attention.output.dense.weight"] == (16, 16)
        assert shapes[p + "intermediate.dense.weight"] == (32, 16)
        assert shapes[p + "intermediate.dense.bias"] == (32,)
        assert shapes[p + "output.dense.weight"] == (16, 32)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            assert shapes[p + norm + ".weight"] == shapes[p + norm + ".bias"] == (16,)
            assert model.get_submodule(p + norm).normalized_shape == (16,)
        attn = model.encoder.layer[i].attention.self
        sizes = (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size)
        assert sizes == (2, 8, 16)
        assert model.encoder.layer[i].intermediate.dense.in_features == 16
    assert model.embeddings.word_embeddings.embedding_dim == 16
    hidden, pooled = _out(model, task)
    assert hidden.shape == (4, 10, 16) and pooled.shape == (4, 16)
    assert torch.isfinite(hidden).all()
    assert [e["op"] for e in rec.edits] == ["resize"]
    info = rec.info
    assert (info["hidden_before"], info["hidden_after"], info["heads_after"]) == (32, 16, 2)
    assert info["ffn_before"] == [64, 64] and info["ffn_after"] == [32, 32]
    assert all(len(h) == 2 and h == sorted(h) for h in info["heads_kept"])
    assert 0.5 <= info["hidden_importance_kept"] <= 1.0
    assert info["params_after"] < info["params_before"]


def test_defaults_follow_the_width() -> None:
    model = _model()
    rec = _cut(model, width=24)  # 3 heads of 8, FFN 64 * 24 / 32
    assert rec.info["heads_after"] == 3 and rec.info["ffn_after"] == [48, 48]
    assert model.encoder.layer[0].attention.self.query.weight.shape == (24, 24)


def test_the_dimensions_heads_and_neurons_with_the_most_energy_are_kept() -> None:
    model = _model()
    loud = [3, 7, 20, 29]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[loud] *= 10
        o = model.encoder.layer[0].attention.output.dense
        o.weight[:, 24:32] *= 10  # head 3 of layer 0 writes 10x more
        model.encoder.layer[1].output.dense.weight[:, [5, 40]] *= 10
    word = model.embeddings.word_embeddings.weight.detach().clone()
    rec = _cut(model, width=8, heads=1, ffn=8)
    # The kept columns are the loud ones among them, in their original order.
    kept = [int(c) for c in (word[:, None, :] == model.embeddings.word_embeddings.weight[
        :, :, None]).all(0).nonzero()[:, 1]]
    assert set(loud) <= set(kept) and kept == sorted(kept)
    assert rec.info["heads_kept"][0] == [3]
    assert rec.info["hidden_importance_kept"] > 0.9


def test_ffn_neurons_with_the_most_energy_are_kept() -> None:
    model = _model()
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[:, [5, 40]] *= 10
    up = model.encoder.layer[1].intermediate.dense.bias.detach().clone()
    _cut(model, width=32, heads=4, ffn=4)
    kept = model.encoder.layer[1].intermediate.dense.bias
    assert up[5] in kept and up[40] in kept


def test_full_width_keeps_outputs_identical() -> None:
    model, task = _model(), _task()
    before = _out(model, task)
    rec = _cut(model, task, width=32, heads=4, ffn=64)
    after = _out(model, task)
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert rec.info["hidden_importance_kept"] == 1.0
    # Fewer heads and neurons at full width: still runs, the width stays.
    model = _model()
    _cut(model, task, width=32, heads=2, ffn=16)
    assert _out(model, task)[0].shape == (4, 10, 32)


def test_save_and_load_replay_the_cut(tmp_path: Path) -> None:
    model, task = _model(), _task()
    _cut(model, task, width=16, heads=2, ffn=32)
    slimkit.save(model, tmp_path / "narrow")
    loaded = slimkit.load(tmp_path / "narrow").model
    for a, b in zip(_out(model, task), _out(loaded, task), strict=True):
        assert torch.equal(a, b)
    assert loaded.encoder.layer[1].attention.self.num_attention_heads == 2


def test_exports_as_a_stock_bert_model() -> None:
    model, task = _model(), _task()
    _cut(model, task, width=16, heads=2, ffn=32)
    plain, kept = plain_encoder(model)
    assert kept is None and type(plain).__name__ == "BertModel"
    c = plain.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size) == (16, 2, 32)
    for a, b in zip(_out(model, task), _out(plain, task), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # heads * head size != width: no BertConfig says that.
    model = _model()
    _cut(model, task, width=12, heads=1, ffn=32)
    assert _out(model, task)[0].shape == (4, 10, 12)
    with pytest.raises(SlimkitError, match="pruned attention heads"):
        plain_encoder(model)


def test_export_still_refuses_per_layer_differences() -> None:
    model = _model()
    _cut(model, width=16, heads=2, ffn=32)
    attn = model.encoder.layer[1].attention
    for name in ("query", "key", "value"):
        setattr(attn.self, name, nn.Linear(16, 8))
    attn.self.num_attention_heads, attn.self.all_head_size = 1, 8
    attn.output.dense = nn.Linear(8, 16)
    with pytest.raises(SlimkitError, match="pruned attention heads"):
        plain_encoder(model)


@pytest.mark.parametrize(("fields", "field"), [
    ({"width": 40}, "width"),  # wider than the model
    ({"width": 12}, "width"),  # not a multiple of the head size (8) without heads
    ({"width": 16, "heads": 5}, "heads"),
    ({"width": 16, "ffn": 65}, "ffn"),
    ({"width": 16, "layers": "encoder"}, "layers"),
    ({"width": 16, "embeddings": "pooler"}, "embeddings"),
    ({"width": 16, "recover": "distill", "epochs": 1.0}, "recover"),  # the output narrows
])
def test_bad_configs_name_the_field_in_one_line(fields: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cut(_model(), **fields)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_bad_values_fail_at_construction() -> None:
    for fields, field in [({"width": 0}, "width"), ({"width": 8, "heads": 0}, "heads"),
                          ({"width": 8, "ffn": 0}, "ffn"),
                          ({"width": 8, "calibration_batches": 0}, "calibration_batches")]:
        with pytest.raises(ConfigError, match=f"^{field}:"):
            Hidden(**fields)
    assert Hidden(width=8).requires() == frozenset({"data"})
    assert Hidden(width=8, recover="distill").requires() == frozenset({"data", "teacher"})


def test_a_pruned_vocabulary_must_come_after() -> None:
    model = _model()
    model.embeddings.word_embeddings = RemappedEmbedding.from_embedding(
        model.embeddings.word_embeddings, torch.arange(50), 1)
    with pytest.raises(ConfigError, match="before truncate.vocab") as info:
        _cut(model, width=16)
    assert info.value.field == "embeddings"


def test_a_task_head_on_the_hidden_state_is_refused() -> None:
    import transformers

    config = tiny_config("bert", **SIZES, num_labels=3)
    model = attach_spec(transformers.BertForSequenceClassification(config).eval())
    with pytest.raises(SlimkitError, match="classifier.weight"):
        _cut(model, width=16, embeddings="bert.embeddings", layers="bert.encoder.layer")


def test_finetune_recovery_trains_the_narrow_model() -> None:
    task = _task(loss_fn=lambda out, batch: out.last_hidden_state.pow(2).mean())
    model = _model()
    rec = slimkit.compress_(model, slimkit.Plan([Hidden(width=16, recover="finetune",
                                                        epochs=1.0, batch_size=4)]),
                            slimkit.Context(task=task))[0]
    assert rec.info["hidden_after"] == 16
    assert _out(model, task)[0].shape == (4, 10, 16)


def test_cut_tensors_logs_a_replayable_resize() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    rows = torch.tensor([0, 2, 5])
    edit = cut_tensors(model, {"0.weight": [(0, rows)], "0.bias": [(0, rows)],
                               "1.weight": [(0, rows)], "1.bias": [(0, rows)]},
                       {"0": {"out_features": 3}, "1": {"normalized_shape": (3,)}})
    assert edit["tensors"]["0.weight"] == [3, 4] and model[1].normalized_shape == (3,)
    assert model.__dict__["slimkit_edits"][-1] is edit
    fresh = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    apply_edit(fresh, edit)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(fresh(x), model(x)) and fresh[0].out_features == 3
    with pytest.raises(ValueError, match="in \\[0, 4\\)"):
        cut_tensors(model, {"0.weight": [(1, torch.tensor([4]))]}, {})
    assert model[0].weight.shape == (3, 4)  # refused before anything changed
