"""Any folder of images by class as image data: read with Pillow, resized to one square size,
split with a seed per class; per-channel pixel statistics come from the train split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...core.errors import SlimkitError
from ..batching import check_split
from .data import ImageData

try:
    from PIL import Image
except ImportError:  # Pillow is needed by this task only, so it is not a core dependency
    raise SlimkitError("image-folder: needs Pillow; run `pip install pillow`") from None

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLITS = ("train", "valid", "test")
# Each stage of the CNN is a 5x5 conv then a 2x2 pool: 16 px is the smallest that leaves 1x1.
MIN_SIZE = 16
_LAYOUTS = "root/<class>/<images>, or root/train/<class>/... and root/test/<class>/..."


@dataclasses.dataclass
class FolderData(ImageData):
    """uint8 images [N, C, S, S] per split, plus what normalising and describing them needs."""

    classes: tuple[str, ...]
    mean: torch.Tensor  # [C], of the train pixels scaled to [0, 1]
    std: torch.Tensor
    root: str
    layout: str


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".")}


def _image_files(folder: Path, name: str) -> list[Path]:
    """Image files anywhere under a class folder, by suffix, in a fixed (sorted) order."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise SlimkitError(f"class {name!r}: no image files in {str(folder)!r} "
                           f"(looked for {', '.join(SUFFIXES)})")
    return files


def read_image(path: Path, size: int, grayscale: bool) -> np.ndarray:
    """uint8 [C, size, size]: converted to L or RGB (alpha dropped), resized without cropping."""
    try:
        with Image.open(path) as img:
            converted = img.convert("L" if grayscale else "RGB")
            pixels = np.asarray(converted.resize((size, size), Image.Resampling.BILINEAR))
    # Pillow signals a bad file with any of these (SyntaxError for some broken headers).
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SlimkitError(f"image: cannot read {str(path)!r} ({type(exc).__name__}: "
                           f"{detail})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _cut(n: int, fractions: Sequence[float]) -> list[slice]:
    # The epsilon absorbs float error in sums such as 0.7 + 0.2 (0.8999...).
    n_train = int(n * fractions[0] + 1e-9)
    n_valid = int(n * (fractions[0] + fractions[1]) + 1e-9) - n_train
    return [slice(0, n_train), slice(n_train, n_train + n_valid), slice(n_train + n_valid, n)]


def _check(size: int, grayscale: bool, split: Sequence[float], seed: int,
           limit: int | None) -> tuple[float, ...]:
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise SlimkitError(f"size: expected an int >= {MIN_SIZE}, got {size!r}")
    if not isinstance(grayscale, bool):
        raise SlimkitError(f"grayscale: expected true or false, got {grayscale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SlimkitError(f"seed: expected an int, got {seed!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SlimkitError(f"limit: expected an int >= 1 or null, got {limit!r}")
    return check_split(split)


def _assign(root: Path, fractions: Sequence[float], seed: int,
            limit: int | None) -> tuple[str, list[str], dict[str, list[tuple[Path, int]]]]:
    """(layout, classes, split -> [(file, class index)]); files shuffled per class with `seed`."""
    rng = np.random.default_rng(seed)
    top = _class_dirs(root)
    presplit = "train" in top and "test" in top
    sources = {"train": top["train"], "test": top["test"]} if presplit else {"all": root}
    if presplit and ("valid" in top or "val" in top):
        sources["valid"] = top["valid"] if "valid" in top else top["val"]
    found = {k: _class_dirs(v) for k, v in sources.items()}
    base = found["train" if presplit else "all"]
    where = sources["train" if presplit else "all"]
    if not base:
        raise SlimkitError(f"root: no class folders in {str(where)!r} (expected {_LAYOUTS})")
    if len(base) < 2:
        raise SlimkitError(f"root: found 1 class folder ({next(iter(base))!r}) in "
                           f"{str(where)!r}; classification needs at least 2")
    classes = list(base)
    out: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for source, dirs in found.items():
        for name, folder in dirs.items():
            if name not in base:
                raise SlimkitError(f"class {name!r}: in {str(sources[source])!r} but not in "
                                   f"{str(where)!r}")
            files = _image_files(folder, name)
            files = [files[i] for i in rng.permutation(len(files))][:limit]
            label = classes.index(name)
            if source == "all":  # flat layout: each class cut train / valid / test
                parts = _cut(len(files), fractions)
            elif source != "train":
                parts = [slice(0, 0)] * 3
                parts[SPLITS.index(source)] = slice(None)
            elif "valid" in sources:
                parts = [slice(None), slice(0, 0), slice(0, 0)]
            else:  # pre-split without a valid folder: valid is split[1]'s share of train
                n_train = int(len(files) * fractions[0] / (fractions[0] + fractions[1]))
                parts = [slice(0, n_train), slice(n_train, None), slice(0, 0)]
            for split, part in zip(SPLITS, parts, strict=True):
                out[split] += [(f, label) for f in files[part]]
    return ("pre-split" if presplit else "flat"), classes, out


def load_image_folder(root: str | Path, *, size: int = 28, grayscale: bool = True,
                      split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                      limit: int | None = None) -> FolderData:
    """Images under `root` by class folder; see `VisionTask.image_folder` for the layouts."""
    fractions = _check(size, grayscale, split, seed, limit)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise SlimkitError(f"root: no such folder {str(folder)!r}")
    layout, classes, files = _assign(folder, fractions, seed, limit)
    images, labels = {}, {}
    for name in SPLITS:
        if not files[name]:
            raise SlimkitError(f"split: {name!r} gets no images with fractions {list(fractions)} "
                               f"(use more images per class or a larger {name} fraction)")
        images[name] = torch.from_numpy(np.stack([read_image(f, size, grayscale)
                                                  for f, _ in files[name]]))
        labels[name] = torch.tensor([c for _, c in files[name]], dtype=torch.int64)
    pixels = images["train"].float().div(255.0).transpose(0, 1).flatten(1)  # [C, N * S * S]
    return FolderData(images, labels, classes=tuple(classes), mean=pixels.mean(dim=1),
                      std=pixels.std(dim=1).clamp(min=1e-3), root=str(folder.resolve()),
                      layout=layout)
