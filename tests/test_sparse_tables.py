"""Large embedding tables train with sparse gradients and lazy Adam (SparseAdam): only the rows
a batch touches move, the loss still falls, and small tables keep dense Adam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.tasks.ctr.task import CTRTask
from slimkit.train import loop


def test_large_tables_train_sparse_and_only_touched_rows_move(monkeypatch):
    task = CTRTask.synthetic(n_rows=3000, cardinalities=[5000, 50], bag_cardinality=10,
                             bag_len=2, seed=0)
    torch.manual_seed(0)
    model = task.build_model("deepfm", embed_dim=8, hidden=[16])
    monkeypatch.setattr(loop, "SPARSE_TABLE_ROWS", 1000)
    big = model.embeddings[0]
    chosen = loop.large_tables(model, list(model.parameters()), rows=1000)
    assert big in chosen and model.embeddings[1] not in chosen
    seen = torch.unique(task.split("train")["sparse"][:, 0])
    before = big.weight.detach().clone()
    optimizers = []
    real_sparse_adam = torch.optim.SparseAdam
    monkeypatch.setattr(torch.optim, "SparseAdam",
                        lambda *a, **k: optimizers.append(real_sparse_adam(*a, **k))
                        or optimizers[-1])
    losses = loop.fit(model, task, slimkit.Context(task=task), epochs=2.0, lr=0.01,
                      batch_size=256, desc="t")
    assert len(optimizers) == 1
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    moved = (big.weight.detach() != before).any(dim=1)
    unseen = torch.ones(big.num_embeddings, dtype=torch.bool)
    unseen[seen] = False
    assert moved[seen].float().mean() > 0.9 and not moved[unseen].any()
    assert big.sparse is False  # restored after training


def test_small_tables_keep_dense_adam():
    table = nn.Embedding(100, 4)
    assert loop.large_tables(nn.Sequential(table), list(table.parameters())) == []


def test_tied_and_table_only_models_and_weight_decay():
    class Tied(nn.Module):  # a head sharing the table's weight gets a dense gradient: no lazy Adam
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(300, 4)
            self.head = nn.Linear(4, 300, bias=False)
            self.head.weight = self.emb.weight

    tied = Tied()
    assert loop.large_tables(tied, list(tied.parameters()), rows=100) == []
    only = nn.Sequential(nn.EmbeddingBag(300, 4, mode="sum"))
    assert loop.large_tables(only, list(only.parameters()), rows=100) == [only[0]]
    # Weight decay on the touched rows only, as Adam's L2 on those rows.
    table = only[0]
    table.sparse = True
    table(torch.tensor([[1, 2]])).sum().backward()
    before = table.weight.grad.coalesce()
    loop.decay_touched_rows([table], 0.5)
    after = table.weight.grad.coalesce()
    assert torch.equal(after.indices(), before.indices())
    rows = before.indices()[0]
    torch.testing.assert_close(after.values(), before.values() + 0.5 * table.weight[rows].detach())


def test_a_dense_gradient_on_a_large_table_is_refused():
    table = nn.Embedding(300, 4)
    table.weight.grad = torch.zeros(300, 4)
    with pytest.raises(slimkit.SlimkitError, match="dense gradient"):
        loop.decay_touched_rows([table], 0.0)


def test_a_table_only_model_trains(monkeypatch):
    task = CTRTask.synthetic(n_rows=2000, cardinalities=[3000, 50], bag_cardinality=10,
                             bag_len=2, seed=0)

    class TablesOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(3001, 1)

        def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
            return self.emb(sparse[:, 0]).squeeze(-1)

    monkeypatch.setattr(loop, "SPARSE_TABLE_ROWS", 1000)
    model = TablesOnly()
    losses = loop.fit(model, task, slimkit.Context(task=task), epochs=1.0, lr=0.05,
                      batch_size=256, desc="t")
    assert losses[-1] < losses[0]
