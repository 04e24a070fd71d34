"""The user's own table (CSV, TSV or parquet) as a CTR task: check the declared columns against
the file, read only those (the file is never written), encode with `features.encode_frame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...core.errors import SlimkitError

try:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the "data" extra: needed by the table tasks only
    raise SlimkitError("table: needs pandas and pyarrow; run `pip install 'slimkit[data]'`") \
        from None
from ..batching import check_split
from .data import CTRData
from .features import encode_frame
from .task import CTRTask

# Suffix -> format; compressed CSVs are read by pandas, which infers the compression.
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv", ".tsv.gz": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}
_SHOWN = 8  # columns listed when a declared one is missing


def column_list(value: str | Sequence[str] | None, role: str) -> list[str]:
    """A list of column names from YAML-friendly input: a list, or one string (commas split it,
    so `--task-opt numeric=price,age` works)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise SlimkitError(f"{role}: expected a column name or a list of names, got {value!r}")
    return list(value)


def declared(label: str, categorical: list[str], numeric: list[str], bag: list[str],
             time: str | None) -> dict[str, str]:
    """Column -> role, in role order; the same column declared twice is an error."""
    if not isinstance(label, str) or not label:
        raise SlimkitError(f"label: expected a column name, got {label!r}")
    if time is not None and not isinstance(time, str):
        raise SlimkitError(f"time: expected a column name, got {time!r}")
    if not categorical and not numeric:
        raise SlimkitError("categorical, numeric: declare at least one feature column, got none")
    roles: dict[str, str] = {}
    pairs = [("label", label), *(("categorical", c) for c in categorical),
             *(("numeric", c) for c in numeric), *(("bag", c) for c in bag),
             *([("time", time)] if time is not None else [])]
    for role, column in pairs:
        if column in roles:
            raise SlimkitError(f"{role}: column {column!r} is declared twice "
                               f"(as {roles[column]} and as {role})")
        roles[column] = role
    return roles


def table_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise SlimkitError(f"path: unsupported file type {path.suffix or '(none)'!r} for "
                       f"{str(path)!r} (expected {', '.join(FORMATS)})")


def _unreadable(path: Path, kind: str, exc: BaseException) -> SlimkitError:
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return SlimkitError(f"path: cannot read {str(path)!r} as {kind} "
                        f"({type(exc).__name__}: {detail})")


# What pandas and pyarrow raise for a bad file: parse, decode and I/O errors.
_READ_ERRORS = (OSError, ValueError, TypeError, NotImplementedError, pa.ArrowException)


def read_table(path: Path, roles: dict[str, str], *, text: Sequence[str] = ()) -> pd.DataFrame:
    """Only the declared columns (`roles`: column -> role) of the file at `path`; `text` columns
    are read from CSV as strings (so an id like "007" stays distinct from "7"). A missing column
    names a few of those present."""
    kind = table_format(path)
    sep = "\t" if kind == "tsv" else ","
    try:
        if kind == "parquet":
            present = list(pq.read_schema(path).names)
        else:
            present = [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except _READ_ERRORS as exc:
        raise _unreadable(path, kind, exc) from None
    columns = list(roles)
    for column in columns:
        if column not in present:
            shown = ", ".join(present[:_SHOWN]) + (f", ... ({len(present)} in all)"
                                                   if len(present) > _SHOWN else "")
            raise SlimkitError(f"{roles[column]}: column {column!r} not in {path.name!r} "
                               f"(it has: {shown})")
    try:
        if kind == "parquet":
            return pd.read_parquet(path, columns=columns)
        return pd.read_csv(path, sep=sep, usecols=columns, dtype={c: str for c in text})
    except _READ_ERRORS as exc:
        raise _unreadable(path, kind, exc) from None


class TableTask(CTRTask):
    """A CTR task read from a table; `describe` adds the file and the role of each column."""

    def __init__(self, data: CTRData, *, name: str, source: dict[str, Any]) -> None:
        super().__init__(data, name=name)
        self.source = source

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": dict(self.source)}


def load_table(path: str | Path, *, label: str, categorical: str | Sequence[str] = (),
               numeric: str | Sequence[str] = (), bag: str | Sequence[str] = (),
               time: str | None = None, split: Sequence[float] = (0.8, 0.1, 0.1),
               seed: int = 0, bins: int = 16) -> TableTask:
    """Read and encode a table; see `CTRTask.from_table` for the arguments."""
    cats, nums = column_list(categorical, "categorical"), column_list(numeric, "numeric")
    flags = column_list(bag, "bag")
    roles = declared(label, cats, nums, flags, time)
    fractions = check_split(split)  # before reading: a bad option should not wait for the file
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SlimkitError(f"seed: expected an int, got {seed!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise SlimkitError(f"path: no such file {str(file)!r}")
    frame = read_table(file, roles, text=cats)
    data = encode_frame(frame, label=label, categorical=cats, numeric=nums, bag=flags,
                        time=time, split=fractions, seed=seed, bins=bins)
    source = {"path": str(file.resolve()), "format": table_format(file), "rows": len(frame),
              "label": label, "categorical": cats, "numeric": nums, "bins": bins, "bag": flags,
              "time": time, "split": [*fractions],
              "order": "time" if time is not None else f"random (seed {seed})"}
    return TableTask(data, name=f"table-{file.name}", source=source)
