"""`slimkit auto` as users run it: killed mid-trial and restarted on the same storage, and two
worker processes sharing one study (separate processes, a real SQLite database)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import slimkit

optuna = pytest.importorskip("optuna")

# Every trial distills for a few epochs, so each takes long enough to be caught running.
SPACE = """\
steps:
- method: distill.logits
  params:
    temperature: {float: [1.0, 4.0]}
  fixed: {epochs: 2.0}
- method: quantize.embedding
  optional: true
  params:
    bits: {choice: [8, 4]}
"""
TASK = ["--task", "synthetic", "--task-opt", "n_rows=4000"]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    task = slimkit.make_task("synthetic", n_rows=4000)
    model = tmp_path / "model"
    slimkit.save(task.build_model("deepfm"), model)
    return {"space": space, "model": model, "db": tmp_path / "study.db"}


def _command(setup: dict[str, Path], out: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "slimkit.cli.main", "auto", *TASK, "--model",
            str(setup["model"]), "--space", str(setup["space"]), "--max-drop", "0.05",
            "--trials", str(trials), "--out", str(out), "--storage",
            f"sqlite:///{setup['db']}", "--latency-batch", "64", "--no-sensitivity"]


def _running_plan(db: Path, number: int) -> bool:
    """Whether trial `number` has picked its plan and is running it."""
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute(
                "SELECT t.state FROM trials t JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.number = ? AND a.key = 'note'",
                (number,)).fetchone()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return False
    return bool(row) and row[0] == "RUNNING"


def _trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="slimkit", storage=f"sqlite:///{db}").trials


def test_killed_during_trial_10_resumes_with_trial_11(setup, tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(setup, out, 12), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not _running_plan(setup["db"], 10):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "trial 10 never started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up, like a lost machine
    proc.wait()
    first = _trials(setup["db"])
    assert [t.number for t in first] == list(range(11)) and first[10].state.name == "RUNNING"
    assert all(t.state.name == "COMPLETE" for t in first[:10])

    done = subprocess.run(_command(setup, out, 12), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _trials(setup["db"])
    for old, new in zip(first[:10], after[:10], strict=True):  # the first 10 are intact
        assert (new.state, new.params, new.values, new.user_attrs) == \
            (old.state, old.params, old.values, old.user_attrs)
    assert after[10].state.name == "FAIL"
    assert "interrupted" in after[10].user_attrs["note"]
    # The search continues with trial 11: the interrupted plan, run again.
    assert after[11].user_attrs.get("retry_of") == 10
    assert after[11].params == first[10].params and after[11].state.name == "COMPLETE"
    finished = [t for t in after if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 12 and [t.number for t in after] == list(range(13))
    assert "best within the budget" in done.stdout + done.stderr


def test_two_workers_share_one_study(setup, tmp_path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]  # as on two machines: their own directories
    procs = [subprocess.Popen(_command(setup, out, 10), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for out in outs]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    trials = _trials(setup["db"])
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 10  # none lost, none run beyond the budget
    assert len({t.number for t in trials}) == len(trials)
    skipped = [t for t in trials if t.state.name == "FAIL"]
    assert all("budget" in t.user_attrs.get("note", "") for t in skipped)  # only a late ask
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2  # both did work
    by_pid = {str(p.pid): out for p, out in zip(procs, outs, strict=True)}
    for t in finished:  # each trial's artifact lies with the worker that ran it
        out = by_pid[t.user_attrs["worker"].rpartition(":")[2]]
        if "same plan" not in t.user_attrs["note"]:
            assert (out / t.user_attrs["artifact"] / "manifest.json").is_file()


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys) -> None:
    from slimkit.cli.main import main

    base = _command(setup, tmp_path / "bad", 2)[3:]  # argv after `python -m slimkit.cli.main`
    cases = {
        "--max-drop": (["--max-drop", "-1"], "--max-drop"),
        "--space": (["--space", str(tmp_path / "none.yaml")], "--space"),
        "--storage": (["--storage", "nosuchdb://x"], "storage"),
    }
    for flag, (value, field) in cases.items():
        argv = list(base)
        i = argv.index(flag)
        argv[i:i + 2] = value
        assert main(argv) == 2, flag
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0], err
    assert not (tmp_path / "bad" / "trials").exists()
