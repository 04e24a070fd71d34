"""The image-folder task on tiny PNG folders: both layouts, seeded splits, grayscale and RGB,
one-line errors, and a small CNN that learns the planted stripe orientation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import slimkit
from slimkit.core.context import Context
from slimkit.core.errors import SlimkitError
from slimkit.tasks.vision import SmallCNN, TeacherRecipe, VisionTask, train_teacher
from slimkit.tasks.vision.folder_task import FolderCNN

CLASSES = ("diagonal", "horizontal", "vertical")


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    """`count` noisy 20x20 stripe images per class, random phase; each class has its own
    orientation and colour tint, so grayscale and RGB both carry the label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:20, 0:20]
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        coord = {"diagonal": yy + xx, "horizontal": yy, "vertical": xx}[name]
        for i in range(count):
            gray = 127 + 90 * np.sin(coord * np.pi / 2.5 + rng.uniform(0, 6.3))
            rgb = gray[..., None] + rng.normal(0, 30, (20, 20, 3))
            rgb[..., c] += 40
            Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    write_images(root, 30)
    (root / "vertical" / "notes.txt").write_text("not an image")  # ignored
    (root / ".cache").mkdir()  # hidden folders are not classes
    return root


def test_flat_folder_loads_and_splits(flat: Path) -> None:
    task = VisionTask.image_folder(str(flat), split=[0.6, 0.2, 0.2])
    info = task.describe()
    assert info["rows"] == {"train": 54, "valid": 18, "test": 18}  # 18/6/6 per class
    assert info["classes"] == list(CLASSES) and info["image_shape"] == [1, 28, 28]
    assert info["layout"] == "flat" and info["root"] == str(flat.resolve())
    for split in ("valid", "test"):
        assert torch.bincount(task.data.labels[split]).tolist() == [6, 6, 6]
    batch = next(task.train_batches(54, seed=0))
    assert batch["image"].shape == (54, 1, 28, 28) and batch["label"].dtype == torch.int64
    assert abs(float(batch["image"].mean())) < 1e-4 and abs(float(batch["image"].std()) - 1) < 0.01
    assert task.example_inputs(100)[0].shape == (100, 1, 28, 28)


def test_split_depends_on_the_seed_and_limit(flat: Path) -> None:
    a, b = VisionTask.image_folder(str(flat), seed=3), VisionTask.image_folder(str(flat), seed=3)
    c = VisionTask.image_folder(str(flat), seed=4)
    assert torch.equal(a.data.images["test"], b.data.images["test"])
    assert not torch.equal(a.data.images["test"], c.data.images["test"])
    small = VisionTask.image_folder(str(flat), limit=10, split=[0.6, 0.2, 0.2])
    assert small.describe()["rows"] == {"train": 18, "valid": 6, "test": 6}


def test_pre_split_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "train", 18, seed=1)
    write_images(tmp_path / "test", 4, seed=2)
    task = VisionTask.image_folder(str(tmp_path))  # valid: 0.1 / 0.9 of each train class
    assert task.describe()["rows"] == {"train": 48, "valid": 6, "test": 12}
    assert task.describe()["layout"] == "pre-split"
    write_images(tmp_path / "val", 3, seed=3)
    task = VisionTask.image_folder(str(tmp_path))
    assert task.describe()["rows"] == {"train": 54, "valid": 9, "test": 12}


def test_rgb_images_get_a_cnn_of_their_shape(flat: Path, tmp_path: Path) -> None:
    task = VisionTask.image_folder(str(flat), size=24, grayscale=False)
    assert task.describe()["image_shape"] == [3, 24, 24] and len(task.describe()["mean"]) == 3
    model = task.build_model("cnn", channels=[4, 8], hidden=16)
    assert isinstance(model, FolderCNN)
    assert model.slimkit_spec["kwargs"]["in_channels"] == 3
    assert model(*task.example_inputs(5)).shape == (5, 3)
    slimkit.save(model, tmp_path / "art", task=task)  # FolderCNN is a registered module type
    loaded = slimkit.load(tmp_path / "art").model.eval()
    assert torch.equal(loaded(*task.example_inputs(5)), model.eval()(*task.example_inputs(5)))
    gray = VisionTask.image_folder(str(flat)).build_model("cnn", channels=[4, 8], hidden=16)
    assert type(gray) is SmallCNN and gray.fc2.out_features == 3
    with pytest.raises(SlimkitError, match="num_classes: the folder has 3 classes, got 10"):
        task.build_model("cnn", num_classes=10)


@pytest.mark.parametrize("grayscale", [True, False])
def test_small_cnn_learns_the_stripes(grayscale: bool, tmp_path: Path) -> None:
    write_images(tmp_path, 60)
    task = VisionTask.image_folder(str(tmp_path), grayscale=grayscale, split=[0.6, 0.2, 0.2])
    recipe = TeacherRecipe(epochs=4, batch_size=16, weight_decay=0.0)
    model = train_teacher(task, Context(task=task, seed=0), "cnn", recipe=recipe,
                          channels=[8, 16], hidden=32)
    assert task.evaluate(model, "test")["accuracy"] > 70.0  # chance is 33%


def _error(root: Path, **kwargs: Any) -> str:
    with pytest.raises(SlimkitError) as info:
        VisionTask.image_folder(str(root), **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    assert "root: no such folder" in _error(tmp_path / "missing")
    assert "root: no class folders in" in _error(tmp_path)
    write_images(tmp_path, 5)
    bad = tmp_path / "vertical" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    assert f"image: cannot read {str(bad)!r}" in _error(tmp_path)
    bad.unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert f"class 'empty': no image files in {str(tmp_path / 'empty')!r}" in _error(tmp_path)
    (tmp_path / "empty" / "readme.txt").unlink()
    (tmp_path / "empty").rmdir()
    assert "split: 'valid' gets no images" in _error(tmp_path, split=[0.98, 0.01, 0.01])
    assert "size: expected an int >= 16, got 8" in _error(tmp_path, size=8)


def test_one_class_and_stray_test_classes_are_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "only", 4)
    for name in CLASSES[1:]:
        (tmp_path / "only" / name).rename(tmp_path / name)
    assert "found 1 class folder ('diagonal')" in _error(tmp_path / "only")
    write_images(tmp_path / "pre" / "train", 4)
    write_images(tmp_path / "pre" / "test", 2)
    (tmp_path / "pre" / "test" / "extra").mkdir()
    assert "class 'extra': in" in _error(tmp_path / "pre")
