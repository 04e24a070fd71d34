"""CLI smoke test on a tiny synthetic task, and bad input: one line, exit code 2, nothing lost."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.cli.main import main

TASK = ["--task", "synthetic", "--task-opt", "n_rows=3000", "--task-opt",
        "cardinalities=[100,80,5]"]
PLAN = """\
version: 1
steps:
- method: prune.magnitude
  sparsity: 0.5
- method: truncate.layers
  container: tower
  drop: 1
  recover: finetune
  epochs: 0.5
- method: quantize.dynamic_int8
- method: quantize.embedding
  bits: 4
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "plan.yaml").write_text(PLAN)
    out = tmp / "run"
    # In a fresh process, with the global -v after the subcommand and the result as JSON.
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "run",
                           str(tmp / "plan.yaml"), *TASK, "--out", str(out), "-v", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp / "stdout.txt").write_text(proc.stdout)
    (tmp / "stderr.txt").write_text(proc.stderr)
    return out


def test_run_json_is_the_only_stdout_and_verbose_logs_go_to_stderr(run_dir: Path) -> None:
    result = json.loads((run_dir.parent / "stdout.txt").read_text())  # one JSON document
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert result["run_dir"] == str(run_dir) and result["primary_metric"] == "auc"
    assert result["final"]["bytes"] == metrics["stages"][-1]["bytes"]
    assert result["x_smaller"] == pytest.approx(
        metrics["stages"][0]["bytes"] / metrics["stages"][-1]["bytes"], rel=1e-3)
    stderr = (run_dir.parent / "stderr.txt").read_text()
    assert "INFO" in stderr and "x smaller artifact" in stderr  # -v, and the human summary


def test_run_writes_run_directory(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    assert names == ["teacher", "prune.magnitude", "truncate.layers", "quantize.dynamic_int8",
                     "quantize.embedding"]
    for stage in metrics["stages"]:
        assert set(stage["metrics"]) == {"auc", "logloss"}
        assert stage["bytes"] > 0 and set(stage["latency_ms"]) == {"1", "512"}
        assert stage["latency_ms"]["512"]["p90"] >= stage["latency_ms"]["512"]["median"]
    assert metrics["stages"][-1]["bytes"] < metrics["stages"][0]["bytes"]
    assert all(metrics["reload_check"].values())
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "truncate.layers" in html
    assert (run_dir / "report.md").is_file() and (run_dir / "model" / "manifest.json").is_file()


def test_eval_reproduces_recorded_metrics(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(run_dir / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON object only
    assert result["reproduced"] and result["max_abs_diff"] <= 1e-6
    for key, value in result["measured"].items():
        assert abs(value - result["recorded"][key]) <= 1e-6


def test_quiet_eval_prints_nothing(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(run_dir / "model"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_report_command_rewrites_report(run_dir: Path) -> None:
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()


@pytest.mark.parametrize(("plan", "needle"), [
    ("steps: [{method: prune.magic}]", "steps[0].method: expected a known method"),
    ("steps: [{method: prune.magnitude, sparsity: 1.5}]", "steps[0].sparsity"),
    ("steps: [{method: finetune, epochs: many}]", "steps[0].epochs: expected a number, got 'many'"),
])
def test_bad_plan_one_line_exit_2_input_unchanged(run_dir: Path, tmp_path: Path, plan: str,
                                                  needle: str) -> None:
    model_dir = run_dir / "model"
    before = _digest(model_dir)
    (tmp_path / "bad.yaml").write_text(plan)
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "run",
                           str(tmp_path / "bad.yaml"), "--model", str(model_dir), *TASK,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert _digest(model_dir) == before
    assert not (tmp_path / "out").exists()


def test_input_model_inside_out_is_refused(run_dir: Path, capsys) -> None:
    before = _digest(run_dir / "model")
    plan = run_dir.parent / "plan.yaml"
    argv = ["run", str(plan), "--model", str(run_dir / "model"), *TASK, "--out", str(run_dir)]
    assert main(argv) == 2
    assert "lies inside --out" in capsys.readouterr().err
    assert _digest(run_dir / "model") == before


def test_eval_fails_when_nothing_was_recorded(run_dir: Path) -> None:
    assert main(["eval", str(run_dir / "model"), "--split", "valid"]) == 1


@pytest.mark.parametrize("argv", [
    ["run", "missing.yaml"],
    ["eval", "/nonexistent/artifact"],
    ["report", "/nonexistent/run"],
    ["run", "PLAN", "--model", "/nonexistent/model.pt"],
    ["run", "PLAN", "--task-opt", "oops"],
    ["demo", "--seed", "x"],
    ["run", "PLAN", *TASK[:2], "--task-opt", "n_rows=5"],
])
def test_user_errors_exit_2(argv: list[str], tmp_path: Path, capsys) -> None:
    (tmp_path / "plan.yaml").write_text(PLAN)
    argv = [str(tmp_path / "plan.yaml") if a == "PLAN" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1


def test_help_for_every_command_and_option() -> None:
    from slimkit.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "run", "eval", "auto", "report", "methods", "check"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("slimkit 0.")


def test_run_from_weights_only_checkpoint(tmp_path: Path) -> None:
    import torch

    from slimkit.tasks.registry import make_task

    task = make_task("synthetic", n_rows=3000, cardinalities=[100, 80, 5])
    torch.save(task.build_model("deepfm").state_dict(), tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "plan.yaml").write_text("steps: [{method: quantize.dynamic_int8}]\n")
    argv = ["run", str(tmp_path / "plan.yaml"), "--model", str(tmp_path / "model.pt"), *TASK,
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["input", "quantize.dynamic_int8"]
    assert (tmp_path / "model.pt").read_bytes() == before
