"""Large embedding tables train with sparse gradients and lazy Adam (SparseAdam): only the rows
a batch touches move, the loss still falls, and small tables keep dense Adam."""

from __future__ import annotations

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
