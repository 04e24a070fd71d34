"""`slimkit run`, `slimkit auto` and `slimkit eval` from the CLI on every built-in task family,
with the task's own plan, space and teacher (small data; the text encoder's runs are slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimkit.cli.main import main

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not "
                                   "installed (make install installs it)")
VISION = ["--task", "fashion-mnist", "--task-opt", "limit=300"]
# A tiny random BERT on little text: the wiring of the text-encoder task, not its quality.
TEXT = ["--task", "text-encoder", "--arch", "tiny-bert", "--task-opt", "corpus_size=200",
        "--task-opt", "probe_train=200", "--task-opt", "probe_test=200", "--task-opt",
        "train_size=300", "--task-opt", "queries=50"]
TEXT_PLAN = """version: 1
steps:
- method: truncate.layers
  container: encoder.layer
  drop: 1
  recover: none
- method: distill.encoder
  epochs: 0.2
  batch_size: 32
- method: quantize.dynamic_int8
"""


def _auto(argv: list[str], out: Path, space: str | None = None) -> dict:
    extra = ["--space", space] if space else []
    assert main(["auto", *argv, *extra, "--max-drop", "100", "--trials", "2", "--out", str(out),
                 "--no-sensitivity", "--latency-batch", "16"]) == 0
    assert (out / "report.html").is_file()  # the page is written by the CLI, not the search
    return json.loads((out / "search.json").read_text())


def _eval_reproduces(run: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(run / "model"), "--json"]) == 0  # task rebuilt from the artifact
    result = json.loads(capsys.readouterr().out)
    assert result["measured"] == result["recorded"]


@needs_fashion
def test_vision_run_trains_its_cnn_and_reproduces(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nsteps:\n- method: quantize.static_int8\n"
                    "  calibration_batches: 2\n")
    assert main(["run", str(plan), *VISION, "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    base, final = metrics["stages"]
    assert base["name"] == "teacher" and base["metrics"]["accuracy"] > 50  # 10 classes: 10%
    assert final["bytes"] < base["bytes"] / 3  # int8 weights
    _eval_reproduces(tmp_path / "run", capsys)


@needs_fashion
def test_vision_auto_searches_the_tasks_own_space(tmp_path) -> None:
    data = _auto(VISION, tmp_path / "auto")
    methods = {step.partition("(")[0].strip() for t in data["trials"]
               for step in t["steps"].split(" > ")}
    assert methods and methods <= {"prune.structured", "quantize.static_int8"}  # never empty


@pytest.mark.slow
def test_text_encoder_run_and_auto(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(TEXT_PLAN)
    assert main(["run", str(plan), *TEXT, "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stages"][0]["name"] == "teacher" and len(metrics["stages"]) == 4
    _eval_reproduces(tmp_path / "run", capsys)
    space = tmp_path / "space.yaml"
    space.write_text("steps:\n- method: quantize.dynamic_int8\n  optional: true\n")
    _auto(TEXT, tmp_path / "auto", str(space))


@pytest.mark.slow
def test_movielens_and_synthetic_run_with_their_default_plan(tmp_path, capsys) -> None:
    for task in (["--task", "movielens"], ["--task", "synthetic", "--task-opt", "n_rows=20000"]):
        out = tmp_path / task[1]
        assert main(["run", *task, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["stages"]) == 6 and all(metrics["reload_check"].values())
        _eval_reproduces(out, capsys)
