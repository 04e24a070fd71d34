"""CTR task: synthetic data, MovieLens loading and split, models, spec rebuild, short training."""

import json

import numpy as np
import pytest
import torch

from slimkit.core.context import Context
from slimkit.nn.mean_bag import MeanBag
from slimkit.tasks.ctr import (
    CTRTask,
    DCNv2,
    DeepFM,
    TeacherRecipe,
    load_movielens,
    make_synthetic,
    train_teacher,
)
from slimkit.tasks.ctr.synthetic import zipf_ranks
from slimkit.train.loop import fit

CARDS = [500, 200, 10]


@pytest.fixture(scope="module")
def small_task() -> CTRTask:
    return CTRTask.synthetic(n_rows=20_000, cardinalities=CARDS, bag_cardinality=30, bag_len=3,
                             seed=0)


def test_synthetic_shapes_and_format() -> None:
    data = make_synthetic(1000, CARDS, 30, 3, seed=1)
    rows = {k: len(v["label"]) for k, v in data.splits.items()}
    assert rows == {"train": 800, "valid": 100, "test": 100}
    train = data.splits["train"]
    assert train["sparse"].shape == (800, 3) and train["sparse"].dtype == torch.int64
    assert train["bag"].shape == (800, 3) and train["bag"].dtype == torch.int64
    assert train["label"].dtype == torch.float32
    assert set(train["label"].unique().tolist()) == {0.0, 1.0}
    assert data.field_dims == [501, 201, 11] and data.bag_dim == 31
    for f, card in enumerate(CARDS):
        assert 1 <= train["sparse"][:, f].min() and train["sparse"][:, f].max() <= card
    assert (train["bag"][:, 0] > 0).all()  # every row has at least one bag id
    assert 0.3 < train["label"].mean() < 0.7


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b = make_synthetic(500, CARDS, 30, 3, seed=4), make_synthetic(500, CARDS, 30, 3, seed=4)
    c = make_synthetic(500, CARDS, 30, 3, seed=5)
    for key in ("sparse", "bag", "label"):
        assert torch.equal(a.splits["train"][key], b.splits["train"][key])
    assert not torch.equal(a.splits["train"]["sparse"], c.splits["train"]["sparse"])


def test_zipf_skew_and_huge_cardinality() -> None:
    ranks = zipf_ranks(np.random.default_rng(0), 200_000, 10_000, 1.2)
    counts = np.bincount(ranks, minlength=10_000)
    assert counts[0] > counts[9] > counts[99] > counts[999]  # popularity falls with rank
    assert counts[:100].sum() > 0.4 * len(ranks)  # 1% of ids take a large share of rows
    data = make_synthetic(2000, [5_000_000], 10, 2, seed=0)  # no dense table per id
    assert data.field_dims == [5_000_001]
    assert data.splits["train"]["sparse"].max() <= 5_000_000


@pytest.mark.parametrize("cls", [DeepFM, DCNv2])
def test_model_shape_spec_and_rebuild(cls: type, small_task: CTRTask) -> None:
    torch.manual_seed(0)
    model = cls(small_task.field_dims, small_task.bag_dim, embed_dim=4, hidden=(16, 16))
    spec = model.slimkit_spec
    assert spec["builder"] == f"slimkit.tasks.ctr.models:{cls.__name__}"
    spec = json.loads(json.dumps(spec))  # JSON-safe
    rebuilt = cls(**spec["kwargs"])
    rebuilt.load_state_dict(model.state_dict())
    x = small_task.example_inputs(5)
    with torch.inference_mode():
        out = model.eval()(*x)
        assert out.shape == (5,)
        assert torch.equal(rebuilt.eval()(*x), out)
    torch.manual_seed(0)
    again = cls(small_task.field_dims, small_task.bag_dim, embed_dim=4, hidden=(16, 16))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(),
                                                  strict=True))
    assert [type(m[0]).__name__ for m in model.tower] == ["Linear", "Linear"]


def test_mean_bag_matches_embedding_bag() -> None:
    bag = torch.nn.EmbeddingBag(10, 4, mode="mean", padding_idx=0)
    ids = torch.tensor([[3, 0, 0], [1, 2, 9], [0, 0, 0]])
    assert torch.allclose(MeanBag.from_embedding_bag(bag)(ids), bag(ids), atol=1e-6)


def test_task_protocol_pieces(small_task: CTRTask) -> None:
    bs = 4096
    batches = list(small_task.train_batches(bs, seed=3))
    assert len(batches) == small_task.num_train_batches(bs) == 4
    assert sum(len(b["label"]) for b in batches) == 16_000
    assert torch.equal(batches[0]["sparse"], next(small_task.train_batches(bs, seed=3))["sparse"])
    calib = small_task.calibration_batches(3, batch_size=64)
    assert len(calib) == 3 and calib[0]["bag"].shape[0] == 64
    assert torch.equal(calib[1]["label"], small_task.calibration_batches(3, 64)[1]["label"])
    sparse, bag = small_task.example_inputs(2500)  # more than the 2000 test rows: tiled
    assert sparse.shape == (2500, 3) and bag.shape == (2500, 3)
    assert torch.equal(sparse[2000:], sparse[:500])
    info = small_task.describe()
    assert info["rows"] == {"train": 16_000, "valid": 2000, "test": 2000}
    with pytest.raises(ValueError, match="kind"):
        small_task.build_model("wide")


def test_short_training_learns(small_task: CTRTask) -> None:
    torch.manual_seed(0)
    model = small_task.build_model("deepfm", embed_dim=8, hidden=(32, 32))
    before = small_task.evaluate(model)
    fit(model, small_task, Context(task=small_task, seed=0), epochs=2, lr=3e-3, batch_size=256)
    model.train()
    after = small_task.evaluate(model)
    assert model.training  # evaluate restores the mode
    assert after["auc"] > 0.6 and after["auc"] > before["auc"] + 0.05
    assert small_task.evaluate(model) == after  # bit-identical on repeat


def test_train_teacher_keeps_best_valid_epoch(small_task: CTRTask) -> None:
    state = torch.random.get_rng_state()
    recipe = TeacherRecipe(epochs=2, lr=3e-3, batch_size=512)
    model = train_teacher(small_task, Context(task=small_task, seed=1), "dcnv2", recipe=recipe,
                          embed_dim=8, hidden=[32])
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert not model.training and small_task.evaluate(model, "valid")["auc"] > 0.6
    with pytest.raises(ValueError, match="lr"):
        TeacherRecipe(lr=0.0)


def test_movielens_sizes_and_time_split() -> None:
    pytest.importorskip("pandas")
    data = load_movielens()
    rows = {k: len(v["label"]) for k, v in data.splits.items()}
    assert rows == {"train": 80_000, "valid": 10_000, "test": 10_000}
    ts = data.extra
    assert ts["train_timestamp"].max() <= ts["valid_timestamp"].min()
    assert ts["valid_timestamp"].max() <= ts["test_timestamp"].min()
    labels = torch.cat([v["label"] for v in data.splits.values()])
    assert abs(float(labels.mean()) - 0.554) < 0.01
    assert data.field_dims[2:] == [3, 8, 22] and data.bag_dim == 20
    test = data.splits["test"]
    for f, dim in enumerate(data.field_dims):
        assert 0 <= test["sparse"][:, f].min() and test["sparse"][:, f].max() < dim
    assert (data.splits["train"]["sparse"] > 0).all()  # 0 only for ids unseen in training
    assert (test["bag"][:, 0] > 0).all() and test["bag"].max() < data.bag_dim
