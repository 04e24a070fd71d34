"""Saving and loading indexes: one safetensors file whose header metadata holds a JSON record
(kind, config, format version). Loading looks the kind up in a fixed table, never imports a
name from the file, and rebuilds through each class's checks; nothing is unpickled.

`load_index(path, mmap=True)` maps the tensors from the file instead of reading them: pages are
read when touched, so a binary index with a rescoring store keeps only the bits it scans in
memory and reads the store's rows of each query's candidates from disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import SlimkitError
from .binary import BinaryIndex
from .flat import FlatIndex
from .int8 import Int8Index
from .pq import PQIndex
from .standalone import read_safetensors  # the parser search.py uses, torch-free

FORMAT = 1
KEY = "slimkit_index"
INDEX_TYPES: dict[str, Any] = {c.kind: c for c in (FlatIndex, Int8Index, BinaryIndex, PQIndex)}


def save_index(index: Any, path: str | os.PathLike[str]) -> Path:
    """Write `index` to `path` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    record = {"format": FORMAT, "kind": index.kind, "config": index.config(),
              "items": len(index), "dim": index.dim}
    tmp = path.with_name(path.name + ".partial")
    tensors = {k: v.contiguous() for k, v in index.tensors().items()}
    try:
        save_file(tensors, str(tmp), metadata={KEY: json.dumps(record)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_index(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """The index saved at `path` (its tensors memory-mapped with `mmap`); SlimkitError naming
    the problem for a file that is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        if mmap:
            meta, tensors = mapped_tensors(path)
        else:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iter)
    except (OSError, SafetensorError, ValueError) as exc:
        raise SlimkitError(f"index: cannot read {path} ({exc})") from None
    try:
        record = json.loads(meta[KEY])
        kind, config = record["kind"], record["config"]
    except (KeyError, TypeError, ValueError):
        raise SlimkitError(f"index: {path} has no slimkit index record") from None
    if record.get("format") != FORMAT or kind not in INDEX_TYPES:
        raise SlimkitError(f"index: {path}: unsupported format {record.get('format')!r} or kind "
                           f"{kind!r} (known: {', '.join(INDEX_TYPES)})")
    try:
        index = INDEX_TYPES[kind].from_tensors(tensors, config)
    except (KeyError, TypeError, ValueError) as exc:
        raise SlimkitError(f"index: {path}: {exc}") from None
    if len(index) != record.get("items") or index.dim != record.get("dim"):
        raise SlimkitError(f"index: {path}: header says {record.get('items')} x "
                           f"{record.get('dim')}, tensors hold {len(index)} x {index.dim}")
    return index


def mapped_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, each tensor a copy-on-write memory map of its
    bytes in the file (the file is never written). ValueError for a malformed header."""
    meta, arrays = read_safetensors(path, mode="c")
    return meta, {name: torch.from_numpy(a) for name, a in arrays.items()}
