"""Benchmark: static INT8 (W8A8) on the Fashion-MNIST CNN, torch fbgemm and ONNX Runtime QDQ side
by side with fp32 in the same runtime; latency interleaved in one process beside a noise probe of
each runtime's fp32 model (each speed-up with its verdict), accuracy on test.

    .venv/bin/python bench/quant_cnn.py [--threads N] [--teacher-epochs 6]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import tempfile
from pathlib import Path

import torch
from verdicts import noise_line, speed_cell

import slimkit
from slimkit.eval.cost import DEFAULT_ROUNDS, latency_interleaved
from slimkit.export import artifact_bytes
from slimkit.export.onnx import check_parity, export_onnx
from slimkit.export.runtime import OrtSession, available_cores
from slimkit.tasks.vision.task import CNN_RECIPE, train_teacher

BATCHES = (1, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    task = slimkit.make_task("fashion-mnist")
    ctx = slimkit.Context(task=task)
    teacher = train_teacher(task, ctx, "cnn", recipe=dataclasses.replace(
        CNN_RECIPE, epochs=args.teacher_epochs))
    variants: dict[str, tuple[str, object, torch.nn.Module]] = {}
    tmp = Path(tempfile.mkdtemp())
    example = task.example_inputs(8)
    sizes = {}
    for name, config in (("fp32", None),
                         ("static_int8 percentile", slimkit.StaticInt8()),
                         ("static_int8 kl", slimkit.StaticInt8(observer="kl"))):
        model = copy.deepcopy(teacher)
        if config is not None:
            slimkit.compress_(model, slimkit.Plan(steps=(config,)), ctx)
        sizes[name] = artifact_bytes(slimkit.save(model, tmp / name.replace(" ", "-")))
        variants[f"torch {name}"] = ("torch", model, model)
        path = export_onnx(model, example, tmp / f"{name.replace(' ', '-')}.onnx")
        parity = check_parity(model, path, task.example_inputs(64), min_cosine=0.999, atol=0.5)
        logging.warning("%s ORT parity: cosine %.6f max|diff| %.3g", name, parity.cosine,
                        parity.max_abs_diff)
        # Sessions timed side by side: no idle spinning on the next call's cores.
        session = OrtSession(path, threads=args.threads, spin=False)
        variants[f"ort {name}"] = ("onnxruntime", session, model)
    inputs = {b: task.example_inputs(b) for b in BATCHES}
    lat = latency_interleaved({k: v[1] for k, v in variants.items()}, inputs, rounds=args.rounds,
                              probes=["torch fp32", "ort fp32"], threads=args.threads)
    base_acc = task.evaluate(teacher)["accuracy"]
    cols = ("variant", "KB", "accuracy %", "Δ points", "ms@1 med/p90", "ms@256 med/p90",
            "x faster@1 (same runtime)", "x faster@256 (same runtime)")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, (runtime, callable_model, _source) in variants.items():
        ref = "torch fp32" if runtime == "torch" else "ort fp32"
        acc = task.evaluate(callable_model)["accuracy"]
        key = name.split(" ", 1)[1]
        l1, l256 = lat[name]["1"], lat[name]["256"]
        print("| " + " | ".join([
            name, f"{sizes[key] / 1024:.1f}", f"{acc:.2f}", f"{acc - base_acc:+.2f}",
            f"{l1['median']:.3f} / {l1['p90']:.3f}", f"{l256['median']:.3f} / {l256['p90']:.3f}",
            speed_cell(lat, name, ref, 1, ref), speed_cell(lat, name, ref, 256, ref)]) + " |")
    print(f"\n{noise_line(lat)}")


if __name__ == "__main__":
    main()
