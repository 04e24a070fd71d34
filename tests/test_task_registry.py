"""Tasks by name or by the caller's own `package.module:factory`: registration, option checks,
what an artifact may name, and the CLI's --task / --task-opt / --task-config."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import slimkit
from slimkit.cli.main import main
from slimkit.tasks.registry import task_from_spec


def _tiny(n_rows: int = 3000, seed: int = 0):
    return slimkit.make_task("synthetic", n_rows=n_rows, cardinalities=[50, 20], seed=seed)


def test_registered_task_is_built_by_name_with_its_spec() -> None:
    slimkit.register_task("tiny-ctr", _tiny)
    task = slimkit.make_task("tiny-ctr", n_rows=2000)
    assert "tiny-ctr" in slimkit.task_names()
    assert task.spec == {"name": "tiny-ctr", "kwargs": {"n_rows": 2000}}
    assert task_from_spec(task.spec).name == task.name


@pytest.mark.parametrize(("name", "factory", "says"), [
    ("a:b", _tiny, "without ':'"),
    ("", _tiny, "non-empty"),
    ("x", 3, "callable"),
])
def test_bad_registration_is_refused(name, factory, says) -> None:
    with pytest.raises(slimkit.SlimkitError, match=says):
        slimkit.register_task(name, factory)


def test_unknown_task_and_option_name_the_valid_ones() -> None:
    with pytest.raises(slimkit.SlimkitError, match="movielens.*synthetic.*package.module"):
        slimkit.make_task("nope")
    with pytest.raises(slimkit.SlimkitError, match="no option 'bogus'; valid options: n_rows"):
        slimkit.make_task("synthetic", bogus=3)


def test_incomplete_task_is_refused_naming_what_it_lacks() -> None:
    class Half:
        name, primary_metric, higher_is_better = "half", "auc", True

    slimkit.register_task("half", Half)
    with pytest.raises(slimkit.SlimkitError, match="without train_batches, num_train_batches"):
        slimkit.make_task("half")


def test_an_artifact_never_imports_a_task_module() -> None:
    with pytest.raises(slimkit.SlimkitError, match="pass --task os:system"):
        task_from_spec({"name": "os:system", "kwargs": {}})


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A module of the caller's own, on the import path."""
    (tmp_path / "userpkg_tasks.py").write_text(textwrap.dedent("""
        import slimkit

        def make_task(n_rows=3000):
            return slimkit.make_task("synthetic", n_rows=n_rows, cardinalities=[40, 10])

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # the CLI adds the working directory itself
    monkeypatch.delitem(sys.modules, "userpkg_tasks", raising=False)
    return "userpkg_tasks"


def test_task_from_the_callers_module(user_module) -> None:
    task = slimkit.make_task(f"{user_module}:make_task", n_rows=2000)
    assert task.spec["name"] == f"{user_module}:make_task"
    with pytest.raises(slimkit.SlimkitError, match="has no option 'rows'"):
        slimkit.make_task(f"{user_module}:make_task", rows=1)
    with pytest.raises(slimkit.SlimkitError, match="is not callable"):
        slimkit.make_task(f"{user_module}:not_callable")
    with pytest.raises(slimkit.SlimkitError, match="cannot import module 'no_such_mod'"):
        slimkit.make_task("no_such_mod:make_task")


def test_run_help_lists_every_registered_task(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name in ("movielens", "synthetic", "fashion-mnist", "text-encoder"):
        assert name in shown


@pytest.mark.parametrize(("argv", "says"), [
    (["--task", "nope"], "--task: expected one of"),
    (["--task", "synthetic", "--task-opt", "bogus=3"], "valid options: n_rows"),
    (["--task", "synthetic", "--task-config", "missing.yaml"], "--task-config: no such file"),
    (["--task", "synthetic", "--task-config", "list.yaml"], "expected a mapping"),
    (["--task", "synthetic", "--arch", "resnet"], "--arch: expected one of deepfm, dcnv2"),
    (["--task", "synthetic", "--model", "no_such_mod:make"], "--model: cannot import"),
    (["--task", "synthetic", "--weights", "w.pt"], "only with --model package.module"),
])
def test_cli_task_and_model_errors_are_one_line_exit_2(argv, says, tmp_path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("list.yaml").write_text("- 1\n")
    Path("plan.yaml").write_text("version: 1\nsteps:\n- method: quantize.dynamic_int8\n")
    assert main(["run", "plan.yaml", *argv, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not Path("out").exists()


def test_task_option_that_is_not_plain_data_is_refused() -> None:
    import datetime

    with pytest.raises(slimkit.SlimkitError, match="--task-opt: when: expected a number"):
        slimkit.register_task("dated", lambda when=None: _tiny())
        slimkit.make_task("dated", when=datetime.date(2024, 1, 1))


@pytest.mark.parametrize(("argv", "says"), [
    (["--model", "userpkg_tasks:make_task"], "--task: name the task"),
    (["--task", "synthetic", "--model", "userpkg_tasks:make_model"],
     "--model: does not run on task"),
])
def test_factory_model_needs_its_own_task(argv, says, user_module, tmp_path, monkeypatch,
                                          capsys) -> None:
    (tmp_path / "userpkg_tasks.py").write_text(
        (tmp_path / "userpkg_tasks.py").read_text()
        + "\nimport torch\ndef make_model():\n    return torch.nn.Linear(3, 1)\n")
    monkeypatch.chdir(tmp_path)
    Path("plan.yaml").write_text("version: 1\nsteps:\n- method: quantize.dynamic_int8\n")
    assert main(["run", "plan.yaml", *argv, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_task_config_file_sets_options(tmp_path, monkeypatch) -> None:
    from slimkit.cli.inputs import task_from_args

    monkeypatch.chdir(tmp_path)
    Path("task.yaml").write_text("n_rows: 2500\ncardinalities: [30, 10]\n")
    args = type("Args", (), {"task": "synthetic", "task_config": "task.yaml",
                             "task_opt": ["n_rows=2000"]})()
    assert task_from_args(args).spec["kwargs"] == {"n_rows": 2000, "cardinalities": [30, 10]}
    recorded = {"name": "synthetic", "kwargs": {"seed": 3, "n_rows": 9000}}
    assert task_from_args(args, recorded).spec["kwargs"] == {
        "seed": 3, "n_rows": 2000, "cardinalities": [30, 10]}  # recorded, then the file, then -o
