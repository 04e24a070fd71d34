"""Encode a DataFrame's declared columns into CTR tensors, with vocabularies and bins fitted on the
training rows only. Shared by tables read from files (`tabular.py`) and MovieLens (`data.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ...core.errors import SlimkitError
from ..batching import check_split
from .data import SPLIT_FRACTIONS, CTRData, _encode, time_split

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MISSING = "\0missing"  # one shared token for every missing categorical value
_TRUTH = {"0": 0.0, "1": 1.0, "false": 0.0, "true": 1.0}


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _show(value: object) -> str:
    """A cell as the user wrote it: numpy scalars as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def binary(series: pd.Series, what: str) -> np.ndarray:
    """0/1 as float32 from 0/1 numbers, booleans or the strings "0", "1", "true", "false".

    Rows in error messages count from 1 in the table's own order (header excluded).
    """
    values = series.to_numpy()
    missing = series.isna().to_numpy()
    if missing.any():
        raise SlimkitError(f"{what}: missing value at row {_first(missing) + 1}")
    if pd.api.types.is_bool_dtype(series):
        return np.asarray(values, dtype=np.float32)
    if pd.api.types.is_numeric_dtype(series):
        x = np.asarray(values, dtype=np.float64)
    else:
        x = series.astype(str).str.strip().str.lower().map(_TRUTH).to_numpy(dtype=np.float64)
    bad = ~np.isin(x, (0.0, 1.0))  # NaN (an unknown string) is bad too
    if bad.any():
        i = _first(bad)
        raise SlimkitError(f"{what}: expected 0/1 or true/false, got {_show(values[i])} at row "
                           f"{i + 1}")
    return np.asarray(x, dtype=np.float32)


def numbers(series: pd.Series, column: str) -> np.ndarray:
    """float64 values, NaN where missing; a value that is present but not a number is an error."""
    if pd.api.types.is_bool_dtype(series):
        return np.asarray(series.to_numpy(), dtype=np.float64)
    x = pd.to_numeric(series, errors="coerce")
    bad = (x.isna() & ~series.isna()).to_numpy()
    if bad.any():
        i = _first(bad)
        raise SlimkitError(f"numeric column {column!r}: {_show(series.iloc[i])} at row {i + 1} "
                           "is not a number")
    return np.asarray(x.to_numpy(dtype=np.float64, na_value=np.nan))


def _dates(text: pd.Series) -> pd.Series:
    """Dates as naive UTC, NaT where unparseable: ISO 8601 first (fast), else each value on its
    own; utc=True lets zoned and naive times mix (naive ones are taken as UTC)."""
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    if parsed.isna().any():
        parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
    return parsed.dt.tz_convert(None)


def time_key(series: pd.Series, column: str) -> np.ndarray:
    """A sortable key: numbers as they are, dates as nanoseconds since 1970. A text column is
    read as numbers or as dates, whichever parses more of its values."""
    missing = series.isna().to_numpy()
    if missing.any():
        raise SlimkitError(f"time column {column!r}: missing value at row {_first(missing) + 1} "
                           "(every row needs a time to be ordered)")
    if pd.api.types.is_bool_dtype(series):
        raise SlimkitError(f"time column {column!r}: true/false values cannot order rows")
    if pd.api.types.is_numeric_dtype(series):
        return np.asarray(series.to_numpy())
    if pd.api.types.is_datetime64_any_dtype(series):
        parsed = series.dt.tz_convert(None) if series.dt.tz is not None else series
    else:
        text = series.astype(str)
        numeric = pd.to_numeric(text, errors="coerce")
        parsed = _dates(text)
        if numeric.notna().sum() >= parsed.notna().sum():
            bad = numeric.isna().to_numpy()
            if not bad.any():
                return np.asarray(numeric.to_numpy(dtype=np.float64))
        else:
            bad = parsed.isna().to_numpy()
        if bad.any():
            i = _first(bad)
            raise SlimkitError(f"time column {column!r}: cannot parse {_show(series.iloc[i])} "
                               f"at row {i + 1} as a number or a date")
    return np.asarray(parsed.to_numpy(dtype="datetime64[ns]")).view(np.int64)


def categories(series: pd.Series) -> np.ndarray:
    """Values to build a vocabulary over: integer columns keep their numbers (so MovieLens ids
    sort as before); anything else is compared as text, missing values as one shared token."""
    missing = series.isna().to_numpy()
    if pd.api.types.is_integer_dtype(series) and not missing.any():
        return np.asarray(series.to_numpy())
    return np.where(missing, MISSING, series.astype(str).to_numpy(dtype=object))


