"""Corrupted or tampered artifacts are refused everywhere a user meets them: `slimkit eval DIR`
and `slimkit run --model DIR` print one line and exit 2 (never a traceback), `slimkit.load`
raises ArtifactError. "+ rehash" cases also rewrite the manifest's weights checksum, so the checks
behind the whole-file hash (safetensors header, manifest hash in the header, per-tensor hashes)
must catch them on their own."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import slimkit
from slimkit.cli.main import main
from slimkit.core.errors import ArtifactError
from slimkit.export.artifact import MANIFEST, WEIGHTS

TASK_OPTS = {"n_rows": 3000, "cardinalities": [100, 80, 5]}
TASK = ["--task", "synthetic", "--task-opt", "n_rows=3000", "--task-opt",
        "cardinalities=[100,80,5]"]


def _save(folder: Path, seed: int) -> Path:
    import torch

    task = slimkit.make_task("synthetic", **TASK_OPTS)
    torch.manual_seed(seed)
    model = task.build_model("deepfm").eval()
    return slimkit.save(model, folder, metrics={"test": task.evaluate(model, "test")}, task=task)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tamper")
    return _save(tmp / "good", 0), _save(tmp / "other", 1)


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def _flip(file: Path, offset: Callable[[bytes], int]) -> None:
    data = bytearray(file.read_bytes())
    data[offset(bytes(data))] ^= 0xFF  # ASCII becomes an invalid UTF-8 byte: never a valid edit
    file.write_bytes(bytes(data))


def _rehash(folder: Path) -> None:
    """What a careful forger does: make the manifest's weights checksum match again."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["weights_sha256"] = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))


def _edit_manifest(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["metrics"]["test"]["auc"] += 0.1
    (folder / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))


def _header_len(folder: Path, delta: int) -> None:
    data = (folder / WEIGHTS).read_bytes()
    length = _header_length(data) + delta
    (folder / WEIGHTS).write_bytes(length.to_bytes(8, "little") + data[8:])


def _weights(folder: Path) -> Path:
    return folder / WEIGHTS


def _manifest(folder: Path) -> Path:
    return folder / MANIFEST


Edit = Callable[[Path, Path], object]  # (artifact to damage, another good artifact)
WEIGHT_CASES: dict[str, Edit] = {
    "weights data byte flipped": lambda f, _: _flip(_weights(f), lambda d: len(d) - 1),
    "weights header byte flipped":
        lambda f, _: _flip(_weights(f), lambda d: 8 + _header_length(d) // 2),
    "weights truncated": lambda f, _: _weights(f).write_bytes(_weights(f).read_bytes()[:-100]),
    "weights header length +1": lambda f, _: _header_len(f, 1),
    "weights header length huge": lambda f, _: _header_len(f, 1 << 40),
    "weights empty": lambda f, _: _weights(f).write_bytes(b""),
}


def _and_rehash(edit: Edit) -> Edit:
    return lambda f, other: (edit(f, other), _rehash(f))


CASES: dict[str, Edit] = {
    **WEIGHT_CASES,
    **{f"{name} + rehash": _and_rehash(edit) for name, edit in WEIGHT_CASES.items()},
    "weights missing": lambda f, _: _weights(f).unlink(),
    "weights of another artifact": lambda f, other: shutil.copy(_weights(other), _weights(f)),
    "manifest value edited": lambda f, _: _edit_manifest(f),
    "manifest value edited + rehash": _and_rehash(lambda f, _: _edit_manifest(f)),
    "manifest JSON broken":
        lambda f, _: _manifest(f).write_text(_manifest(f).read_text()[:-1]),
    "manifest of another artifact": lambda f, other: shutil.copy(_manifest(other), _manifest(f)),
    "manifest missing": lambda f, _: _manifest(f).unlink(),
    "manifest empty": lambda f, _: _manifest(f).write_text(""),
    "manifest is a list": lambda f, _: _manifest(f).write_text("[]"),
}


def _tampered(case: str, artifacts: tuple[Path, Path], tmp_path: Path) -> Path:
    good, other = artifacts
    folder = tmp_path / "artifact"
    shutil.copytree(good, folder)
    CASES[case](folder, other)
    return folder


def test_the_untouched_artifact_loads(artifacts: tuple[Path, Path]) -> None:
    assert slimkit.load(artifacts[0]).model is not None  # so every refusal below is the edit's


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_artifact_is_refused(case: str, artifacts: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    folder = _tampered(case, artifacts, tmp_path)
    with pytest.raises(ArtifactError):
        slimkit.load(folder)
    capsys.readouterr()
    assert main(["eval", str(folder)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimkit: error: "), captured.err
    assert captured.out == ""
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps: [{method: quantize.dynamic_int8}]\n")
    assert main(["run", str(plan), "--model", str(folder), *TASK,
                 "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimkit: error: ")
    assert not (tmp_path / "out" / "stages").exists()


def test_refusal_in_a_real_process_has_no_traceback(artifacts: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    folder = _tampered("weights data byte flipped + rehash", artifacts, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "eval", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "artifact" in proc.stderr
