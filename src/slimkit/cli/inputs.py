"""The task and input model of `run`, `auto` and `eval`: `--task` (a registered name or the
caller's `package.module:factory`) and `--model` (an artifact directory, a weights-only checkpoint
or `package.module:factory`). Read without ever executing pickled code, checked before any work,
and every problem told in one line that says what to do."""

from __future__ import annotations

import argparse
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import Context, SlimkitError, load, make_task
from ..core import check_finite
from ..core.errors import one_line
from ..core.refs import import_ref, is_ref
from ..export.artifact import read_manifest
from ..tasks.defaults import check_kind, task_model_for, train_baseline
from ..tasks.registry import task_names

FIX = "save model.state_dict() with torch.save, or pass an artifact directory"


def add_task_args(parser: argparse.ArgumentParser, *, recorded: bool = False,
                  default: str = " (default: movielens)") -> None:
    shown = " (default: the task and options the artifact records)" if recorded else default
    parser.add_argument("--task", metavar="NAME|MODULE:FACTORY",
                        help=f"a registered task: {', '.join(task_names())}; or your own, as "
                        f"package.module:factory returning a slimkit.Task{shown}. tabular "
                        "needs path= and label= (and categorical=, numeric=); image-folder "
                        "needs root=")
    parser.add_argument("--task-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="task option, e.g. n_rows=5000 for synthetic or path=data.csv for "
                        "tabular; values are read as YAML (1e4 is a string, write 10000; "
                        "[a, b] is a list) (repeatable)")
    parser.add_argument("--task-config", metavar="FILE.yaml",
                        help="task options as a YAML mapping (--task-opt entries override it)")


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="intra-op threads of torch and ONNX Runtime "
                        "while timing latency, the same for both (default: the CPUs this "
                        "process may use); recorded with the results")


def threads_from(args: argparse.Namespace) -> int | None:
    if args.threads is not None and args.threads < 1:
        raise SlimkitError(f"--threads: expected an integer >= 1, got {args.threads}")
    return args.threads  # type: ignore[no-any-return]


def add_model_args(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--model", metavar="DIR|FILE.pt|MODULE:FACTORY",
                        help="input model: an artifact directory, a weights-only state-dict "
                        "checkpoint (.pt) of --arch, or your own package.module:factory "
                        "returning an nn.Module, trained as the teacher on --task "
                        f"({default_help}); never modified")
    parser.add_argument("--arch", help="the task's architecture to train as the teacher, or to "
                        "read a checkpoint into: deepfm or dcnv2 (CTR tasks), cnn (vision), "
                        "minilm or tiny-bert (text-encoder) (default: the task's first)")
    parser.add_argument("--weights", metavar="FILE.pt", help="with --model package.module:"
                        "factory: a weights-only state dict to load into the built model "
                        "instead of training it")
    parser.add_argument("--no-train", action="store_true", help="with --model package.module:"
                        "factory: use the model as built (it is trained already)")


