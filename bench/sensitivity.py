"""Benchmark: per-layer sensitivity of the MovieLens-100k DeepFM teacher to INT8, ternary and binary
Linear weights and to INT4/INT2 embedding tables, then quantize.mixed and
quantize.embedding_budget at two budgets each (artifact bytes, test AUC, delta vs the teacher).
Latency at batch 512 is measured interleaved in one process beside a noise probe of the teacher;
each speed-up is printed with its verdict (faster / slower / within noise).

    .venv/bin/python bench/sensitivity.py [--out runs/bench-sensitivity] [--seed 0] [--teacher DIR]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

import torch
from verdicts import noise_line, speed_cell

import slimkit
from slimkit.eval import latency_interleaved
from slimkit.eval.sensitivity import layer_sensitivity
from slimkit.export import artifact_bytes
from slimkit.methods.quantize.binary import BinaryWeights
from slimkit.methods.quantize.embedding_budget import EmbeddingBudget
from slimkit.methods.quantize.mixed import MixedPrecision
from slimkit.report.sensitivity import sensitivity_chart
from slimkit.tasks.ctr import train_teacher
from slimkit.tasks.registry import make_task

LINEAR = {"int8": slimkit.DynamicInt8(), "ternary": BinaryWeights(kind="ternary"),
          "binary (xnor)": BinaryWeights(kind="xnor")}
TABLES = {"INT4": slimkit.EmbeddingQuant(bits=4), "INT2": slimkit.EmbeddingQuant(bits=2)}


def sensitivity_table(title: str, series: dict[str, list[dict]]) -> str:
    """Rows = layers (most sensitive first by the worst method), one drop and KB column each."""
    worst: dict[str, float] = {}
    kb: dict[str, float] = {}
    for rows in series.values():
        for r in rows:
            worst[r["layer"]] = max(worst.get(r["layer"], -1.0), r["drop"])
            kb[r["layer"]] = r["bytes_before"] / 1024
    names = list(series)
    head = ["layer", "fp32 KB", *(f"{n} KB" for n in names), *(f"{n} Δ valid AUC" for n in names)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in sorted(worst, key=lambda n: -worst[n]):
        got = [{r["layer"]: r for r in series[n]}.get(layer) for n in names]
        cells = [layer, f"{kb[layer]:.1f}",
                 *("-" if g is None else f"{g['bytes_after'] / 1024:.1f}" for g in got),
                 *("-" if g is None else f"{-g['drop']:+.4f}" for g in got)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compress(teacher: torch.nn.Module, task, steps, seed: int) -> tuple[torch.nn.Module, list]:
    model = copy.deepcopy(teacher)
    records = slimkit.compress_(model, slimkit.Plan(steps=tuple(steps)),
                                slimkit.Context(task=task, seed=seed))
    return model, [r.info for r in records]


def describe(name: str, info: dict) -> str | None:
    if "choices" in info:
        return (f"{name}: {info['choices']} (Linear bytes {info['bytes_after']} <= "
                f"{info['budget_bytes']}, predicted valid drop {info['predicted_drop']:+.4f}, "
                f"measured {info['measured_drop']:+.4f})")
    if "tables" in info:
        bits = {n: t["bits"] for n, t in info["tables"].items()}
        return (f"{name}: bits {bits} (table bytes {info['bytes_after']} <= "
                f"{info['budget_bytes']}, measured valid drop {info['measured_drop']:+.4f})")
    return None


def get_teacher(task, args) -> torch.nn.Module:
    """Train the teacher, or reuse a saved one (`--teacher DIR`); the trained one is saved."""
    if args.teacher:
        return slimkit.load(args.teacher).model
    start = time.perf_counter()
    teacher = train_teacher(task, slimkit.Context(task=task, seed=args.seed), "deepfm")
    print(f"teacher trained in {time.perf_counter() - start:.1f} s")
    slimkit.save(teacher, Path(args.out) / "teacher")
    return teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-sensitivity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", help="a saved teacher artifact (default: train one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task("movielens")
    teacher = get_teacher(task, args)

    start = time.perf_counter()
    linear = {n: layer_sensitivity(teacher, task, c, seed=args.seed) for n, c in LINEAR.items()}
    tables = {n: layer_sensitivity(teacher, task, c, seed=args.seed) for n, c in TABLES.items()}
    print(f"sensitivity measured in {time.perf_counter() - start:.1f} s\n")
    print(sensitivity_table("Linear layers (one at a time, valid split)", linear), "\n")
    print(sensitivity_table("Embedding tables (one at a time, valid split)", tables), "\n")
    (out / "sensitivity_linear.png").write_bytes(
        sensitivity_chart(linear, title="DeepFM Linear layers: valid AUC drop, one layer alone"))
    (out / "sensitivity_embedding.png").write_bytes(
        sensitivity_chart(tables, title="DeepFM embedding tables: valid AUC drop, one table alone"))

    variants: dict[str, list] = {
        "teacher (fp32)": [],
        "quantize.dynamic_int8 (all)": [slimkit.DynamicInt8()],
        "quantize.binary ternary (all)": [BinaryWeights(kind="ternary")],
        "quantize.mixed budget 0.15": [MixedPrecision(budget=0.15)],
        "quantize.mixed budget 0.05": [MixedPrecision(budget=0.05)],
        "quantize.embedding INT4 (all)": [slimkit.EmbeddingQuant(bits=4)],
        # INT4 everywhere is 18.75% of the fp32 table bytes (16 dims): same size, chosen bits.
        "quantize.embedding_budget 0.1875": [EmbeddingBudget(budget=0.1875)],
        "quantize.embedding_budget 0.14": [EmbeddingBudget(budget=0.14)],
        "mixed 0.15 + embedding_budget 0.1875": [MixedPrecision(budget=0.15),
                                                 EmbeddingBudget(budget=0.1875)],
    }
    models, rows = {}, []
    base_auc = task.evaluate(teacher)["auc"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, steps) in enumerate(variants.items()):
            t0 = time.perf_counter()
            model, info = compress(teacher, task, steps, args.seed)
            seconds = time.perf_counter() - t0
            size = artifact_bytes(slimkit.save(model, Path(tmp) / str(i)))
            auc = task.evaluate(model)["auc"]
            models[name] = model
            rows.append((name, size, auc, seconds, info))
    lat = latency_interleaved(models, {512: task.example_inputs(512)})  # probe: the teacher

    cols = ["variant", "KB", "x smaller", "test AUC", "Δ AUC", "ms@512", "x faster", "seconds"]
    print("### Compressed models (artifact bytes, test split)\n")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    base_size = rows[0][1]
    for name, size, auc, seconds, _ in rows:
        ms = lat[name]["512"]["median"]
        faster = speed_cell(lat, name, "teacher (fp32)", 512, "teacher (fp32)")
        print(f"| {name} | {size / 1024:.1f} | {base_size / size:.2f} | {auc:.4f} | "
              f"{auc - base_auc:+.4f} | {ms:.3f} | {faster} | {seconds:.1f} |")
    print(f"\n{noise_line(lat)}\n")
    for name, _, _, _, infos in rows:
        for info in infos:
            line = describe(name, info)
            if line:
                print(line)
    print(f"\ncharts: {out / 'sensitivity_linear.png'}, {out / 'sensitivity_embedding.png'}")


if __name__ == "__main__":
    main()
