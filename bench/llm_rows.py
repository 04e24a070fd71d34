"""The rows of bench/llm.py: each compression in a child process (bench/llm_compress.py, or
llm-compressor's own environment for bench/llm_llmc.py), then its quality scored here by the task
on the same test chunks, and the deployment timing and memory of every ONNX file."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).parent
ORT_NAMES = {"default": "ORT RTN (its DEFAULT) w4 g64 sym", "rtn": "ORT RTN (INC port) w4 g64 sym",
             "hqq": "ORT HQQ w4 g64 asym", "gptq": "ORT GPTQ (INC port) w4 g64 sym"}
RTN_PLAN = """version: 1
steps:
- method: quantize.weight_only
  bits: 4
  group_size: 64
  symmetric: true
  algorithm: rtn
"""


def child(argv: list[str], python: str = sys.executable) -> dict[str, Any]:
    """Run a compression child, which prints its result as one JSON line. A failure is raised with
    the child's last stderr line as the reason."""
    out = subprocess.run([python, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        lines = [x for x in out.stderr.strip().splitlines() if x.strip()]
        raise RuntimeError(lines[-1][:300] if lines else f"exit {out.returncode}")
    # The last line that is a JSON object: quantizers print progress bars without a newline.
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"no result line in the child's output: {out.stdout[-300:]!r}")
    return json.loads(lines[-1])


def compression_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {"compress_s": result["seconds"], "compress_peak_mib": result["compress_peak"],
            "compress_peak_above_mib": result["compress_peak"] - result["loaded_rss"],
            "loaded_mib": result["loaded_rss"], "load_peak_mib": result["load_peak"],
            "before_model_mib": result.get("before_model_rss")}


def quality(task: Any, model: torch.nn.Module, base: dict[str, float] | None) -> dict[str, Any]:
    from llm_report import change_pct

    q = task.evaluate(model)
    return {"perplexity": q["perplexity"], "nll": q["nll"], "kl": q["kl"], "top1": q["top1"],
            "ppl_change_pct": None if base is None
            else change_pct(q["perplexity"], base["perplexity"])}


def dir_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def run_slimkit(spec: str, args: argparse.Namespace, task: Any, work: Path,
                base: dict[str, float]) -> tuple[dict[str, Any], Path | None]:
    import slimkit
    from slimkit.export.artifact import artifact_bytes

    if spec == "inline:rtn":
        name, plan_file = "slimkit RTN w4 g64 sym", work / "rtn.yaml"
        plan_file.write_text(RTN_PLAN)
    else:
        name, plan_file = f"slimkit {Path(spec).stem}", Path(spec)
    out = work / name.replace(" ", "_")
    row: dict[str, Any] = {"name": name, "kind": "slimkit", "plan": str(spec)}
    try:
        result = child([str(HERE / "llm_compress.py"), "slimkit", str(plan_file), str(out),
                        "--eval-chunks", str(args.eval_chunks), "--threads", str(args.threads),
                        *(["--text", args.text] if args.text else [])])
    except RuntimeError as exc:
        return {**row, "not_run": str(exc)}, None
    model = slimkit.load(out / "artifact").model
    row.update(compression_fields(result), bits_per_weight=result["bits"],
               artifact_mb=artifact_bytes(out / "artifact") / 1e6,
               onnx_mb=dir_mb(out / "deploy.onnx"), **quality(task, model, base))
    return row, out / "deploy.onnx"


def run_ort(algorithm: str, args: argparse.Namespace, task: Any, work: Path, fp32_all: Path,
            calib: Path, params: int, base: dict[str, float]) -> tuple[dict[str, Any], Path | None]:
    from llm_bits import onnx_weight_bytes
    from llm_ort import OrtLogits

    name = ORT_NAMES[algorithm]
    out = work / f"ort_{algorithm}"
    row: dict[str, Any] = {"name": name, "kind": "onnxruntime", "algorithm": algorithm}
    if algorithm == "gptq":  # fewer chunks than the other GPTQ rows: the name says so
        row["calibration_chunks"] = args.ort_gptq_chunks
        row["name"] += f", {args.ort_gptq_chunks} calibration chunk(s)"
    try:
        result = child([str(HERE / "llm_compress.py"), "ort", algorithm, str(fp32_all),
                        str(out), "--calib", str(calib), "--threads", str(args.threads)])
    except RuntimeError as exc:
        return {**row, "not_run": str(exc)}, None
    row.update(compression_fields(result),
               bits_per_weight=8 * onnx_weight_bytes(out / "deploy.onnx") / params,
               artifact_mb=dir_mb(out / "deploy.onnx"), onnx_mb=dir_mb(out / "deploy.onnx"),
               **quality(task, OrtLogits(out / "quality.onnx", args.threads), base))
    return row, out / "deploy.onnx"


def run_llmc(args: argparse.Namespace, task: Any, fp32: torch.nn.Module, work: Path,
             calib: Path, params: int, base: dict[str, float]) -> dict[str, Any]:
    """llm-compressor's de-quantized GPTQ weights loaded into a copy of the fp32 model. Its
    packed format deploys in vLLM (GPU), not in ONNX Runtime: no deployment columns."""
    import copy

    from llm_bits import llmc_weight_bytes
    from safetensors.torch import load_file

    row: dict[str, Any] = {"name": "llm-compressor GPTQ W4A16 g64 sym", "kind": "llmcompressor",
                           "calibration_chunks": task.calibration_rows * args.calibration_batches}
    if not Path(args.llmc_python).exists():
        return {**row, "not_run": f"no llm-compressor environment at {args.llmc_python} "
                                  "(see --llmc-python)"}
    out = work / "llmc"
    try:
        result = child([str(HERE / "llm_llmc.py"), str(task.model_folder), str(calib), str(out)],
                       python=args.llmc_python)
    except RuntimeError as exc:
        return {**row, "not_run": str(exc)}
    model = copy.deepcopy(fp32)
    state = load_file(out / "dequantized.safetensors")
    with torch.no_grad():
        for key, weight in state.items():
            model.get_parameter(key).copy_(weight)
    row.update(compression_fields(result),
               bits_per_weight=8 * llmc_weight_bytes(fp32, result["layers"]) / params,
               artifact_mb=dir_mb(out / "compressed"), **quality(task, model, base))
    return row


def deployment(files: dict[str, Path], ids: np.ndarray, args: argparse.Namespace,
               work: Path) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every ONNX file plus the fp32 noise probe, then resident memory of
    each in a fresh process (bench/llm_decode.py's helpers)."""
    from llm_decode import OrtRunner, measure_memory, time_interleaved, timing_medians

    np.save(work / "prompt.npy", ids)
    runners = {name: OrtRunner(path, args.threads) for name, path in files.items()}
    runners["fp32 ORT (probe)"] = OrtRunner(files["fp32"], args.threads)
    medians = timing_medians(time_interleaved(runners, ids, ids[:, :128], args.rounds,
                                              args.new_tokens))
    del runners
    out = {name: dict(m) for name, m in medians.items()}
    for name, path in files.items():
        mem = measure_memory("ort", path, work / "prompt.npy", args.threads)
        out[name].update(resident_mib=mem["VmRSS"], resident_peak_mib=mem["VmHWM"],
                         model_above_runtime_mib=mem["VmRSS"] - mem["base_rss"])
    return out
