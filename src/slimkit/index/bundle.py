"""Search bundles: one folder that searches an index without slimkit, only numpy (and ONNX
Runtime with `tokenizers` for text queries).

    folder/
      bundle.json          format, kind, items, dim, config, bytes, check, files (sha256), usage
      index.safetensors    slimkit.index.save_index
      search.py            a verbatim copy of slimkit/index/standalone.py
      encoder/             optional: an exported encoder folder's files (model.onnx, tokenizer)
      texts.jsonl          optional: one JSON string per item, in index order

`python folder/search.py "a query"` prints the top hits; `search.Bundle(folder).verify()`
re-hashes the files. The folder is written beside its destination and renamed into place, so a
reader never sees half a bundle."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import save_index
from .standalone import sha256  # the one search.py verifies with

FORMAT = 1
STANDALONE = Path(__file__).with_name("standalone.py")
BUNDLE_FILE = "bundle.json"


def write_search_bundle(folder: str | os.PathLike[str], index: Any, *,
                        encoder: str | os.PathLike[str] | None = None,
                        texts: Iterable[str] | None = None, check: dict[str, Any] | None = None,
                        force: bool = False) -> Path:
    """Write the search bundle of `index` (any slimkit index) to `folder` and return its path.

    `encoder`: an exported encoder folder (slimkit.export.export_encoder_onnx or a folder with
    export_static_onnx's model.onnx and tokenizer files) whose files are copied, subfolders not.
    `texts`: the documents in index order, one per item. `check`: a JSON-able dict recorded as
    is (e.g. the recall the caller measured). An existing non-empty `folder` is refused unless
    `force`, which replaces it (the old one is moved aside, the new renamed in, the old deleted).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder: {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ValueError(f"folder: {folder} exists and is not empty (force=True replaces it)")
    items = len(index)
    docs = _texts(texts, items)
    source = _encoder_folder(encoder)
    if check is not None:
        if not isinstance(check, dict):
            raise ValueError(f"check: expected a dict or None, got {type(check).__name__}")
        try:
            json.dumps(check, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"check: not JSON-serialisable ({exc})") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        _fill(tmp, index, source, docs, check, folder)
        _make_readable(tmp)
        _move_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _texts(texts: Iterable[str] | None, items: int) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str):
        raise ValueError("texts: expected one string per item, got a single string")
    docs = list(texts)
    if len(docs) != items:
        raise ValueError(f"texts: expected {items} (one per indexed item, in index order), "
                         f"got {len(docs)}")
    bad = next((i for i, t in enumerate(docs) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts: item {bad} is a {type(docs[bad]).__name__}, not a string")
    return docs


def _encoder_folder(encoder: str | os.PathLike[str] | None) -> Path | None:
    if encoder is None:
        return None
    source = Path(encoder)
    if source.suffix == ".onnx":
        source = source.parent
    missing = [n for n in ("model.onnx", "tokenizer.json") if not (source / n).is_file()]
    if missing:
        raise ValueError(f"encoder: {source} has no {' or '.join(missing)} (expected an "
                         f"exported encoder folder)")
    return source


def _fill(tmp: Path, index: Any, encoder: Path | None, texts: list[str] | None,
          check: dict[str, Any] | None, folder: Path) -> None:
    save_index(index, tmp / "index.safetensors")
    shutil.copyfile(STANDALONE, tmp / "search.py")
    if encoder is not None:
        (tmp / "encoder").mkdir()
        for path in sorted(encoder.iterdir()):
            if path.is_file():
                shutil.copyfile(path, tmp / "encoder" / path.name)
    if texts is not None:
        with open(tmp / "texts.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for text in texts:  # json escapes newlines: one line per item
                f.write(json.dumps(text, ensure_ascii=False) + "\n")
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    hashes = {p.relative_to(tmp).as_posix(): sha256(p) for p in files}
    stored = int(index.nbytes)
    scanned = int(getattr(index, "search_bytes", stored))
    others = sum(p.stat().st_size for p in files)
    usage = (f'python {folder / "search.py"} -k 10 "a query"' if encoder is not None else
             f"python -c \"import sys; sys.path.insert(0, '{folder}'); import search; "
             f"print(search.Bundle('{folder}').search(vectors, 10))\"")
    record: dict[str, Any] = {
        "format": FORMAT, "kind": index.kind, "items": len(index), "dim": int(index.dim),
        "config": index.config(),
        "bytes": {"scanned": scanned, "stored": stored, "files": others},
        "check": check, "files": hashes, "usage": usage}
    # "files" counts bundle.json too, whose size depends on that number: settle it.
    for _ in range(5):
        text = json.dumps(record, indent=2) + "\n"
        total = others + len(text.encode("utf-8"))
        if record["bytes"]["files"] == total:
            break
        record["bytes"]["files"] = total
    (tmp / BUNDLE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    # mkdtemp creates 0700; a serving process running as another user must read the bundle.
    umask = os.umask(0)
    os.umask(umask)
    for item in [folder, *folder.rglob("*")]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def _move_into_place(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(tmp, folder)
        return
    if not any(folder.iterdir()):
        folder.rmdir()
        os.replace(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    old.rmdir()  # a free name beside the folder
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        os.replace(old, folder)  # put the old bundle back
        raise
    shutil.rmtree(old)
