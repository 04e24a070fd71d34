"""The Fashion-MNIST task adapter on a small subset: shapes, splits, determinism, errors."""

from __future__ import annotations

import gzip

import pytest
import torch

import slimkit
from slimkit.tasks.vision import SmallCNN, TeacherRecipe, VisionTask, train_teacher
from slimkit.tasks.vision.data import ROOT, load_fashion_mnist, read_idx

pytestmark = pytest.mark.skipif(not (ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
                                reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def task() -> VisionTask:
    return VisionTask.fashion_mnist(limit=300)


def test_batches_have_the_documented_shapes(task: VisionTask) -> None:
    batch = next(task.train_batches(64, seed=0))
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == torch.int64
    assert task.num_train_batches(64) == 5  # 300 rows
    assert task.inputs(batch)[0] is batch["image"]
    assert task.example_inputs(512)[0].shape == (512, 1, 28, 28)  # tiled past 300
    cal = task.calibration_batches(2, 100)
    assert [len(b["label"]) for b in cal] == [100, 100]
    images = torch.cat([b["image"] for b in task.train_batches(300, seed=1)])
    assert abs(float(images.mean())) < 0.3 and 0.7 < float(images.std()) < 1.3  # normalized


def test_shuffles_depend_only_on_the_seed(task: VisionTask) -> None:
    a = [b["label"] for b in task.train_batches(100, seed=3)]
    b = [b["label"] for b in task.train_batches(100, seed=3)]
    c = [b["label"] for b in task.train_batches(100, seed=4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_valid_split_is_the_last_5000_training_images() -> None:
    data = load_fashion_mnist()
    raw = read_idx(ROOT / "train-labels-idx1-ubyte.gz", 8)
    assert len(data.labels["train"]) == 55_000 and len(data.labels["test"]) == 10_000
    assert torch.equal(data.labels["valid"], torch.from_numpy(raw[-5000:].astype("int64")))
    assert data.images["valid"].shape == (5000, 28, 28)


def test_evaluate_is_deterministic_and_in_percent(task: VisionTask) -> None:
    torch.manual_seed(0)
    model = task.build_model("cnn", channels=(4, 8), hidden=16)
    first = task.evaluate(model, "test")
    assert set(first) == {"accuracy", "logloss"} and 0.0 <= first["accuracy"] <= 100.0
    assert task.evaluate(model, "test") == first
    assert model(*task.example_inputs(3)).shape == (3, 10)
    assert task.describe()["rows"] == {"train": 300, "valid": 300, "test": 300}


def test_teacher_learns_and_reloads(task: VisionTask, tmp_path) -> None:
    ctx = slimkit.Context(task=task, seed=0)
    model = train_teacher(task, ctx, recipe=TeacherRecipe(epochs=3, batch_size=32, lr=5e-3,
                                                              weight_decay=0.0),
                          channels=(4, 8), hidden=16)
    assert task.evaluate(model, "valid")["accuracy"] > 40.0  # 10 classes: chance is 10%
    loaded = slimkit.load(slimkit.save(model, tmp_path / "art")).model
    assert isinstance(loaded, SmallCNN)
    assert task.evaluate(loaded) == task.evaluate(model)


def test_missing_or_broken_files_name_the_path(tmp_path) -> None:
    with pytest.raises(slimkit.SlimkitError, match=str(tmp_path)):
        VisionTask.fashion_mnist(root=str(tmp_path))
    with pytest.raises(slimkit.SlimkitError, match="kind"):
        VisionTask.fashion_mnist(limit=10).build_model("resnet")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(gzip.compress(b"\0" * 20))
    with pytest.raises(slimkit.SlimkitError, match="disagree"):
        load_fashion_mnist(tmp_path)
