"""save / load: a directory with model.safetensors and manifest.json.

The manifest names the model builder and the structural edits the plan made; `load` rebuilds the
module tree from them and fills it from the verified tensors, so nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from ..core.compress import edit_log
from ..core.errors import ArtifactError, SlimkitError
from ..graph import apply_edit, import_object, restore_masks
from .encoding import decode, encode

FORMAT = "slimkit.artifact"
VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Artifact:
    model: nn.Module
    manifest: dict[str, Any]
    path: Path


def save(model: nn.Module, path: str | Path, *, plan: dict[str, Any] | None = None,
         metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact directory atomically (a temp dir renamed into place)."""
    spec = getattr(model, "slimkit_spec", None)
    if not isinstance(spec, dict) or "builder" not in spec:
        raise SlimkitError("save: model has no slimkit_spec (build it through a task or set "
                           "model.slimkit_spec = {'builder': 'module:Class', 'kwargs': {...}})")
    path = Path(path)
    stored, tensors = {}, {}
    for name, tensor in model.state_dict().items():
        parts, meta = encode(name, tensor)
        stored.update(parts)
        tensors[name] = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        safetensors.torch.save_file(stored, str(tmp / WEIGHTS))
        manifest = {"format": FORMAT, "version": VERSION, "model": spec,
                    "edits": list(edit_log(model)), "plan": plan, "metrics": metrics or {},
                    **(extra or {}), "tensors": tensors,
                    "weights_sha256": _file_sha256(tmp / WEIGHTS)}
        # Compact JSON: on small models the manifest is a visible share of the bytes.
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path: str | Path) -> Artifact:
    """Rebuild the model, refusing corrupted or tampered files with an ArtifactError."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"artifact: {str(weights)!r} is missing")
    if _file_sha256(weights) != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"artifact: {str(weights)!r} fails its checksum (corrupted or tampered)")
    try:
        stored = safetensors.torch.load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a malformed header
        raise ArtifactError(f"artifact: cannot read {str(weights)!r} ({exc})") from None
    state = {name: decode(name, meta, stored) for name, meta in manifest["tensors"].items()}
    model = build_model(manifest)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"artifact: tensors do not fit the rebuilt model ({first})") from None
    restore_masks(model)
    return Artifact(model.eval(), manifest, path)


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"artifact: no {MANIFEST} in {str(path)!r}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"artifact: {str(file)!r} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"artifact: {str(file)!r} is not a slimkit manifest")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"artifact: manifest version {manifest.get('version')!r} unsupported")
    return manifest


def build_model(manifest: dict[str, Any]) -> nn.Module:
    spec = manifest["model"]
    cls = import_object(str(spec.get("builder")))
    try:
        model = cls(**spec.get("kwargs", {}))
    except TypeError as exc:
        raise ArtifactError(f"artifact: cannot build {spec.get('builder')!r} ({exc})") from None
    for edit in manifest.get("edits", []):
        apply_edit(model, edit)
    return model


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of the whole artifact (weights + manifest)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
