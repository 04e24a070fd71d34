"""Millions of embedding rows: the synthetic generator and INT4 tables at recommendation scale."""

from __future__ import annotations

import torch

import slimkit
from slimkit.export import artifact_bytes
from slimkit.tasks.ctr import CTRTask


def test_two_million_row_table_quantizes_to_int4(tmp_path) -> None:
    task = CTRTask.synthetic(n_rows=20_000, cardinalities=[2_000_000, 50], bag_cardinality=10,
                             bag_len=2, seed=1)
    torch.manual_seed(0)
    model = task.build_model("deepfm", embed_dim=16, hidden=[16])
    base = artifact_bytes(slimkit.save(model, tmp_path / "fp32"))
    before = task.evaluate(model)
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.EmbeddingQuant(bits=4),)),
                      slimkit.Context(task=task))
    small = artifact_bytes(slimkit.save(model, tmp_path / "int4"))
    # 16 fp32 values (64 B) become 8 B of nibbles + 4 B of fp16 scale/offset per row; the
    # 1-wide first-order table (8 B a row with its fp32 value) stays fp32.
    assert base / small > 3.5
    assert abs(task.evaluate(model)["auc"] - before["auc"]) < 0.01
