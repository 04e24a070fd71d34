"""`slimkit run` as users run it, in separate processes: killed with SIGKILL after each stage and
continued with --resume it ends exactly where an uninterrupted run ends (same final metrics, same
final artifact bytes, earlier stage artifacts untouched); the same plan and seed twice gives
bit-identical artifacts for every stage. Each test prints the figure the README states."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each CLI run measures latency and ONNX Runtime: ~30 s

TASK = ["--task", "synthetic", "--task-opt", "n_rows=3000", "--task-opt",
        "cardinalities=[100,80,5]"]
PLAN = """\
version: 1
steps:
- method: prune.magnitude
  sparsity: 0.5
- method: finetune
  epochs: 0.5
- method: quantize.dynamic_int8
- method: quantize.embedding
  bits: 4
"""
STAGES = 4  # plan steps; stage 0 is the teacher
FILES = ("model.safetensors", "manifest.json")


def _command(plan: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "slimkit.cli.main", "run", str(plan), *TASK, "--out", str(out),
            *extra]


def _run(plan: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run(_command(plan, out, *extra), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def artifact_digests(run: Path) -> dict[str, str]:
    """sha256 of both files of every stage artifact and of the final model/, by relative path.
    Manifests hold no timestamps or host data (metrics.json's `created`, stage `seconds` and
    latencies are run-specific, and are not artifacts)."""
    folders = sorted((run / "stages").iterdir()) + [run / "model"]
    return {str((f / name).relative_to(run)): hashlib.sha256((f / name).read_bytes()).hexdigest()
            for f in folders if not f.name.startswith(".") and (f / "manifest.json").is_file()
            for name in FILES}


def _stage_metrics(run: Path) -> list[tuple[str, dict[str, float]]]:
    metrics = json.loads((run / "metrics.json").read_text())
    return [(s["name"], s["metrics"]) for s in metrics["stages"]]


def _finished_stages(run: Path) -> int:
    try:
        return len(json.loads((run / "progress.json").read_text())["stages"])
    except (OSError, ValueError, KeyError):  # not written yet
        return 0


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    path.write_text(PLAN)
    return path


@pytest.fixture(scope="module")
def reference(plan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run: what every interrupted or repeated run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(plan, out)
    return out


def test_same_plan_and_seed_twice_is_bit_identical(plan: Path, reference: Path,
                                                   tmp_path: Path) -> None:
    _run(plan, tmp_path / "again")
    first, second = artifact_digests(reference), artifact_digests(tmp_path / "again")
    assert len(first) == 2 * (STAGES + 2)  # teacher + 4 stages + model/, two files each
    same = [k for k in first if second.get(k) == first[k]]
    print(f"\nsame plan+seed twice: identical sha256 for {len(same) // 2} of {len(first) // 2} "
          "artifacts (model.safetensors and manifest.json)")
    assert second == first
    assert _stage_metrics(tmp_path / "again") == _stage_metrics(reference)


@pytest.mark.parametrize("stage", range(STAGES + 1))  # 0: after the teacher
def test_kill_after_a_stage_then_resume(stage: int, plan: Path, reference: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(plan, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _finished_stages(out) < stage + 1:  # + the teacher
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline, f"stage {stage} never finished"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: like a lost machine
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = artifact_digests(out)
    assert len(kept) >= 2 * (stage + 1)  # every finished stage is on disk
    assert all(reference_digest == kept[k] for k, reference_digest
               in artifact_digests(reference).items() if k in kept)

    _run(plan, out, "--resume")
    after = artifact_digests(out)
    assert {k: after[k] for k in kept} == kept  # nothing finished before the kill was touched
    assert after == artifact_digests(reference)  # final artifact included
    assert _stage_metrics(out) == _stage_metrics(reference)
    final = _stage_metrics(out)[-1][1]
    print(f"\nkill -9 after stage {stage} of {STAGES} (0 = teacher), then --resume: final AUC "
          f"{final['auc']:.6f} identical to the uninterrupted run, all {len(after) // 2} "
          "artifacts' sha256 identical")
