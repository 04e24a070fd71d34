"""Tensor-train embedding tables (truncate.embedding_tt): exact at full rank, the rank fits the
byte budget, bags and padding as nn.EmbeddingBag, save/load and ONNX parity, bad options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.methods import EmbeddingTT
from slimkit.methods.truncate.embedding_tt import choose_rank
from slimkit.nn.tt_embedding import (
    TTEmbedding,
    balanced_factors,
    core_bytes,
    exact_factors,
    tt_svd,
)


def _tt(weight: torch.Tensor, rank: int, mode: str = "none", padding_idx=None) -> TTEmbedding:
    rows, dim = weight.shape
    rf, df = balanced_factors(rows, 3), exact_factors(dim, 3)
    cores = tt_svd(weight, rf, df, rank)
    new = TTEmbedding(rows, dim, rf, df, [c.shape[3] for c in cores[:-1]], mode, padding_idx)
    for param, core in zip(new.cores, cores, strict=True):
        param.data.copy_(core)
    return new


def test_factors_cover_rows_and_give_the_exact_width():
    for rows in (7, 1000, 6041, 10_000_000):
        f = balanced_factors(rows, 3)
        assert math.prod(f) >= rows and max(f) - min(f) <= max(2, max(f) // 4)
    assert exact_factors(16, 3) == [2, 2, 4]
    assert math.prod(exact_factors(24, 3)) == 24 and exact_factors(7, 3) == [1, 1, 7]


def test_full_rank_reproduces_the_table_and_low_rank_is_the_svd_cut():
    torch.manual_seed(0)
    weight = torch.randn(300, 16)
    full = _tt(weight, 10_000)
    torch.testing.assert_close(full.rows(torch.arange(300)), weight, atol=1e-5, rtol=0)
    # A table that is exactly TT-rank 2 comes back exactly at rank 2 (343 = 7^3 rows: no
    # padding rows, whose zeros would not be of that rank).
    ids = torch.arange(343)
    low = _tt(torch.randn(343, 16), 2)
    again = _tt(low.rows(ids).detach(), 2)
    torch.testing.assert_close(again.rows(ids), low.rows(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_bags_and_padding_match_embedding_bag(mode):
    torch.manual_seed(1)
    bag = nn.EmbeddingBag(50, 8, mode=mode, padding_idx=0)
    with torch.no_grad():
        bag.weight[0] = 0
    tt = _tt(bag.weight, 10_000, mode, 0)
    ids = torch.randint(0, 50, (9, 5))
    ids[0] = 0  # an all-padding bag gives zeros
    torch.testing.assert_close(tt(ids), bag(ids), atol=1e-5, rtol=0)
    flat, offsets = ids[1:].reshape(-1), torch.tensor([0, 3, 3, 11, 20])  # one bag empty
    torch.testing.assert_close(tt(flat, offsets), bag(flat, offsets), atol=1e-5, rtol=0)


def test_rank_fits_the_budget():
    rf, df = balanced_factors(100_000, 3), exact_factors(16, 3)
    budget = 0.01 * 4 * 100_000 * 16
    rank = choose_rank(100_000, 16, rf, df, budget)
    assert rank > 0
    assert core_bytes(rf, df, [rank] * 2) <= budget < core_bytes(rf, df, [rank + 1] * 2)


def _compressed(tiny_task, make_model, **options):
    model = make_model()
    plan = slimkit.Plan(steps=(EmbeddingTT(min_rows=100, **options),))
    records = slimkit.compress_(model, plan, slimkit.Context(task=tiny_task))
    return model, records[0].info


def test_method_replaces_large_tables_within_budget(tiny_task, make_model):
    before = make_model()
    model, info = _compressed(tiny_task, make_model, budget=0.25)
    assert info["replaced"], info
    for name in info["replaced"]:
        table = before.get_submodule(name)
        new = model.get_submodule(name)
        assert isinstance(new, TTEmbedding)
        assert info["tables"][name]["bytes"] <= 0.25 * table.weight.numel() * 4
    small = [n for n, m in before.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
             and (m.weight.shape[0] < 100 or m.weight.shape[1] < 4)]
    assert set(small) <= set(info["skipped_small"])
    assert 0 < tiny_task.evaluate(model)["auc"] <= 1


def test_save_load_and_onnx_parity(tiny_task, make_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import check_parity, export_onnx

    model, _ = _compressed(tiny_task, make_model, rank=3)
    slimkit.save(model, tmp_path / "art", task=tiny_task)
    loaded = slimkit.load(tmp_path / "art").model
    inputs = tiny_task.example_inputs(16)
    torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)
    path = export_onnx(model, tiny_task.example_inputs(8), tmp_path / "m.onnx")
    for batch in (1, 64):
        assert check_parity(model, path, tiny_task.example_inputs(batch)).passed


def test_recovery_trains_the_cores(tiny_task, make_model):
    cut, _ = _compressed(tiny_task, make_model, rank=1)
    recovered, info = _compressed(tiny_task, make_model, rank=1, recover="distill", epochs=1.0,
                                  batch_size=128, lr=0.01)
    assert "final_loss" in info
    assert tiny_task.evaluate(recovered)["auc"] > tiny_task.evaluate(cut)["auc"] + 0.005


@pytest.mark.parametrize("options, field", [({"budget": 0.0}, "budget"),
                                            ({"cores": 1}, "cores"),
                                            ({"recover": "magic"}, "recover")])
def test_bad_options_name_their_field(options, field):
    with pytest.raises(ConfigError, match=field):
        EmbeddingTT(**options)


def test_a_budget_too_small_for_rank_one_is_refused(tiny_task, make_model):
    with pytest.raises(ConfigError, match="budget"):
        _compressed(tiny_task, make_model, budget=1e-9)
