"""save / load: a directory with model.safetensors and manifest.json.

The manifest names the model builder and the structural edits the plan made; `load` rebuilds the
module tree from them and fills it from the verified tensors, so nothing is unpickled. The weights
file's header carries a hash of the manifest and the manifest a hash of the weights file, so an
edit to either is refused. (This detects corruption and careless edits; it is not a signature.)

A tensor several state-dict names share (tied weights: the same Parameter or buffer object) is
stored once, under its first name; the manifest lists the others as `{"same_as": first, "shape",
"dtype"}`, and `load` gives the whole group one tensor again, whether or not the rebuilt model
ties them itself (a tied low-bit head is rebuilt from its spec with buffers of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from ..core.compress import edit_log
from ..core.errors import ArtifactError, SlimkitError, one_line
from ..core.module_types import module_type, needs_instance, type_name
from ..core.task import describe
from ..graph import apply_edit, restore_masks
from .assign_load import (
    TensorFile,
    assign_state,
    decode_state,
    empty_weights,
    meta_leftovers,
    release_freed_heap,
    retie,
    shared_names,
    tie_groups,
)
from .encoding import alias_meta, encode
from .hf_builder import build_transformers

FORMAT = "slimkit.artifact"
VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
_MANIFEST_HASH = "slimkit.manifest_sha256"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Artifact:
    model: nn.Module
    manifest: dict[str, Any]
    path: Path


def save(model: nn.Module, path: str | Path, *, plan: dict[str, Any] | None = None,
         metrics: dict[str, Any] | None = None, task: Any = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact directory atomically (a temp dir renamed into place).

    With `task`, the manifest records the task so `slimkit eval` can re-measure the artifact.
    Any module can be saved. One without a `slimkit_spec` (a builder and its arguments) is
    recorded by its class name only, and loads into an instance the caller builds (see `load`).
    """
    spec = model_spec(model)
    path = Path(path)
    stored, tensors = {}, {}
    state = model.state_dict()
    aliases = shared_names(model, state)
    for name, tensor in state.items():
        if name in aliases:  # a tensor several names share (tied weights): stored once
            tensors[name] = alias_meta(tensor, aliases[name])
            continue
        parts, meta = encode(name, tensor)
        stored.update(parts)
        tensors[name] = meta
    del state
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": spec,
                                "edits": list(edit_log(model)), "plan": plan,
                                "metrics": metrics or {}}
    if task is not None:
        manifest["task"] = describe(task)
        manifest["task_spec"] = getattr(task, "spec", None)
    manifest.update(extra or {})
    manifest["tensors"] = tensors
    with _atomic_dir(path) as tmp:
        safetensors.torch.save_file(stored, str(tmp / WEIGHTS),
                                    metadata={_MANIFEST_HASH: _manifest_sha256(manifest)})
        manifest["weights_sha256"] = _file_sha256(tmp / WEIGHTS)
        # Compact JSON: on small models the manifest is a visible share of the bytes.
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
    return path


def load(path: str | Path, *, model: nn.Module | None = None) -> Artifact:
    """Rebuild the model, refusing corrupted or tampered files with an ArtifactError.

    Without `model`, the class the manifest names must be registered
    (`slimkit.register_module_type`; slimkit's and torch.nn's own are). With `model`, a freshly
    built instance of the saved model's class (or a copy of the model the artifact was
    compressed from), the artifact is loaded into it: the logged structural edits and swapped
    layers it lacks are replayed onto it, then its tensors are filled. The manifest never makes
    slimkit import or run code the caller did not allow.
    """
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"artifact: {str(weights)!r} is missing")
    if _file_sha256(weights) != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"artifact: {str(weights)!r} fails its checksum (corrupted or tampered)")
    try:
        with safetensors.safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}  # validates the header; no tensor is read here
    except Exception as exc:  # safetensors raises several types for a malformed header
        raise ArtifactError(f"artifact: cannot read {str(weights)!r} ({exc})") from None
    if header.get(_MANIFEST_HASH) != _manifest_sha256(manifest):
        raise ArtifactError(f"artifact: {MANIFEST} does not match the weights it was saved "
                            "with (tampered or mixed up)")
    if model is not None:
        return _load_into(model, manifest, path)
    try:
        return _load_by_name(manifest, weights, path)
    except ArtifactError as exc:
        if not manifest["model"].get("instance") or "registered module type" in str(exc):
            raise  # already says how to allow the class or pass an instance
        name = str(manifest["model"].get("builder")).rpartition(":")[2]
        raise ArtifactError(f"{exc}; the model was saved from an instance of {name} (slimkit "
                            f"never saw its constructor's arguments): pass slimkit.load(path, "
                            f"model={name}(...)) (CLI: --model package.module:factory)") from None


