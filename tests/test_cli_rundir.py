"""The run directory is the user's too, and a run is checked before any work: a user's folder as
--out, a second run into a busy --out, an invalid plan, a broken input model, an unwritable --out.
Each is one line on stderr and exit 2, before a teacher or stage exists, inputs byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slimkit.cli.main import main
from slimkit.rundir import LOCK, MARKER, clear_previous_run, open_run_dir
from slimkit.tasks.registry import make_task

TASK = ["--task", "synthetic", "--task-opt", "n_rows=3000", "--task-opt",
        "cardinalities=[100,80,5]"]
SMALL = "steps:\n- {method: prune.magnitude, sparsity: 0.5}\n- {method: quantize.dynamic_int8}\n"


class Payload:
    """Unpickling this would create `path`: a checkpoint must never run it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def _digests(*roots: Path) -> dict[str, str]:
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def _refused(capsys: pytest.CaptureFixture, argv: list[str], *inputs: Path) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line, inputs unchanged; the line."""
    before = _digests(*inputs)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert _digests(*inputs) == before
    return err[0]


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    (tmp_path / "plan.yaml").write_text(SMALL)
    return tmp_path / "plan.yaml"


def test_users_folder_as_out_is_refused_and_untouched(tmp_path, plan, capsys) -> None:
    user = tmp_path / "userproj"
    (user / "model").mkdir(parents=True)
    (user / "stages").mkdir()
    (user / "model" / "precious.bin").write_bytes(os.urandom(64))
    (user / "stages" / "notes.txt").write_text("mine")
    (user / "metrics.json").write_text("{}")
    line = _refused(capsys, ["run", str(plan), *TASK, "--out", str(user)], user, plan)
    assert line.startswith("slimkit: error: --out: ") and "not created by slimkit" in line
    assert sorted(p.name for p in user.iterdir()) == ["metrics.json", "model", "stages"]


@pytest.mark.parametrize(("text", "needle"), [
    ("steps: []\n", "plan: no steps"),
    (SMALL + "- {method: finetune, epochs: 0.1}\n",
     "steps[2] (finetune): cannot train: steps[1] (quantize.dynamic_int8) leaves int8 kernels"),
    ("steps:\n- {method: prune.magnitude, sparsity: 0.5}\n- {method: quantize.dynamic_int8, "
     "targets: {names: [towr.*]}}\n",
     "steps[1] (quantize.dynamic_int8): targets match no module of the model"),
])
def test_invalid_plan_is_refused_before_the_teacher_trains(tmp_path, capsys, text,
                                                           needle) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    out = tmp_path / "out"
    line = _refused(capsys, ["run", str(tmp_path / "bad.yaml"), *TASK, "--out", str(out)],
                    tmp_path / "bad.yaml")
    assert needle in line
    assert not out.exists()


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "nan":
        task = make_task("synthetic", n_rows=3000, cardinalities=[100, 80, 5])
        state = task.build_model("deepfm").state_dict()
        state["tower.0.0.weight"][1, 2] = float("nan")
        torch.save(state, path)
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"weights": Payload(tmp_path / "EXECUTED")}, path)
    return path


@pytest.mark.parametrize(("kind", "needle"), [
    ("nan", "--model: parameter 'tower.0.0.weight' holds NaN (1 of "),
    ("random", "is not a readable torch checkpoint"),
    ("pickled", "is not a weights-only checkpoint (it pickles io.open, which slimkit never runs)"),
])
def test_broken_input_model_is_one_line_naming_model(tmp_path, plan, capsys, kind,
                                                     needle) -> None:
    model = _checkpoint(tmp_path, kind)
    out = tmp_path / "out"
    line = _refused(capsys, ["run", str(plan), "--model", str(model), *TASK, "--out", str(out)],
                    model, plan)
    assert needle in line and "weights_only" not in line and "\x1b" not in line
    assert not out.exists() and not (tmp_path / "EXECUTED").exists()


def test_nan_weights_refused_by_the_python_api(tmp_path, tiny_task, make_model) -> None:
    import slimkit
    from slimkit.pipeline import run_plan

    model = make_model()
    with torch.no_grad():
        model.tower[0][0].weight[0, 0] = float("inf")
    plan = slimkit.Plan(steps=(slimkit.DynamicInt8(),))
    for call in (lambda: slimkit.compress_(model, plan, slimkit.Context(task=tiny_task)),
                 lambda: run_plan(model, tiny_task, plan, tmp_path / "out", title="t",
                                  ctx=slimkit.Context(task=tiny_task))):
        with pytest.raises(slimkit.SlimkitError, match="'tower.0.0.weight' holds Inf"):
            call()
    assert not (tmp_path / "out").exists()


def test_second_run_into_a_busy_out_names_the_holder(tmp_path, plan, capsys) -> None:
    out = tmp_path / "out"
    (tmp_path / "slow.yaml").write_text("steps: [{method: finetune, epochs: 20}]\n")
    first = subprocess.Popen([sys.executable, "-m", "slimkit.cli.main", "run",
                              str(tmp_path / "slow.yaml"), *TASK, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while b'"pid"' not in ((out / LOCK).read_bytes() if (out / LOCK).exists() else b""):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        line = _refused(capsys, ["run", str(plan), *TASK, "--out", str(out)], plan)
        assert f"is in use by pid {first.pid} on host " in line
    finally:
        first.kill()  # like kill -9: the kernel drops its lock, so a resume may proceed
        first.wait()
    with open_run_dir(out, "run") as held:
        assert json.loads((held / LOCK).read_text())["pid"] == os.getpid()


def test_full_out_is_one_line_and_inputs_unchanged(tmp_path, plan) -> None:
    model = tmp_path / "model.pt"
    torch.save(make_task("synthetic", n_rows=3000, cardinalities=[100, 80, 5])
               .build_model("deepfm").state_dict(), model)
    before = _digests(model, plan)
    # Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG, as on a full disk.
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "run", str(plan),
                           "--model", str(model), *TASK, "--out", str(tmp_path / "out")],
                          preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"slimkit: error: --out: cannot write {str(tmp_path / 'out')!r} (File too large)"]
    assert _digests(model, plan) == before
    assert not (tmp_path / "out" / "stages").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (chmod) directory")
def test_read_only_out_is_one_line(tmp_path, plan, capsys) -> None:
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    try:
        line = _refused(capsys, ["run", str(plan), *TASK, "--out", str(out)], plan)
        assert "--out: cannot write" in line and "Permission denied" in line
    finally:
        out.chmod(0o700)


def test_rerun_removes_only_what_slimkit_wrote(tmp_path) -> None:
    from slimkit import SlimkitError

    out = tmp_path / "run"
    with open_run_dir(out, "run"):
        for name in ("00-teacher", "01-old"):
            (out / "stages" / name).mkdir(parents=True)
            (out / "stages" / name / "manifest.json").write_text("{}")
            (out / "stages" / name / "model.safetensors").write_bytes(b"x")
        (out / "stages" / "01-old" / "notes.txt").write_text("mine")
        (out / "stages" / "99-user").mkdir()
        (out / "stages" / "99-user" / "manifest.json").write_text("{}")
        (out / "progress.json").write_text(json.dumps({"key": {}, "stages": [
            {"artifact": "stages/00-teacher"}, {"artifact": "stages/01-old"},
            {"artifact": "../outside"}]}))
        # A stage folder the new run would replace holds a user's file: refused, nothing gone.
        with pytest.raises(SlimkitError, match="notes.txt' was not written by slimkit"):
            clear_previous_run(out)
        assert (out / "stages" / "00-teacher" / "model.safetensors").is_file()
        (out / "stages" / "01-old" / "notes.txt").unlink()
        clear_previous_run(out)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["99-user"]
    assert not (out / "progress.json").exists() and (out / MARKER).is_file()


def test_saving_over_a_folder_with_foreign_files_is_refused(tmp_path, make_model) -> None:
    import slimkit

    target = tmp_path / "art"
    target.mkdir()
    (target / "precious.bin").write_bytes(b"mine")
    with pytest.raises(slimkit.SlimkitError, match="precious.bin"):
        slimkit.save(make_model(), target)
    assert (target / "precious.bin").read_bytes() == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp folder left behind
    (target / "precious.bin").unlink()
    slimkit.save(make_model(), target)
    slimkit.save(make_model(), target)  # replacing its own artifact is fine


def test_out_of_another_command_is_refused(tmp_path) -> None:
    from slimkit import SlimkitError

    with open_run_dir(tmp_path / "auto", "auto"):
        pass
    with pytest.raises(SlimkitError, match="holds a `slimkit auto` run"):
        with open_run_dir(tmp_path / "auto", "run"):
            pass
