"""Benchmark: INT8 variants of the MovieLens DeepFM teacher side by side, torch and ONNX Runtime,
on the same inputs in one process (latency interleaved beside a noise probe of each runtime's
fp32 model): bytes on disk, ms at batch 1 and 512, each speed-up with its verdict (faster /
slower / within noise), test AUC. A second table times the deep tower alone (where the int8
GEMMs run).

    .venv/bin/python bench/quant.py [--threads N] [--rounds 15] [--observers minmax mse ...]

`--threads` (default: the available cores) sets torch's intra-op threads and ORT's alike. On a
shared, overloaded machine use `--threads 1`: torch's thread pool then stops waiting on
descheduled workers (medians of tens of ms at batch 1 with 2 threads under a load average of 8).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from verdicts import noise_line, speed_cell

import slimkit
from slimkit.eval.cost import DEFAULT_ROUNDS, Timing, latency_interleaved
from slimkit.export import artifact_bytes
from slimkit.export.onnx import check_parity, export_onnx
from slimkit.export.runtime import OrtSession, available_cores
from slimkit.methods.quantize.static_int8 import StaticInt8
from slimkit.tasks.ctr import train_teacher
from slimkit.tasks.ctr.models import field_vectors
from slimkit.tasks.registry import make_task

BATCHES = (1, 512)
PROBES = ["torch fp32", "ort fp32"]  # each runtime's reference, timed again as a noise probe


def torch_bytes(model: nn.Module, tmp: Path) -> int:
    """torch.save of the state dict: the only on-disk form of torch's own quantized modules."""
    path = tmp / f"sd-{id(model)}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def compressed(teacher: nn.Module, task, config) -> nn.Module:
    model = copy.deepcopy(teacher)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=task))
    return model.eval()


