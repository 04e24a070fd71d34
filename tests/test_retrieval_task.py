"""The two-tower retrieval task: ranking metrics on hand-made rankings, the per-user time split,
the in-batch loss, a short training run, methods applied to the towers, and the registry."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from slimkit.core.compress import compress_
from slimkit.core.context import Context
from slimkit.core.errors import SlimkitError
from slimkit.core.plan import Plan
from slimkit.core.task import missing_members
from slimkit.tasks.registry import task_factory
from slimkit.tasks.retrieval.data import build, cut_points
from slimkit.tasks.retrieval.metrics import ndcg_at_k, ranking_metrics, recall_at_k, top_k
from slimkit.tasks.retrieval.model import TwoTower
from slimkit.tasks.retrieval.task import TwoTowerTask
from slimkit.train.loop import fit


@pytest.fixture(scope="module")
def task() -> TwoTowerTask:
    return TwoTowerTask.synthetic(seed=0)


def test_recall_and_ndcg_on_a_hand_made_ranking() -> None:
    relevant = torch.zeros(2, 8, dtype=torch.bool)
    relevant[0, [1, 4, 6]] = True  # query 0: 3 relevant items
    relevant[1, [2]] = True
    ids = torch.tensor([[1, 2, 4, 0], [3, 5, 7, 2]])
    assert recall_at_k(ids, relevant, 2) == pytest.approx((1 / 3 + 0) / 2)
    assert recall_at_k(ids, relevant, 4) == pytest.approx((2 / 3 + 1) / 2)

    def d(position: int) -> float:  # the discount at rank position - 1
        return 1 / math.log2(position)

    ndcg0 = (d(2) + d(4)) / (d(2) + d(3) + d(4))  # hits at ranks 1 and 3 of 3 relevant
    ndcg1 = d(5) / d(2)  # one hit at rank 4, ideal at rank 1
    assert ndcg_at_k(ids, relevant, 4) == pytest.approx((ndcg0 + ndcg1) / 2)
    relevant[1] = False  # a query without relevant items leaves the means
    assert recall_at_k(ids, relevant, 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k: 5 exceeds"):
        recall_at_k(ids, relevant, 5)


def test_top_k_excludes_seen_items_and_breaks_ties_by_id() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.9]])
    assert top_k(scores, 3).tolist() == [[1, 4, 0]]
    exclude = torch.tensor([[False, True, False, False, False]])
    assert top_k(scores, 3, exclude).tolist() == [[4, 0, 2]]
    perfect = ranking_metrics(top_k(torch.eye(60), 50), torch.eye(60, dtype=torch.bool))
    assert perfect == {"recall@10": 1.0, "recall@50": 1.0, "ndcg@10": 1.0}


def test_cut_points_keep_every_split_non_empty() -> None:
    c1, c2 = cut_points(np.array([1, 2, 3, 10, 20]), (0.8, 0.1, 0.1))
    assert c1.tolist() == [1, 1, 1, 8, 16]
    assert c2.tolist() == [1, 1, 2, 9, 18]


def test_split_is_per_user_by_time_and_histories_only_look_back() -> None:
    # user 1 watches items 5, 3, 1, 2, 4 (by time, given out of order); user 2 watches 6..1
    users = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    items = np.array([2, 5, 4, 3, 1, 6, 5, 4, 3, 2, 1])
    times = np.array([40, 10, 50, 20, 30, 1, 2, 3, 4, 5, 6])
    feats = np.array([[0, 0], [1, 1], [2, 1]])
    genres = np.zeros((7, 1), dtype=np.int64)
    genres[1:, 0] = 1
    data = build(users, items, times, user_features=feats, item_genres=genres, history=2,
                 fractions=(0.6, 0.2, 0.2))
    train = data.interactions["train"]
    assert train["item"].tolist() == [5, 3, 1, 6, 5, 4]
    assert train["history"].tolist() == [[0, 0], [0, 5], [5, 3], [0, 0], [0, 6], [6, 5]]
    assert data.interactions["valid"]["item"].tolist() == [2, 3]
    test = data.queries["test"]
    assert test["user"].tolist() == [1, 2]
    assert test["history"].tolist() == [[1, 2], [4, 3]]  # the two items before the test split
    assert torch.nonzero(test["relevant"]).tolist() == [[0, 4], [1, 1], [1, 2]]
    assert torch.nonzero(test["exclude"][0]).flatten().tolist() == [0, 1, 2, 3, 5]
    assert data.item_counts.tolist() == [0, 1, 0, 1, 1, 2, 1]


def test_loss_corrects_log_frequency_and_masks_duplicates(task: TwoTowerTask) -> None:
    batch = {"item": torch.tensor([3, 3, 7]), "logq": torch.tensor([-1.0, -1.0, -2.0])}
    logits = torch.tensor([[2.0, 9.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.0, 1.0]])
    plain = copy.copy(task)
    plain.logq = False
    # row 0: column 1 is the same item (not a negative); masked, only columns 0 and 2 count
    want = torch.stack([torch.logsumexp(torch.tensor([2.0, 0.0]), 0) - 2.0,
                        torch.logsumexp(torch.tensor([2.0, 0.5]), 0) - 2.0,
                        torch.logsumexp(torch.tensor([0.0, 0.0, 1.0]), 0) - 1.0]).mean()
    assert float(plain.loss(logits, batch)) == pytest.approx(float(want), rel=1e-6)
    corrected = logits - batch["logq"][None, :]
    want_q = torch.stack([torch.logsumexp(corrected[0, [0, 2]], 0) - corrected[0, 0],
                          torch.logsumexp(corrected[1, [1, 2]], 0) - corrected[1, 1],
                          torch.logsumexp(corrected[2], 0) - corrected[2, 2]]).mean()
    assert float(task.loss(logits, batch)) == pytest.approx(float(want_q), rel=1e-6)


def test_protocol_and_shapes(task: TwoTowerTask) -> None:
    assert missing_members(task) == []
    model = task.build_model()
    assert isinstance(model, TwoTower)
    batch = next(task.train_batches(32, seed=0))
    out = model(*task.inputs(batch))
    assert out.shape == (32, 32)
    assert task.example_inputs(5)[0].shape[0] == 5
    cal = task.calibration_batches(2, 16)
    assert len(cal) == 2 and cal[0]["item"].shape == (16,)
    assert torch.equal(cal[0]["item"], task.calibration_batches(2, 16)[0]["item"])
    u = model.encode_users(*task.inputs(batch)[:2])
    assert torch.allclose(u.norm(dim=1), torch.ones(32))
    assert set(task.evaluate(model)) == {"recall@10", "recall@50", "ndcg@10"}
    with pytest.raises(SlimkitError, match="split"):
        task.evaluate(model, "train")
    with pytest.raises(SlimkitError, match="kind"):
        task.build_model("deepfm")


def test_a_few_steps_lower_the_loss_and_raise_recall(task: TwoTowerTask) -> None:
    torch.manual_seed(0)
    model = task.build_model()
    before = task.evaluate(model)["recall@10"]
    losses = fit(model, task, Context(task=task, seed=0), epochs=3, lr=1e-2, batch_size=64)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    after = task.evaluate(model)  # 0.135 -> 0.484 when written
    assert after["recall@10"] > before + 0.2, (before, after)


def test_methods_apply_to_the_towers(task: TwoTowerTask) -> None:
    torch.manual_seed(0)
    model = task.build_model(hidden=[32])
    fit(model, task, Context(task=task, seed=0), epochs=2, lr=1e-2, batch_size=64)
    plan = Plan.from_yaml(task.default_plan().replace("epochs: 1.0", "epochs: 0.5"))
    compress_(model, plan, Context(task=task, seed=0))
    names = {type(m).__name__ for m in model.modules()}
    assert model.user_tower[0][0].out_features < 32  # neurons removed
    assert {"QuantizedEmbedding"} <= names and any("Int8" in n or "Dynamic" in n
                                                   for n in names), names
    metrics = task.evaluate(model)
    assert all(math.isfinite(v) for v in metrics.values())


def test_registered_and_rebuilt_from_spec(task: TwoTowerTask) -> None:
    assert task_factory("two-tower") == TwoTowerTask.movielens
    model = task.build_model()
    rebuilt = TwoTower(**model.slimkit_spec["kwargs"])
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_movielens_split_sizes() -> None:
    pytest.importorskip("pandas")
    try:
        task = TwoTowerTask.movielens()
    except SlimkitError as exc:
        pytest.skip(str(exc))
    d = task.describe()
    assert d["users"] == 943 and d["items"] == 1682
    assert d["interactions"] == {"train": 79619, "valid": 9942, "test": 10439}
    assert d["queries"] == {"valid": 943, "test": 943}