def task_from_args(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> Any:
    """The task `--task` names (movielens when none), its options from `--task-config` then
    `--task-opt`. With `recorded` (an artifact's task spec) and the same name, the recorded
    options are the starting point."""
    name = args.task or "movielens"
    options: dict[str, Any] = {}
    if recorded and recorded.get("name") == name and isinstance(recorded.get("kwargs"), dict):
        options.update(recorded["kwargs"])
    if args.task_config:
        file = Path(args.task_config)
        if not file.is_file():
            raise SlimkitError(f"--task-config: no such file {args.task_config!r}")
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise SlimkitError(f"--task-config: {args.task_config!r} is not valid YAML "
                               f"({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise SlimkitError(f"--task-config: expected a mapping of options, got "
                               f"{type(loaded).__name__}")
        options.update(loaded)
    for pair in args.task_opt:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SlimkitError(f"--task-opt: expected KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return make_task(name, **options)


class InputModel:
    """Where the baseline comes from, resolved before any work so its errors come first."""

    def __init__(self, args: argparse.Namespace, task: Any) -> None:
        self.task, self.arch, self.seed = task, args.arch, args.seed
        self.factory: Callable[[], torch.nn.Module] | None = None
        self.path = None
        if args.model and is_ref(args.model) and not Path(args.model).exists():
            if args.task is None:  # movielens ids would silently feed the user's own model
                raise SlimkitError(f"--task: name the task {args.model!r} is built for "
                                   "(--task NAME or package.module:factory)")
            self.factory = import_ref(args.model, field="--model")
            if not callable(self.factory):
                raise SlimkitError(f"--model: {args.model!r} is not callable")
        elif args.model:
            self.path = Path(args.model)
            if not self.path.exists():
                raise SlimkitError(f"--model: no such file or directory {args.model!r}")
        if (args.weights or args.no_train) and self.factory is None:
            raise SlimkitError("--weights/--no-train: only with --model package.module:factory")
        self.weights = Path(args.weights) if args.weights else None
        self.no_train = args.no_train
        if self.arch is not None:
            check_kind(task, self.arch)
        self.trains = self.path is None and not self.weights and not self.no_train

    def given(self) -> torch.nn.Module | None:
        """The model when it needs no training (artifact, checkpoint, factory with weights or
        --no-train), checked; None when a teacher is to be trained."""
        if self.path is not None:
            model = load_input_model(self.path, self.task, self.arch)
            check_runs(model, self.task)
            return model
        if self.factory is not None and not self.trains:
            model = self._built()
            if self.weights is not None:
                _load_weights(model, self.weights, "--weights")
            check_finite(model, field="--model")
            return model.eval()
        return None

    def untrained(self) -> torch.nn.Module:
        """A model of the architecture a teacher will have, to check a plan against."""
        if self.factory is not None:
            return self._built()
        return self.task.build_model(check_kind(self.task, self.arch))  # type: ignore[no-any-return]

    def teacher(self, ctx: Context) -> tuple[torch.nn.Module, float]:
        """Train the teacher (or take a pretrained kind as built); returns it and its seconds."""
        start = time.perf_counter()
        model = self._built() if self.factory is not None else None
        model = train_baseline(self.task, ctx, kind=self.arch, model=model)
        return model, time.perf_counter() - start

    def reload_factory(self, artifact: Path) -> Callable[[], torch.nn.Module] | None:
        """What stages of the model in `artifact` reload into: the --model factory, else the
        task's own model when the artifact's class is one the task builds, else None (load by
        name)."""
        if self.factory is not None:
            return self.factory
        spec = read_manifest(artifact)["model"]
        if task_model_for(self.task, spec) is None:
            return None
        return lambda: task_model_for(self.task, spec)  # type: ignore[return-value]

    def _built(self) -> torch.nn.Module:
        """The factory's model, built under the run's seed so its initial weights (and so a
        teacher trained from them) are the same in every run."""
        assert self.factory is not None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.factory()
        if not isinstance(model, torch.nn.Module):
            raise SlimkitError(f"--model: the factory returned a {type(model).__name__}, not an "
                               "nn.Module")
        check_runs(model, self.task)
        return model


def check_runs(model: torch.nn.Module, task: Any) -> None:
    """One forward pass on two of the task's inputs: a model built for other inputs is refused
    in one line before any training, not with a traceback midway."""
    try:
        with torch.inference_mode():
            model.eval()(*task.example_inputs(2))
    except Exception as exc:  # noqa: BLE001 - any failure means the same: not this task's model
        raise SlimkitError(f"--model: does not run on task {task.name!r}'s inputs "
                           f"({one_line(exc)}); is --task the one it was built for?") from None


def load_input_model(path: Path, task: Any, arch: str | None) -> torch.nn.Module:
    """An artifact directory or a state-dict checkpoint as a model in eval mode, with finite
    weights; SlimkitError naming --model otherwise. An artifact of a class of the caller's loads
    into the task's own model when the task builds that class."""
    if path.is_dir():
        skeleton = task_model_for(task, read_manifest(path)["model"])
        model = load(path, model=skeleton).model
    elif not path.is_file():
        raise SlimkitError(f"--model: no such file or directory {str(path)!r}")
    else:
        arch = check_kind(task, arch)
        model = task.build_model(arch)
        _load_weights(model, path, "--model", what=repr(arch))
    check_finite(model, field="--model")
    return model.eval()


def _read_checkpoint(path: Path, field: str) -> Any:
    # weights_only=True stays: a pickled object is refused by torch's restricted unpickler and
    # never runs. torch's own message advises turning it off, so it is not passed on.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the same to the user
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found and zipfile.is_zipfile(path):
            raise SlimkitError(f"{field}: {str(path)!r} is not a weights-only checkpoint (it "
                               f"pickles {found.group(1)}, which slimkit never runs); "
                               f"{FIX}") from None
        raise SlimkitError(f"{field}: {str(path)!r} is not a readable torch checkpoint "
                           f"({type(exc).__name__}); {FIX}") from None


def _load_weights(model: torch.nn.Module, path: Path, field: str, what: str = "the model") -> None:
    if not path.is_file():
        raise SlimkitError(f"{field}: no such file {str(path)!r}")
    state = _read_checkpoint(path, field)
    try:
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, AttributeError, TypeError) as exc:
        first = _plain(str(exc).strip().splitlines()[0])
        raise SlimkitError(f"{field}: checkpoint does not fit {what} ({first})") from None


def _plain(text: str) -> str:
    """Without terminal colour codes (torch colours some messages)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
