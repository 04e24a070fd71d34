"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package (gzip + numpy)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import torch

from ...core.errors import SlimkitError

ROOT = Path("/usr/share/datasets/fashion-mnist")
VALID_SIZE = 5000
# Mean and standard deviation of the training pixels (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


@dataclasses.dataclass
class ImageData:
    """Splits of uint8 images [N, 28, 28] and int64 labels [N]; normalized per batch."""

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]


def read_idx(path: Path, header: int) -> np.ndarray:
    """Payload bytes of a gzipped IDX file after its `header` bytes (16 images, 8 labels)."""
    if not path.is_file():
        raise SlimkitError(f"fashion-mnist: no such file {str(path)!r} (install the Debian "
                           "package dataset-fashion-mnist)")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise SlimkitError(f"fashion-mnist: cannot read {str(path)!r} ({exc})") from None
    if len(raw) < header:
        raise SlimkitError(f"fashion-mnist: {str(path)!r} is truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def load_fashion_mnist(root: str | Path = ROOT, *, limit: int | None = None) -> ImageData:
    """train (first 55,000), valid (last 5,000 training images) and test (10,000) splits.

    `limit` keeps the first `limit` rows of every split (for quick tests).
    """
    root = Path(root)
    images, labels = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 16)
        y = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8)
        if x.size != y.size * 28 * 28:
            raise SlimkitError(f"fashion-mnist: {prefix} images and labels disagree in count")
        images[split] = torch.from_numpy(x.reshape(-1, 28, 28).copy())
        labels[split] = torch.from_numpy(y.astype(np.int64))
    images["valid"], labels["valid"] = images["train"][-VALID_SIZE:], labels["train"][-VALID_SIZE:]
    images["train"], labels["train"] = images["train"][:-VALID_SIZE], labels["train"][:-VALID_SIZE]
    if limit is not None:
        images = {k: v[:limit] for k, v in images.items()}
        labels = {k: v[:limit] for k, v in labels.items()}
    return ImageData(images, labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28], zero mean and unit variance over the data."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)