def quantile_bins(x: np.ndarray, train: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    """Ids for a numeric column, so the id-only models can use it as one more field.

    Edges are the training rows' quantiles (ties merged, so a column with few distinct values
    gets fewer bins): ids 1..k for the k bins, k + 1 for missing values (its own learned row),
    0 stays the unused padding row. Values outside the training range fall in the end bins.
    """
    fit = x[train]
    fit = fit[np.isfinite(fit)]
    edges = np.unique(np.quantile(fit, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if fit.size \
        else np.empty(0)
    k = len(edges) + 1
    ids = np.where(np.isnan(x), k + 1, np.searchsorted(edges, x, side="right") + 1)
    return ids.astype(np.int64), k + 2


def flag_bag(flags: np.ndarray) -> np.ndarray:
    """Multi-hot flags [N, K] -> ids of the set flags (1..K, in column order), padded with 0."""
    width = max(int(flags.sum(axis=1).max(initial=0)), 1)
    order = np.argsort(~flags, axis=1, kind="stable")[:, :width]  # set flags first, in order
    return np.where(np.take_along_axis(flags, order, axis=1), order + 1, 0)


def encode_frame(frame: pd.DataFrame, *, label: str, categorical: Sequence[str] = (),
                 numeric: Sequence[str] = (), bag: Sequence[str] = (), time: str | None = None,
                 split: Sequence[float] = SPLIT_FRACTIONS, seed: int = 0,
                 bins: int = 16) -> CTRData:
    """Rows ordered by `time` (stable sort) or shuffled with `seed`, then cut train/valid/test.

    `categorical` and binned `numeric` columns become the sparse fields, in that order; `bag`
    names 0/1 flag columns that together form the multi-valued field (ids 1..K in the order
    given); without it every row's bag is a single padding id (`bag_dim` 1), which the models
    pool to a zero vector. Each split must hold both labels, or AUC is undefined.
    """
    fractions = check_split(split)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise SlimkitError(f"bins: expected an int >= 2, got {bins!r}")
    n = len(frame)
    # Parse (and validate) in the table's own order so errors name the rows the user sees.
    y = binary(frame[label], f"label column {label!r}")
    cats = [categories(frame[c]) for c in categorical]
    nums = [numbers(frame[c], c) for c in numeric]
    flags = np.stack([binary(frame[c].fillna(0), f"bag column {c!r}").astype(bool)
                      for c in bag], axis=1) if bag else np.zeros((n, 0), dtype=bool)
    if time is not None:
        key = time_key(frame[time], time)
        order = np.argsort(key, kind="stable")  # ties keep file order: reproducible
    else:
        order = np.random.default_rng(seed).permutation(n)
    slices = time_split(n, fractions)
    y = y[order]
    for name, s in zip(SPLITS, slices, strict=True):
        pos = int(y[s].sum())
        if pos == 0 or pos == len(y[s]):
            raise SlimkitError(
                f"split: {name!r} gets {len(y[s])} of {n} rows ({pos} positive); each split "
                "needs both labels for AUC (use more rows or a larger fraction)")

    train = np.zeros(n, dtype=bool)
    train[slices[0]] = True
    columns, field_dims = [], []
    for values in cats:
        ids, dim = _encode(values[order], train)
        columns.append(ids)
        field_dims.append(dim)
    for x in nums:
        ids, dim = quantile_bins(x[order], train, bins)
        columns.append(ids)
        field_dims.append(dim)
    bag_ids = flag_bag(flags[order]) if bag else np.zeros((n, 1), dtype=np.int64)
    tensors = {"sparse": torch.from_numpy(np.stack(columns, axis=1)),
               "bag": torch.from_numpy(bag_ids.astype(np.int64)),
               "label": torch.from_numpy(y)}
    splits = {name: {k: v[s] for k, v in tensors.items()}
              for name, s in zip(SPLITS, slices, strict=True)}
    extra = {}
    if time is not None:
        stamps = torch.from_numpy(key[order])
        extra = {f"{name}_{time}": stamps[s] for name, s in zip(SPLITS, slices, strict=True)}
    log.info("table: %d rows, field dims %s, bag width %d", n, field_dims, bag_ids.shape[1])
    return CTRData(splits=splits, field_dims=field_dims, bag_dim=len(bag) + 1,
                   field_names=(*categorical, *numeric), extra=extra)