def _load_by_name(manifest: dict[str, Any], weights: Path, path: Path) -> Artifact:
    """The model rebuilt from the class and arguments the manifest names, then filled."""
    empty = _build_empty(manifest)
    # Constructors allocate (and zero) real tensors before they are moved to meta; glibc keeps
    # those pages resident unless told to give them back.
    release_freed_heap()
    with open(weights, "rb") as fh:
        tied = tie_groups(empty) if empty is not None else {}
        state = decode_state(manifest["tensors"], TensorFile(fh), tied)
    model = _fill_empty(empty, state) if empty is not None else None
    if model is None:
        model = _build_and_copy(manifest, state)
    del state
    release_freed_heap()  # what layers' own load hooks freed (re-packing codes, say)
    retie(model, manifest["tensors"])
    restore_masks(model)
    return Artifact(model.eval(), manifest, path)


def reload(path: str | Path, model_factory: Callable[[], nn.Module] | None) -> Artifact:
    """`load(path)`, or into `model_factory()` when the artifact's model loads into an instance
    (`needs_instance`: saved without a slimkit_spec, or a class from outside slimkit)."""
    if model_factory is not None and needs_instance(read_manifest(Path(path))["model"]):
        return load(path, model=model_factory())
    return load(path)


def _load_into(model: nn.Module, manifest: dict[str, Any], path: Path) -> Artifact:
    """The caller's own instance, with the artifact's edits replayed and its tensors copied in."""
    if not isinstance(model, nn.Module):
        raise SlimkitError(f"load: model must be an nn.Module instance, got "
                           f"{type(model).__name__}")
    done = list(edit_log(model))
    if done != manifest["edits"][:len(done)]:
        raise SlimkitError("load: model carries slimkit edits the artifact does not start "
                           "with; pass a freshly built instance")
    saved = manifest["model"]
    saved_class = str(saved.get("builder", "")).rpartition(":")[2].rpartition(".")[2]
    if saved_class != type(model).__name__:
        log.warning("load: artifact was saved from %s, loading into %s", saved.get("builder"),
                    type_name(type(model)))
    elif getattr(model, "slimkit_spec", None) is None and not saved.get("instance"):
        model.slimkit_spec = dict(saved)  # type: ignore[assignment]  # so it saves the same way
    for edit in manifest["edits"][len(done):]:  # a model the artifact grew from has some
        apply_edit(model, edit)
    with open(path / WEIGHTS, "rb") as fh:
        state = decode_state(manifest["tensors"], TensorFile(fh), tie_groups(model))
    if any(t.is_meta for t in model.state_dict().values()):  # built under empty_weights()
        assign_state(model, state)
        leftovers = meta_leftovers(model)
        if leftovers:
            raise ArtifactError(f"artifact: {leftovers[0]!r} of the given model has no tensor "
                                "in the artifact")
    else:
        _copy_state(model, state)
    del state
    release_freed_heap()
    retie(model, manifest["tensors"])
    restore_masks(model)
    return Artifact(model.eval(), manifest, path)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """What the manifest records to rebuild `model`: its `slimkit_spec` when it has one (a
    builder and its arguments), else its class marked `instance`: slimkit never saw its
    constructor's arguments, so it loads into an instance the caller builds."""
    spec = getattr(model, "slimkit_spec", None)
    if spec is None:
        return {"builder": type_name(type(model)), "kwargs": {}, "instance": True}
    if not isinstance(spec, dict) or not isinstance(spec.get("builder"), str) \
            or not isinstance(spec.get("kwargs", {}), dict):
        raise SlimkitError("save: model.slimkit_spec must be {'builder': 'module:Class', "
                           f"'kwargs': {{...}}}}, got {spec!r}")
    return spec


