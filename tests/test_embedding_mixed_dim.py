"""Mixed-dimension tables (truncate.embedding_mixed_dim): block sizes and widths by read count
within the byte budget, exact where the rows allow it, nn.EmbeddingBag semantics, bad options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.methods.truncate.embedding_mixed_dim import (
    EmbeddingMixedDim,
    block_sizes,
    mixed_dim_table,
    table_bytes,
    weighted_pca,
)
from slimkit.nn.hashed_embedding import stored_bytes
from slimkit.nn.mixed_dim_embedding import MixedDimEmbedding


def test_blocks_grow_fourfold_and_cover_every_row():
    assert block_sizes(1000, 4) == [16, 47, 187, 750]
    assert sum(block_sizes(7, 4)) == 7 and block_sizes(5, 1) == [5]


def _table(n: int = 400, dim: int = 16, mode: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    if mode is None:
        table = nn.Embedding(n, dim, padding_idx=0)
    else:
        table = nn.EmbeddingBag(n, dim, mode=mode, padding_idx=0)
    with torch.no_grad():
        table.weight[0] = 0
    return table


def _counts(n: int) -> torch.Tensor:
    return (1000.0 / torch.arange(1, n + 1)).floor()  # Zipf-like: id 1 hottest, most ids rare


@pytest.mark.parametrize("budget", [0.5, 0.3, 0.2])
def test_budget_holds_and_hot_blocks_are_widest(budget):
    table = _table()
    new = mixed_dim_table(table, _counts(400), EmbeddingMixedDim(budget=budget, alpha=0.5))
    assert isinstance(new, MixedDimEmbedding)
    assert stored_bytes(new) == table_bytes(table, new.sizes, new.widths)
    assert stored_bytes(new) <= budget * 4 * table.weight.numel()
    assert new.widths == sorted(new.widths, reverse=True) and new.widths[0] > new.widths[-1]
    # the most-read ids sit in the first (widest) block
    assert int(new.slot[1]) < new.sizes[0]


def test_rows_in_a_low_dimensional_subspace_come_back_exactly():
    torch.manual_seed(2)
    basis, mean = torch.randn(2, 8), torch.randn(8)
    weight = torch.randn(300, 2) @ basis + mean
    coords, directions, centre = weighted_pca(weight, torch.arange(300), torch.rand(300) + 0.5,
                                              2)
    torch.testing.assert_close(coords @ directions + centre, weight, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_bags_match_embedding_bag_on_the_rebuilt_rows(mode):
    table = _table(mode=mode)
    new = mixed_dim_table(table, _counts(400), EmbeddingMixedDim(budget=0.3))
    with torch.no_grad():
        rows = new.vectors(torch.arange(400))
        rows[0] = 0
        reference = nn.EmbeddingBag.from_pretrained(rows, mode=mode, padding_idx=0)
        ids = torch.randint(0, 400, (6, 5))
        ids[0] = 0  # an all-padding bag
        torch.testing.assert_close(new(ids), reference(ids), atol=1e-5, rtol=0)
        flat, offsets = ids.reshape(-1), torch.tensor([0, 4, 4, 17])
        torch.testing.assert_close(new(flat, offsets), reference(flat, offsets), atol=1e-5,
                                   rtol=0)


def test_method_on_a_model_keeps_quality_better_than_hashing(tiny_task, make_model):
    base = make_model()
    aucs = {}
    for name, config in (("mixed", slimkit.EmbeddingMixedDim(budget=0.3, min_rows=100)),
                         ("hash", slimkit.EmbeddingHash(budget=0.3, min_rows=100))):
        model = make_model()
        slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=tiny_task))
        aucs[name] = tiny_task.evaluate(model)["auc"]
    # An untrained tiny model: both close to it, and the widths rebuilt from PCA stay closer.
    teacher = tiny_task.evaluate(base)["auc"]
    assert abs(aucs["mixed"] - teacher) <= abs(aucs["hash"] - teacher) + 0.01


@pytest.mark.parametrize("options, field", [({"hot": 0.5}, "hot"), ({"blocks": 0}, "blocks"),
                                            ({"alpha": -1.0}, "alpha"),
                                            ({"budget": 1.5}, "budget")])
def test_bad_options_name_their_field(options, field):
    with pytest.raises(ConfigError, match=field):
        EmbeddingMixedDim(**options)


def test_a_budget_below_width_one_is_refused():
    with pytest.raises(ConfigError, match="budget"):
        mixed_dim_table(_table(), _counts(400), EmbeddingMixedDim(budget=0.01))
