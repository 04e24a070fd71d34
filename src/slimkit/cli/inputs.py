"""The input model of `run` and `auto` (`--model`): read without ever executing pickled code,
checked before any work, and every problem told in one line that says what to do."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import SlimkitError, load
from ..core import check_finite

FIX = "save model.state_dict() with torch.save, or pass an artifact directory"


def load_input_model(path: Path, task: Any, arch: str) -> torch.nn.Module:
    """An artifact directory or a state-dict checkpoint as a model in eval mode, with finite
    weights; SlimkitError naming --model otherwise."""
    if path.is_dir():
        model = load(path).model
    elif not path.is_file():
        raise SlimkitError(f"--model: no such file or directory {str(path)!r}")
    else:
        model = _from_checkpoint(path, task, arch)
    check_finite(model, field="--model")
    return model.eval()


def _read_checkpoint(path: Path) -> Any:
    # weights_only=True stays: a pickled object is refused by torch's restricted unpickler and
    # never runs. torch's own message advises turning it off, so it is not passed on.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the same to the user
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found and zipfile.is_zipfile(path):
            raise SlimkitError(f"--model: {str(path)!r} is not a weights-only checkpoint (it "
                               f"pickles {found.group(1)}, which slimkit never runs); "
                               f"{FIX}") from None
        raise SlimkitError(f"--model: {str(path)!r} is not a readable torch checkpoint "
                           f"({type(exc).__name__}); {FIX}") from None


def _from_checkpoint(path: Path, task: Any, arch: str) -> torch.nn.Module:
    state = _read_checkpoint(path)
    model = task.build_model(arch)
    try:
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, AttributeError, TypeError) as exc:
        first = _plain(str(exc).strip().splitlines()[0])
        raise SlimkitError(f"--model: checkpoint does not fit {arch!r} ({first})") from None
    return model  # type: ignore[no-any-return]


def _plain(text: str) -> str:
    """Without terminal colour codes (torch colours some messages)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
