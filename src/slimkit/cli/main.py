"""`slimkit` entry point: parse arguments, run a command, map user errors to one line + exit 2."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from .. import __version__
from ..core.errors import SlimkitError
from . import commands
from .auto import add_parser as add_auto_parser
from .index_cmd import add_parser as add_index_parser
from .inputs import add_model_args, add_task_args, add_threads_arg
from .introspect import add_check_parser, add_methods_parser
from .progress import configure

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other user error
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USER_ERROR)


def _global_options() -> argparse.ArgumentParser:
    """-v and -q, accepted before or after the subcommand (SUPPRESS: a later parse does not
    reset what an earlier one set)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details (INFO) to stderr")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print nothing but errors (and the --json result)")
    return common


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON "
                        "object on stdout; human text goes to stderr")


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = _Parser(prog="slimkit", parents=[common],
                     description="Compress deep models: prune, quantize, distill, truncate; "
                     "evaluate each stage; write a deployable artifact.")
    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = functools.partial(sub.add_parser, parents=[common])

    demo = add("demo", help="train a CTR teacher on MovieLens-100k and compress it stage by "
               "stage (embedded defaults)", description="Train a DeepFM click-through-rate "
               "teacher on MovieLens-100k and compress it with the demo plan, stage by stage.")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--model", default="deepfm", choices=["deepfm", "dcnv2"],
                      help="teacher architecture (default: deepfm)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the teacher and every step")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted run")
    add_threads_arg(demo)
    _json_option(demo)
    demo.set_defaults(func=commands.demo)

    run = add("run", help="apply a plan (YAML/JSON) to a model, stage by stage",
                         description="Apply a plan to a model stage by stage on a task: after "
                         "each step, measure quality, artifact bytes, latency (torch and ONNX "
                         "Runtime) and run-time memory, and save the stage's artifact; write "
                         "metrics.json, report.html and OUT/model.")
    run.add_argument("plan", nargs="?", help="plan file (.yaml or .json; default: the task's "
                     "own plan)")
    add_task_args(run)
    add_model_args(run, "default: train the task's teacher")
    run.add_argument("--out", default="runs/run", help="run directory (default: runs/run)")
    run.add_argument("--seed", type=int, default=0, help="seed of the teacher and every step")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    add_threads_arg(run)
    _json_option(run)
    run.set_defaults(func=commands.run)

    ev = add("eval", help="load an artifact, re-measure its quality on its task, and "
                        "compare with the metrics recorded when it was saved",
                        description="Load an artifact, re-measure its quality on its task and "
                        "compare with the metrics recorded when it was saved; exit 1 if any "
                        "differs by more than 1e-6.")
    ev.add_argument("artifact", help="artifact directory (model.safetensors + manifest.json)")
    ev.add_argument("--split", default="test", choices=["test", "valid"],
                    help="which split's recorded metrics to reproduce (default: test)")
    add_task_args(ev, recorded=True)
    ev.add_argument("--model", metavar="MODULE:FACTORY", help="your own package.module:factory "
                    "building a fresh instance of the artifact's model class to load into "
                    "(default: the task's model, else the class the artifact names, if "
                    "registered)")
    _json_option(ev)
    ev.set_defaults(func=commands.evaluate)

    gg = add("gguf", help="write a causal-LM artifact as a GGUF file for llama.cpp",
             description="Write a causal-LM artifact as GGUF (llama.cpp's format): packed "
             "layers in groups of 32 as Q4_0/Q4_1/Q8_0 with their own codes, others as F32; "
             "tokenizer metadata from the GGUF file the model came from.")
    gg.add_argument("artifact", help="artifact directory of a causal-LM run")
    gg.add_argument("out", help="the .gguf file to write")
    gg.add_argument("--source", help="GGUF file whose tokenizer and general metadata to copy "
                    "(default: the file the task's model came from)")
    gg.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _json_option(gg)
    gg.set_defaults(func=commands.gguf)

    auto = add_auto_parser(add)
    _json_option(auto)
    _json_option(add_index_parser(add))
    for name, adder in (("methods", add_methods_parser), ("check", add_check_parser)):
        _json_option(adder(add, name))

    about = ("(re)write report.html and report.md from metrics.json (or report.html from a "
             "search's search.json)")
    rep = add("report", help=about, description=about[4].upper() + about[5:] + ".")
    rep.add_argument("run_dir", help="a run directory holding metrics.json")
    rep.set_defaults(func=commands.report)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A --task or --model package.module:factory names a module beside the caller, as
    # `python -m` would find it; appended, so it never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    args = build_parser().parse_args(argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    configure(quiet=quiet, json_mode=getattr(args, "json", False))
    logging.basicConfig(level=logging.INFO if verbose else
                        logging.ERROR if quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SlimkitError as exc:
        sys.stderr.write(f"slimkit: error: {exc}\n")
        return EXIT_USER_ERROR
    except OSError as exc:  # unwritable --out, full disk: the user's environment, not a bug
        sys.stderr.write(f"slimkit: error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("slimkit: interrupted; run the same command again to continue (demo and "
                         "run: add --resume)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
