"""`slimkit methods` and `slimkit check`: what each method takes, and a plan checked without
running it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimkit
from slimkit.cli.main import main

PLAN = """version: 1
steps:
- method: prune.magnitude
  sparsity: 0.5
  targets: {names: [tower.*]}
- method: quantize.dynamic_int8
"""


def test_methods_lists_every_registered_method(capsys) -> None:
    assert main(["methods", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in infos] == slimkit.method_names()
    assert all(i["summary"] for i in infos)


def test_one_method_shows_types_defaults_choices_and_ranges(capsys) -> None:
    assert main(["methods", "prune.magnitude", "--json"]) == 0
    fields = {f["name"]: f for f in json.loads(capsys.readouterr().out)["fields"]}
    assert fields["sparsity"] == {"name": "sparsity", "type": "float", "default": 0.5,
                                  "allowed": "[0, 1)"}
    assert fields["scope"]["allowed"] == "'layer' | 'global'"
    assert main(["methods", "prune.magnitude"]) == 0
    assert "Han et al. 2015" in capsys.readouterr().out  # the paper, in the human view


def test_unknown_method_is_one_line_exit_2(capsys) -> None:
    assert main(["methods", "prune.nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "prune.nope" in err and "prune.magnitude" in err and len(err.splitlines()) == 1


def test_check_validates_without_running(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    assert main(["check", str(plan), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and len(result["steps"]) == 2 and result["checked_against"] is None
    task = ["--task", "synthetic", "--task-opt", "n_rows=2000"]
    assert main(["check", str(plan), *task]) == 0
    assert "checked against DeepFM" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "extra", "says"), [
    ("version: 1\nsteps:\n- method: prune.magnitude\n  scope: Global\n", [], "scope"),
    ("version: 1\nsteps: []\n", [], "plan: no steps"),
    ("version: 1\nsteps:\n- method: quantize.dynamic_int8\n- method: finetune\n", [],
     "cannot train"),
    (PLAN.replace("tower.*", "towr.*"), ["--task", "synthetic", "--task-opt", "n_rows=2000"],
     "match no module"),
])
def test_check_refuses_in_one_line(text, extra, says, tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    assert main(["check", str(plan), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_check_of_a_missing_file(capsys) -> None:
    assert main(["check", str(Path("nowhere.yaml"))]) == 2
    assert "no such file" in capsys.readouterr().err