def build(task, teacher: nn.Module, tmp: Path, observers: list[str],
          threads: int) -> dict[str, dict]:
    """name -> {"runtime", "model" (callable), "bytes"}; every variant of the same teacher."""
    example = task.example_inputs(64)
    rows: dict[str, dict] = {}

    def add(name: str, runtime: str, model, size: int) -> None:
        rows[name] = {"runtime": runtime, "model": model, "bytes": size}

    def ort(name: str, model: nn.Module) -> None:
        path = export_onnx(model, example, tmp / f"{name}.onnx")
        parity = check_parity(model, path, example, min_cosine=0.9999)
        logging.info("%s parity: max |diff| %.2e cosine %.6f", name, parity.max_abs_diff,
                     parity.cosine)
        session = OrtSession(path, threads=threads, spin=False)
        add(f"ort {name}", "onnxruntime", session, path.stat().st_size)
        rows[f"ort {name}"]["source"] = model

    add("torch fp32", "torch", teacher, artifact_bytes(slimkit.save(teacher, tmp / "fp32")))
    tq = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(teacher), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
        dtype=torch.qint8)
    add("torch quantize_dynamic per-channel", "torch", tq, torch_bytes(tq, tmp))
    ort("fp32", teacher)
    fp32_onnx = tmp / "fp32.onnx"
    quantize_dynamic(str(fp32_onnx), str(tmp / "ortq.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    add("ort quantize_dynamic per-channel", "onnxruntime",
        OrtSession(tmp / "ortq.onnx", threads=threads, spin=False),
        (tmp / "ortq.onnx").stat().st_size)
    dyn = compressed(teacher, task, slimkit.DynamicInt8())
    add("slimkit dynamic_int8", "torch", dyn, artifact_bytes(slimkit.save(dyn, tmp / "dyn")))
    ort("slimkit dynamic_int8", dyn)
    for obs in observers:
        for backend in ("torch", "onnxruntime"):
            model = compressed(teacher, task, StaticInt8(observer=obs, backend=backend))
            size = artifact_bytes(slimkit.save(model, tmp / f"static-{obs}-{backend}"))
            if backend == "torch":
                add(f"slimkit static_int8 {obs}", "torch", model, size)
            else:
                ort(f"slimkit static_int8 {obs}", model)
    unchained = compressed(teacher, task, StaticInt8(backend="torch", keep_quantized=False))
    add("slimkit static_int8 percentile, per-layer dequant", "torch", unchained,
        artifact_bytes(slimkit.save(unchained, tmp / "static-unchained")))
    return rows


def table(rows: dict[str, dict], lat: Timing, aucs: dict[str, float]) -> str:
    cols = ("variant", "runtime", "KB", "AUC", "ΔAUC", "ms@1 med/p90", "ms@512 med/p90",
            "x faster@1 vs fp32 same runtime", "x faster@512 vs fp32 same runtime")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    base_auc = aucs["torch fp32"]
    for name, row in rows.items():
        ref = "torch fp32" if row["runtime"] == "torch" else "ort fp32"
        l1, l512 = lat[name]["1"], lat[name]["512"]
        out.append("| " + " | ".join([
            name, row["runtime"], f"{row['bytes'] / 1024:.1f}", f"{aucs[name]:.4f}",
            f"{aucs[name] - base_auc:+.4f}", f"{l1['median']:.3f} / {l1['p90']:.3f}",
            f"{l512['median']:.3f} / {l512['p90']:.3f}",
            speed_cell(lat, name, ref, 1, ref), speed_cell(lat, name, ref, 512, ref)]) + " |")
    return "\n".join(out)


def tower_table(task, rows: dict[str, dict], tmp: Path, rounds: int, threads: int) -> str:
    """The deep tower alone (embeddings excluded) on real tower inputs, torch vs ORT."""
    teacher = rows["torch fp32"]["model"]
    with torch.inference_mode():
        sparse, bag = task.example_inputs(512)
        feats = torch.stack(field_vectors(teacher.embeddings, teacher.bag, sparse, bag),
                            dim=1).flatten(1)
    inputs = {b: (feats[:b].clone(),) for b in BATCHES}
    towers = {"torch fp32": nn.Sequential(teacher.tower, teacher.head)}
    for name in ("slimkit static_int8 percentile",
                 "slimkit static_int8 percentile, per-layer dequant",
                 "slimkit dynamic_int8"):
        m = rows[name]["model"]
        towers[name] = nn.Sequential(m.tower, m.head)
    towers["torch quantize_dynamic per-channel"] = nn.Sequential(
        rows["torch quantize_dynamic per-channel"]["model"].tower,
        rows["torch quantize_dynamic per-channel"]["model"].head)
    sessions: dict[str, object] = dict(towers)
    static_ort = rows["ort slimkit static_int8 percentile"]["source"]
    for name, tower in [("ort fp32", towers["torch fp32"]),
                        ("ort slimkit static_int8 percentile",
                         nn.Sequential(static_ort.tower, static_ort.head))]:
        path = export_onnx(tower, (feats[:8],), tmp / f"tower-{name}.onnx")
        sessions[name] = OrtSession(path, threads=threads, spin=False)
    lat = latency_interleaved(sessions, inputs, rounds=rounds, probes=PROBES, threads=threads)
    cols = ("tower variant", "ms@1 med", "ms@512 med", "x faster@1", "x faster@512")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name in sessions:
        ref = "ort fp32" if name.startswith("ort") else "torch fp32"
        out.append("| " + " | ".join([
            name, f"{lat[name]['1']['median']:.3f}", f"{lat[name]['512']['median']:.3f}",
            speed_cell(lat, name, ref, 1, ref), speed_cell(lat, name, ref, 512, ref)]) + " |")
    return "\n".join([*out, "", noise_line(lat)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--observers", nargs="+", default=["minmax", "percentile", "mse", "kl"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer suggests pre-processing
    warnings.simplefilter("ignore")  # torch.ao deprecation and quantized-tensor notices
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    task = make_task("movielens")
    teacher = train_teacher(task, slimkit.Context(task=task, seed=args.seed), "deepfm").eval()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        rows = build(task, teacher, tmp, args.observers, args.threads)
        aucs = {name: task.evaluate(row["model"])["auc"] for name, row in rows.items()}
        inputs = {b: task.example_inputs(b) for b in BATCHES}
        lat = latency_interleaved({n: r["model"] for n, r in rows.items()}, inputs,
                                  rounds=args.rounds, probes=PROBES, threads=args.threads)
        print(f"\n## DeepFM on MovieLens-100k: INT8 variants ({os.cpu_count()} CPUs)\n")
        print(table(rows, lat, aucs))
        print(f"\n{noise_line(lat)}")
        print("\n## Deep tower + head only (batch 1 / 512 tower inputs)\n")
        print(tower_table(task, rows, tmp, args.rounds, args.threads))


if __name__ == "__main__":
    main()
