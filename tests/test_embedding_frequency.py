"""quantize.embedding_frequency: per-row widths by access count under an all-bytes budget, the
shared default row, bag semantics, artifact and ONNX round trips, plan YAML, option errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import slimkit
from slimkit.core.context import Context
from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.eval.sensitivity import module_bytes
from slimkit.methods.quantize.embedding_frequency import (
    EmbeddingFrequency,
    apply_embedding_frequency,
    fisher_columns,
)
from slimkit.methods.row_reads import count_row_reads
from slimkit.nn.frequency_embedding import FrequencyEmbedding, NarrowEmbedding
from slimkit.tasks.ctr import CTRTask

TABLES = (nn.Embedding, nn.EmbeddingBag, FrequencyEmbedding, NarrowEmbedding)


@pytest.fixture(scope="module")
def task() -> CTRTask:
    return CTRTask.synthetic(n_rows=3000, cardinalities=(400, 60, 5), bag_cardinality=20,
                             bag_len=3, seed=0)


@pytest.fixture(scope="module")
def model(task: CTRTask) -> nn.Module:
    torch.manual_seed(0)
    model = task.build_model("deepfm", embed_dim=8, hidden=(16,)).eval()
    with torch.no_grad():  # first-order weights as a trained model has them (not all zero)
        for table in [*model.linear, model.bag_linear]:
            table.weight.normal_(std=0.1)
            table.weight[0] = 0
    return model


def _compress(model: nn.Module, task: CTRTask, **options) -> tuple[nn.Module, dict]:
    model = copy.deepcopy(model)
    ctx = Context(task=task, seed=0)
    apply_embedding_frequency(model, EmbeddingFrequency(batch_size=256, **options), ctx)
    return model, ctx.info


def _table_bytes(model: nn.Module) -> int:
    return sum(module_bytes(m) for m in model.modules() if isinstance(m, TABLES))


@pytest.mark.parametrize("budget", [0.25, 0.125, 0.08])
def test_budget_counts_every_stored_byte(model, task, budget: float) -> None:
    fp32 = _table_bytes(model)
    small, info = _compress(model, task, budget=budget)
    stored = _table_bytes(small)  # state dict bytes: codes, scales, maps, default rows
    assert stored == info["bytes_after"] <= int(budget * fp32) == info["budget_bytes"]
    assert stored > 0.8 * budget * fp32  # the budget is used, not wasted
    assert not any(type(m) in (nn.Embedding, nn.EmbeddingBag) for m in small.modules())
    user = small.embeddings[0]
    assert user.slot.dtype == torch.uint8 or user.default_slot >= 256  # smallest map dtype
    assert isinstance(small.linear[0], NarrowEmbedding)  # 1-wide: per-table scale
    first, _ = _compress(model, task, budget_bytes=stored - 200)
    assert _table_bytes(first) <= stored - 200
    with pytest.raises(SlimkitError, match="below the smallest reachable size"):
        _compress(model, task, budget_bytes=100)


def test_fisher_weights_tables_by_their_loss_gradient(model, task) -> None:
    tables = [("embeddings.0", model.embeddings[0]), ("linear.0", model.linear[0]),
              ("bag", model.bag)]
    columns = fisher_columns(model, tables, task, batch_size=256, batches=2, seed=0)
    assert [tuple(columns[n].shape) for n, _ in tables] == [(8,), (1,), (8,)]
    assert all(bool((c > 0).all()) for c in columns.values())
    # A first-order weight adds to the logit itself: its gradient is the logit's, larger than
    # that of a row reaching the output through small (std 0.01) embeddings of other fields.
    assert float(columns["linear.0"]) > float(columns["embeddings.0"].mean())
    small, info = _compress(model, task, budget=0.125, sensitivity="fisher", fisher_batches=2)
    assert _table_bytes(small) == info["bytes_after"] <= info["budget_bytes"]
    assert info["tables"]["linear.0"]["bits"] >= _compress(model, task, budget=0.125)[1][
        "tables"]["linear.0"]["bits"]


def test_hot_rows_get_more_bits_and_unseen_rows_share_the_default(model, task) -> None:
    small, info = _compress(model, task, budget=0.1, batches=3)
    counts = count_row_reads(model, [("embeddings.0", model.embeddings[0])], task,
                           batch_size=256, batches=3, seed=0)["embeddings.0"]
    table = small.embeddings[0]
    bits = table.bits_per_row().double()
    seen = counts > 0
    order = counts.argsort(descending=True)
    hot, cold = order[:20], order[seen.sum() - 40:seen.sum()]
    assert bits[hot].mean() > bits[cold].mean() + 2
    assert bits[order[0]] == bits.max() >= 4
    unseen = (~seen).nonzero().flatten()
    unseen = unseen[unseen != 0]  # the padding row keeps its own (zero) value
    assert len(unseen) > 20 and info["tables"]["embeddings.0"]["unseen_rows"] == len(unseen) + 1
    assert bool((bits[unseen] == 0).all())
    assert bool((table.slot[unseen].long() == table.default_slot).all())
    default = table.default.float()
    assert torch.equal(table(unseen), default.expand(len(unseen), -1))
    # The default is the count-weighted mean of the seen rows sent to it.
    sent = (bits == 0) & seen
    weights = counts[sent].float()
    mean = (model.embeddings[0].weight[sent] * weights[:, None]).sum(0) / weights.sum()
    assert torch.allclose(default, mean, atol=1e-3)
    assert torch.equal(table(torch.tensor([0])), torch.zeros(1, 8))  # padding stays zero


@pytest.mark.parametrize("mode", ["none", "sum", "mean"])
def test_lookups_match_torch_on_the_dequantized_table(mode: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 10)
    widths = torch.tensor([8, 4, 2, 0] * 10)
    table = FrequencyEmbedding.build(weight, widths, weight[widths == 0].mean(0), mode=mode,
                                     padding_idx=0)
    assert table.codes2.shape == (10, 3) and table.codes4.shape == (10, 5)  # really packed
    assert table.slot.dtype == torch.uint8
    w = table.dequantized_weight()
    err = (w - weight).pow(2).sum(1)
    assert err[widths == 8].max() < err[widths == 4].min() < err[widths == 2].max()
    ids = torch.randint(0, 40, (6, 3))
    ids[1] = 0
    if mode == "none":
        assert torch.equal(table(ids), F.embedding(ids, w))
        return
    assert torch.allclose(table(ids), F.embedding_bag(ids, w, mode=mode, padding_idx=0))
    flat, offsets = ids.flatten(), torch.tensor([0, 3, 3, 9, 12])
    assert torch.allclose(table(flat, offsets),
                          F.embedding_bag(flat, w, offsets, mode=mode, padding_idx=0))
    if mode == "sum":
        psw = torch.rand(flat.shape)
        assert torch.allclose(table(flat, offsets, psw), F.embedding_bag(
            flat, w, offsets, mode=mode, per_sample_weights=psw, padding_idx=0), atol=1e-6)
    last = FrequencyEmbedding.build(weight, widths, w[3], mode=mode, padding_idx=0,
                                    include_last_offset=True)
    bounds = torch.tensor([0, 3, 3, 9, 12, 18])
    assert torch.allclose(last(flat, bounds), F.embedding_bag(
        flat, w, bounds, mode=mode, padding_idx=0, include_last_offset=True))


def test_one_width_tables_need_no_map_and_one_bit_rows_pack_eight_codes_a_byte() -> None:
    torch.manual_seed(0)
    weight = torch.randn(20, 16)
    uniform = FrequencyEmbedding.build(weight, torch.full((20,), 2), torch.zeros(16))
    assert not uniform.mapped and "slot" not in uniform.state_dict()
    assert module_bytes(uniform) == 20 * (4 + 4)  # codes + fp16 scale and offset, nothing else
    rebuilt = FrequencyEmbedding(**uniform.spec())
    rebuilt.load_state_dict(uniform.state_dict())
    ids = torch.randint(0, 20, (5, 2))
    assert torch.equal(rebuilt(ids), uniform(ids))
    assert torch.equal(uniform(ids), F.embedding(ids, uniform.dequantized_weight()))
    widths = torch.tensor([1, 8] * 10)
    mixed = FrequencyEmbedding.build(weight, widths, torch.zeros(16))
    assert mixed.codes1.shape == (10, 2) and mixed.mapped
    w = mixed.dequantized_weight()
    assert all(len(row.unique()) <= 2 for row in w[widths == 1])  # two levels per 1-bit row


def test_narrow_table_keeps_zero_exact() -> None:
    weight = torch.randn(30, 1) * 0.1 + 0.05
    weight[0] = 0
    table = NarrowEmbedding.build(weight, 2, padding_idx=0)
    assert table.codes.shape == (8,) and module_bytes(table) == 8 + 8  # 4 ids a byte
    assert float(table(torch.tensor([0]))) == 0.0
    four = NarrowEmbedding.build(weight, 4)
    assert (four.dequantized_weight() - weight).abs().max() <= float(four.scale) / 2 + 1e-7
    wide = torch.randn(7, 3)  # codes of neighbouring rows share bytes
    three = NarrowEmbedding.build(wide, 4, mode="sum")
    codes, scale, zero = NarrowEmbedding.quantize(wide, 4)
    assert three.codes.numel() == 11
    assert torch.allclose(three.dequantized_weight(), (codes.float() - zero) * scale)


def test_artifact_round_trip_and_plan_yaml(model, task, tmp_path) -> None:
    plan = slimkit.Plan.from_yaml(
        "steps:\n  - method: quantize.embedding_frequency\n    budget: 0.125\n"
        "    bits: [8, 2]\n    batch_size: 256\n")
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan
    small = copy.deepcopy(model)
    slimkit.compress_(small, plan, Context(task=task, seed=0))
    assert {int(b) for b in small.embeddings[0].bits_per_row().unique()} <= {0, 2, 8}
    loaded = slimkit.load(slimkit.save(small, tmp_path / "art")).model
    x = task.example_inputs(64)
    with torch.inference_mode():
        assert torch.equal(small(*x), loaded(*x))
    assert isinstance(loaded.embeddings[0], FrequencyEmbedding)
    assert _table_bytes(loaded) == _table_bytes(small)


def test_onnx_matches_onnx_runtime(model, task, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import check_parity, export_onnx

    small, _ = _compress(model, task, budget=0.1)
    path = export_onnx(small, task.example_inputs(8), tmp_path / "m.onnx")
    for batch in (1, 100):
        parity = check_parity(small, path, task.example_inputs(batch), atol=1e-5)
        assert parity.passed, parity
    torch.manual_seed(0)
    bag = FrequencyEmbedding.build(torch.randn(30, 6), torch.tensor([8, 4, 2] * 10),
                                   torch.zeros(6), mode="sum")
    flat, offsets = torch.randint(0, 30, (12,)), torch.tensor([0, 2, 2, 7])
    path = export_onnx(bag, (flat, offsets), tmp_path / "b.onnx", dynamic_batch=False)
    assert check_parity(bag, path, (flat, offsets), atol=1e-5).passed
    uniform = FrequencyEmbedding.build(torch.randn(30, 6), torch.full((30,), 4), torch.zeros(6),
                                       mode="mean", padding_idx=0)
    narrow = NarrowEmbedding.build(torch.randn(30, 1), 2, mode="sum", padding_idx=0)
    ids = torch.randint(0, 30, (5, 3))
    ids[0] = 0
    for module in (uniform, narrow):
        path = export_onnx(module, (ids,), tmp_path / "u.onnx")
        assert check_parity(module, path, (ids,), atol=1e-5).passed


@pytest.mark.parametrize(("options", "field"), [
    ({"bits": (8, 3)}, "bits"), ({"bits": ()}, "bits"), ({"bits": (4, 4)}, "bits"),
    ({"budget": 0.0}, "budget"), ({"budget": 1.5}, "budget"), ({"budget_bytes": -1},
                                                              "budget_bytes"),
    ({"min_dim": 0}, "min_dim"), ({"batches": -2}, "batches"), ({"batch_size": 0}, "batch_size"),
    ({"sensitivity": "hessian"}, "sensitivity"), ({"fisher_batches": 0}, "fisher_batches"),
])
def test_bad_options_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EmbeddingFrequency(**options)
    message = str(caught.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_dcnv2_and_a_bag_with_offsets(task) -> None:
    torch.manual_seed(0)
    dcn = task.build_model("dcnv2", embed_dim=8, hidden=(16,), cross_layers=1).eval()
    small, info = _compress(dcn, task, budget=0.2, bits=(4, 2))
    assert _table_bytes(small) <= info["budget_bytes"]
    x = task.example_inputs(16)
    with torch.inference_mode():
        assert torch.isfinite(small(*x)).all()
    assert (small(*x) - dcn(*x)).abs().max() < 0.05

    class Flat(nn.Module):  # a model feeding its bag table 1-D ids with offsets
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.EmbeddingBag(21, 8, mode="sum")

        def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
            offsets = torch.arange(0, bag.numel(), bag.shape[1])
            return self.table(bag.reshape(-1), offsets).sum(-1)

    flat = Flat()
    small, _ = _compress(flat, task, budget=0.3)
    assert isinstance(small.table, FrequencyEmbedding)
    ids = task.example_inputs(8)
    assert torch.allclose(small(*ids), F.embedding_bag(
        ids[1].reshape(-1), small.table.dequantized_weight(),
        torch.arange(0, 24, 3), mode="sum").sum(-1), atol=1e-5)


def test_max_bags_and_missing_task_are_refused(task) -> None:
    model = nn.Sequential(nn.EmbeddingBag(10, 4, mode="max"))
    with pytest.raises(ConfigError, match="mode sum or mean"):
        apply_embedding_frequency(model, EmbeddingFrequency(), Context(task=task))
    with pytest.raises(ConfigError, match="^targets: .*without max_norm"):
        apply_embedding_frequency(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)),
                                  EmbeddingFrequency(), Context(task=task))
    with pytest.raises(SlimkitError):
        apply_embedding_frequency(nn.Sequential(nn.Embedding(10, 4)), EmbeddingFrequency(),
                                  Context())


def test_shipped_recipe_puts_every_read_row_at_two_bits(model, task) -> None:
    from pathlib import Path

    plan = slimkit.Plan.load(Path(__file__).parents[1] / "recipes" / "ctr-embeddings.yaml")
    out = copy.deepcopy(model)
    slimkit.compress_(out, plan, Context(task=task, seed=0))
    fp32 = _table_bytes(model)
    wide = [m for m in out.modules() if isinstance(m, FrequencyEmbedding)]
    narrow = [m for m in out.modules() if isinstance(m, NarrowEmbedding)]
    assert wide and narrow
    reads = count_row_reads(model, [("embeddings.0", model.embeddings[0])], task,
                            batch_size=1024, batches=0, seed=0)["embeddings.0"]
    for table in wide:  # 2 bits, or the shared default row (unread rows, then the coldest)
        assert set(table.bits_per_row().tolist()) <= {0, 2}
    bits = out.embeddings[0].bits_per_row()
    hot = reads.argsort(descending=True)[:len(reads) // 4]
    # A hot row may still go to the default row when it lies close to it (the error is what
    # counts); nearly all of them keep their own.
    assert float((bits[hot] == 2).float().mean()) > 0.95
    assert bool((bits[reads == 0][1:] == 0).all())
    assert all(t.bits == 2 for t in narrow)
    assert _table_bytes(out) <= 0.125 * fp32


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["none", "sum", "mean"])
def test_one_width_tables_run_fbgemm_kernels_with_the_same_results(bits, mode) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(300, 12)
    weight[0] = 0
    table = FrequencyEmbedding.build(weight, torch.full((300,), bits), torch.zeros(12),
                                     mode=mode, padding_idx=0)
    assert table.kernel_table() is not None
    ids = torch.randint(0, 300, (9, 4))
    ids[0] = 0  # padding only: an empty bag
    fast = table(ids)
    table.__dict__["_kernel_table"] = None
    slow = bag_lookup_reference(table, ids)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # The kernel reads the table's own tensors: a loaded state shows at once.
    other = FrequencyEmbedding.build(weight.flip(0), torch.full((300,), bits), torch.zeros(12),
                                     mode=mode, padding_idx=0)
    table(ids)
    table.load_state_dict(other.state_dict())
    torch.testing.assert_close(table(ids), other(ids))


def bag_lookup_reference(table: FrequencyEmbedding, ids: torch.Tensor) -> torch.Tensor:
    """The generic path (torch gathers and unpacking), with the kernel table switched off."""
    from slimkit.nn.bags import bag_lookup

    return bag_lookup(table.rows, ids, None, None, dim=table.embedding_dim, mode=table.mode,
                      padding_idx=table.padding_idx, include_last_offset=False)


def test_shipped_recovery_recipe_trains_tt_cores_beside_two_bit_rows(model, task) -> None:
    """recipes/ctr-embeddings-recover.yaml as shipped, with its row threshold and epochs scaled
    to the tiny task: large tables become TT cores, the rest 2-bit rows, and the distillation
    then trains the cores (the rows stay as quantized)."""
    import dataclasses
    from pathlib import Path

    from slimkit.nn.tt_embedding import TTEmbedding

    plan = slimkit.Plan.load(Path(__file__).parents[1] / "recipes" / "ctr-embeddings-recover.yaml")
    tt, rows, kd = plan.steps
    assert (tt.method, rows.method, kd.method) == (
        "truncate.embedding_tt", "quantize.embedding_frequency", "distill.logits")
    steps = (dataclasses.replace(tt, min_rows=300), rows, dataclasses.replace(kd, epochs=0.5))
    cut, full = copy.deepcopy(model), copy.deepcopy(model)
    slimkit.compress_(cut, slimkit.Plan(steps=steps[:2]), Context(task=task, seed=0, teacher=model))
    slimkit.compress_(full, slimkit.Plan(steps=steps), Context(task=task, seed=0, teacher=model))
    assert isinstance(full.embeddings[0], TTEmbedding)
    assert not any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in full.modules())
    for table in full.modules():
        if isinstance(table, FrequencyEmbedding):
            assert set(table.bits_per_row().tolist()) <= {0, 2}
    before = [c.detach() for c in cut.embeddings[0].cores]
    after = [c.detach() for c in full.embeddings[0].cores]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(cut.embeddings[1].scale, full.embeddings[1].scale)
