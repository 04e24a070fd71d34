"""examples/ run as a user would, each in fresh processes: the user's own model class and task
(examples/user_model/mymodule.py) compressed from Python and from the CLI, reloaded, served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "user_model"
SLIMKIT = [sys.executable, "-m", "slimkit.cli.main"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the user's own shell
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_python_example_compresses_saves_and_serves(tmp_path) -> None:
    proc = _run([sys.executable, str(EXAMPLE / "example.py"), str(tmp_path / "model")], tmp_path)
    assert "served in a fresh process" in proc.stdout


def test_cli_example_runs_and_eval_reproduces_in_a_fresh_process(tmp_path) -> None:
    out = tmp_path / "run"
    _run([*SLIMKIT, "run", "plan.yaml", "--task", "mymodule:make_task", "--model",
          "mymodule:make_model", "--out", str(out)], EXAMPLE)
    metrics = json.loads((out / "metrics.json").read_text())
    base, final = metrics["stages"][0], metrics["stages"][-1]
    assert final["bytes"] < base["bytes"] / 2
    # A compressed model of the user's that ranks far better than chance (the click rate).
    assert final["metrics"]["average_precision"] > 0.4
    assert all(metrics["reload_check"].values())
    proc = _run([*SLIMKIT, "eval", str(out / "model"), "--task", "mymodule:make_task",
                 "--json"], EXAMPLE)
    result = json.loads(proc.stdout)
    for key, value in result["measured"].items():
        assert abs(value - result["recorded"][key]) <= 1e-6
    check = ("import sys, torch, slimkit, mymodule; t = mymodule.make_task(); "
             "a = slimkit.load(sys.argv[1], model=mymodule.make_model()).model; "
             "print(t.evaluate(a)['average_precision'])")
    proc = _run([sys.executable, "-c", check, str(out / "model")], EXAMPLE)
    assert abs(float(proc.stdout) - final["metrics"]["average_precision"]) <= 1e-6


def test_cli_example_searches_with_its_own_space(tmp_path) -> None:
    out = tmp_path / "auto"
    _run([*SLIMKIT, "auto", "--task", "mymodule:make_task", "--model", "mymodule:make_model",
          "--space", "space.yaml", "--max-drop", "0.05", "--trials", "2", "--out", str(out),
          "--no-sensitivity"], EXAMPLE)
    data = json.loads((out / "search.json").read_text())
    assert len(data["trials"]) == 2 and (out / "report.html").is_file()