def _build_empty(manifest: dict[str, Any]) -> nn.Module | None:
    """The model with storage-less weights, or None where a constructor or a replayed edit needs
    real tensors (the caller then builds it the classic way, which reports any manifest error)."""
    try:
        with empty_weights():
            return build_model(manifest)
    except ArtifactError:
        raise  # a refused or malformed manifest: no other way to build will do better
    except Exception as exc:  # noqa: BLE001  # recorded: logged; the classic build follows
        log.warning("load: building without storage failed (%s); building with random init, "
                    "which holds the weights twice while loading", exc)
        return None


def _fill_empty(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module | None:
    try:
        assign_state(model, state)
    except Exception as exc:  # noqa: BLE001  # recorded: logged; the classic build follows
        log.warning("load: assigning tensors failed (%s); copying into a built model, which "
                    "holds the weights twice while loading", exc)
        return None
    leftovers = meta_leftovers(model)
    if leftovers:
        log.warning("load: %s left without storage; copying into a built model, which holds "
                    "the weights twice while loading", leftovers[:3])
        return None
    return model


def _build_and_copy(manifest: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The classic path: random init, then copy (twice the memory at the peak)."""
    try:
        model = build_model(manifest)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ArtifactError(f"artifact: malformed manifest ({type(exc).__name__}: {exc})") \
            from None
    _copy_state(model, state)
    return model


def _copy_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"artifact: tensors do not fit the rebuilt model ({first})") from None


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
    for key, kind in (("model", dict), ("tensors", dict), ("edits", list)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"artifact: manifest field {key!r} is missing or malformed")
    return manifest


def build_model(manifest: dict[str, Any]) -> nn.Module:
    spec = manifest["model"]
    builder = str(spec.get("builder"))
    if builder.partition(":")[0] == "transformers":
        model = build_transformers(builder, spec.get("kwargs", {}))
    else:
        cls = module_type(builder)
        try:
            model = cls(**spec.get("kwargs", {}))
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact: cannot build {builder!r} ({one_line(exc)})") \
                from None
    for edit in manifest.get("edits", []):
        apply_edit(model, edit)
    return model


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of the whole artifact (weights + manifest)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def copy_artifact(src: str | Path, dst: str | Path) -> Path:
    """Copy an artifact directory atomically (temp copy renamed into place)."""
    src, dst = Path(src), Path(dst)
    with _atomic_dir(dst) as tmp:
        for name in (WEIGHTS, MANIFEST):
            shutil.copy2(src / name, tmp / name)
    return dst


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """A temp dir beside `path`, made readable and renamed onto `path` if the block succeeds,
    removed if it fails: readers see the old directory or the complete new one."""
    _check_replaceable(path)  # before any work: the user's files are never replaced
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _make_readable(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _manifest_sha256(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "weights_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _make_readable(folder: Path) -> None:
    # mkdtemp creates 0700; a serving process running as another user must read the artifact.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~umask)


def _check_replaceable(path: Path) -> None:
    """Refuse to replace a `path` that is not an artifact folder of slimkit's own files."""
    if not path.exists():
        return
    foreign = sorted(p.name for p in path.iterdir() if p.name not in (WEIGHTS, MANIFEST)) \
        if path.is_dir() else [path.name]
    if foreign:
        raise SlimkitError(f"artifact: {str(path)!r} exists and holds {foreign[0]!r}, which "
                           "slimkit did not write; choose another path or move it away")


def replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an existing artifact directory with the shortest possible
    gap. A `dst` holding anything but an artifact's own files is never removed."""
    if dst.exists():
        _check_replaceable(dst)
    swap_dir(src, dst)


def swap_dir(src: Path, dst: Path) -> None:
    """Move directory `src` to `dst`; an existing `dst` is moved aside first and removed only
    after `src` is in place, so a reader never finds `dst` missing for longer than a rename."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
