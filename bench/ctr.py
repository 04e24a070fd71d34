"""Benchmark: the demo plan on MovieLens-100k CTR for DeepFM and DCN-v2, one table per model with
ratios against the fp32 teacher (latency of all stages measured interleaved in one process beside
a noise probe of the teacher: each speed-up with its verdict, faster / slower / within noise),
the regressions run_plan flagged, then the embedding tables alone quantized row-wise to
INT8/INT4/INT2 on each teacher.

    .venv/bin/python bench/ctr.py [--models deepfm dcnv2] [--out runs/bench-ctr] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

from verdicts import regressions_lines, stage_speed_cell

import slimkit
from slimkit.pipeline import run_plan
from slimkit.tasks.ctr import train_teacher
from slimkit.tasks.ctr.demo_plan import DEMO_PLAN_YAML
from slimkit.tasks.registry import make_task

COLUMNS = ("stage", "AUC", "ΔAUC", "logloss", "KB", "x smaller", "non-zeros", "ms@1 med/p90",
           "ms@512 med/p90", "x faster@1", "x faster@512", "ORT x faster@512", "rows/s@512",
           "peak MB")


def table(metrics: dict) -> str:
    stages = metrics["stages"]
    base = stages[0]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in stages:
        lat = s["latency_ms"]
        cells = [
            s["name"], f"{s['metrics']['auc']:.4f}",
            f"{s['metrics']['auc'] - base['metrics']['auc']:+.4f}",
            f"{s['metrics']['logloss']:.4f}", f"{s['bytes'] / 1024:.1f}",
            f"{base['bytes'] / s['bytes']:.1f}", f"{s['nonzeros']:,}",
            f"{lat['1']['median']:.3f} / {lat['1']['p90']:.3f}",
            f"{lat['512']['median']:.3f} / {lat['512']['p90']:.3f}",
            stage_speed_cell(s, 1), stage_speed_cell(s, 512),
            stage_speed_cell(s, 512, "onnxruntime"),
            f"{s['throughput']['512']:,.0f}",
            f"{s['peak_memory_mb']:.0f}" if s.get("peak_memory_mb") else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    parser.add_argument("--out", default="runs/bench-ctr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ONNX Runtime threads (default: the available cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plan = slimkit.Plan.from_yaml(DEMO_PLAN_YAML)
    task = make_task("movielens")
    for kind in args.models:
        ctx = slimkit.Context(task=task, seed=args.seed)
        start = time.perf_counter()
        teacher = train_teacher(task, ctx, kind)
        metrics = run_plan(teacher, task, plan, Path(args.out) / kind, ctx=ctx,
                           title=f"{kind} on MovieLens-100k", threads=args.threads,
                           baseline_seconds=time.perf_counter() - start)
        print(f"\n## {metrics['title']} (demo plan, seed {args.seed}, {metrics['threads']} "
              "threads)\n")
        print(table(metrics))
        bands = "; ".join(f"{runtime} " + ", ".join(f"±{b:.0%} at batch {n}"
                                                   for n, b in per.items())
                          for runtime, per in metrics["noise"].items())
        print(f"\nnoise probe (a copy of the teacher): {bands}")
        flagged = regressions_lines(metrics)
        print("regressions against the previous stage:" if flagged else
              "no regressions against the previous stage")
        print("\n".join(flagged))
        print(f"\n### {kind}: embedding tables alone, row-wise\n")
        print(embedding_table(teacher, task))


def embedding_table(teacher, task) -> str:
    base = task.evaluate(teacher)["auc"]
    lines = ["| tables | AUC | ΔAUC |", "|---|---|---|", f"| fp32 | {base:.4f} | +0.0000 |"]
    for bits in (8, 4, 2):
        model = copy.deepcopy(teacher)
        slimkit.compress_(model, slimkit.Plan(steps=(slimkit.EmbeddingQuant(bits=bits),)),
                          slimkit.Context(task=task))
        auc = task.evaluate(model)["auc"]
        lines.append(f"| INT{bits} | {auc:.4f} | {auc - base:+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
