"""Benchmark: Deep Compression (Han et al. 2016) on Fashion-MNIST: train the CNN teacher, prune
(gradual magnitude), share weights by k-means with centroid fine-tuning, Huffman-code the saved
artifact. Prints per-stage accuracy, artifact bytes and ratios beside run-time memory (a fresh
process loads each stage's artifact and runs a batch), then per-layer coding figures:
bits per weight against the empirical entropy of the Huffman streams.

    .venv/bin/python bench/deep_compression.py [--out runs/bench-dc] [--seed 0]

About 4 minutes on a quiet 2-core machine (the teacher takes 1.5 of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from verdicts import regressions_lines, stage_speed_cell

import slimkit
from slimkit.export import MANIFEST
from slimkit.methods.quantize.cluster import Cluster
from slimkit.pipeline import run_plan
from slimkit.tasks.vision import VisionTask, train_teacher
from slimkit.tasks.vision.task import CNN_RECIPE

# fc1 holds 83% of the weights, so it is pruned hardest (the paper: LeNet-5 fc1 92%, conv2 88%).
PLAN = slimkit.Plan(steps=(
    slimkit.Magnitude(sparsity=0.96, schedule="gradual", epochs=2.0, lr=5e-4, batch_size=128,
                      update_every=20, targets=slimkit.Targets(names=("fc1",))),
    slimkit.Magnitude(sparsity=0.85, schedule="gradual", epochs=2.0, lr=5e-4, batch_size=128,
                      update_every=20, targets=slimkit.Targets(names=("conv2", "fc2"))),
    Cluster(conv_bits=8, linear_bits=5, epochs=1.0, lr=1e-4, batch_size=128),
))


def coding(manifest: dict) -> dict[str, dict]:
    """Per integer tensor (codes): form, weights, stored bits, Huffman payload and entropy bits
    (entropy only where Huffman coding was chosen)."""
    rows = {}
    for name, entry in manifest["tensors"].items():
        if entry["dtype"] not in ("uint8", "int8"):
            continue
        numel = 1
        for d in entry["shape"]:
            numel *= d
        form = str(entry["encoding"])
        row = {"form": form, "numel": numel, "values": numel, "payload": None, "entropy": None}
        if form.startswith("huffman"):
            streams = entry["streams"].values()
            row.update(stored=8 * sum(s["bytes"] for s in streams),
                       payload=sum(s["payload_bits"] for s in streams),
                       entropy=sum(s["entropy_bits"] for s in streams),
                       values=entry["streams"].get("values", {}).get("count", numel))
        else:
            row["stored"] = 8 * numel  # dense bytes (a bitmap is never chosen over Huffman)
        rows[name] = row
    return rows


def stage_table(metrics: dict, out: Path) -> str:
    stages = metrics["stages"]
    base = stages[0]
    head = ("stage", "test acc %", "Δ acc", "KB", "x smaller", "run-time MiB (resident / peak)",
            "bits/param", "ms@512", "x faster@512",
            "coded bits/weight",
            "entropy bits/weight", "Huffman gap %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stages:
        rows = [r for r in coding(json.loads((out / s["artifact"] / MANIFEST).read_text()))
                .values() if r["entropy"] is not None]
        numel = sum(r["numel"] for r in rows)
        payload, entropy = sum(r["payload"] for r in rows), sum(r["entropy"] for r in rows)
        coded = (f"{sum(r['stored'] for r in rows) / numel:.3f}", f"{entropy / numel:.3f}",
                 f"{100 * (payload / entropy - 1):.2f}") if numel and entropy else ("-",) * 3
        acc = s["metrics"]["accuracy"]
        lines.append("| " + " | ".join([
            s["name"], f"{acc:.2f}", f"{acc - base['metrics']['accuracy']:+.2f}",
            f"{s['bytes'] / 1024:.1f}", f"{base['bytes'] / s['bytes']:.1f}", runtime_mb(s),
            f"{8 * s['bytes'] / base['params']:.2f}",
            f"{s['latency_ms']['512']['median']:.2f}", stage_speed_cell(s, 512),
            *coded]) + " |")
    return "\n".join(lines)


def runtime_mb(stage: dict) -> str:
    """Memory of a fresh process that loads the artifact and runs a batch, above its baseline."""
    memory = stage.get("runtime_mb")
    return f"{memory['resident']:.1f} / {memory['peak']:.1f}" if memory else "n/a"


def layer_table(manifest: dict) -> str:
    head = ("tensor", "weights", "non-zero %", "form", "bits/weight", "bits/non-zero",
            "entropy bits/weight", "gap %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in coding(manifest).items():
        nz = r["values"]
        coded = r["entropy"] is not None
        lines.append("| " + " | ".join([
            name, f"{r['numel']:,}", f"{100 * nz / r['numel']:.1f}", r["form"],
            f"{r['stored'] / r['numel']:.3f}", f"{r['stored'] / max(nz, 1):.2f}",
            f"{r['entropy'] / r['numel']:.3f}" if coded else "-",
            f"{100 * (r['payload'] / r['entropy'] - 1):.2f}" if coded and r["entropy"] else "-",
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-dc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--limit", type=int, default=None,
                        help="cap every split at this many images (a quick smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    task = VisionTask.fashion_mnist(limit=args.limit)
    ctx = slimkit.Context(task=task, seed=args.seed)
    start = time.perf_counter()
    teacher = train_teacher(task, ctx, recipe=dataclasses.replace(
        CNN_RECIPE, epochs=args.teacher_epochs))
    metrics = run_plan(teacher, task, PLAN, out, ctx=ctx, title="SmallCNN on Fashion-MNIST",
                       baseline_seconds=time.perf_counter() - start)
    stages = metrics["stages"]
    final = json.loads((out / stages[-1]["artifact"] / MANIFEST).read_text())
    print(f"\n## Deep Compression on Fashion-MNIST (seed {args.seed})\n")
    print(stage_table(metrics, out))
    print("\n".join(["", *regressions_lines(metrics)]))
    print("\n### Coded tensors of the final artifact\n")
    print(layer_table(final))
    cluster = stages[-1]["info"]
    print(f"\ncluster step (same streams): {cluster['bits_per_weight']} bits/weight, entropy "
          f"{cluster['entropy_bits_per_weight']}, Huffman gap {cluster['entropy_gap_pct']}%")
    ratio = stages[0]["bytes"] / stages[-1]["bytes"]
    lost = stages[0]["metrics"]["accuracy"] - stages[-1]["metrics"]["accuracy"]
    print(f"final: {ratio:.1f}x smaller than the fp32 teacher's artifact, accuracy "
          f"{-lost:+.2f} points (targets: >= 30x, >= -0.5)")


if __name__ == "__main__":
    main()
