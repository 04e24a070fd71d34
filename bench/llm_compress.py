"""One compression in a fresh process, so its time and peak memory are its own (bench/llm.py runs
one child per row). The child loads what it compresses, reads VmRSS, resets VmHWM (writing 5 to
/proc/self/clear_refs), compresses, and reads VmHWM again: the peak while compressing, which
the parent also reports above the loaded RSS (and the child the RSS before the model was loaded:
the libraries, tokenizer and text, which any Python tool pays). Saving and exporting come
after and are not timed.

    python bench/llm_compress.py slimkit PLAN.yaml OUT_DIR --text T --eval-chunks N --threads K
    python bench/llm_compress.py ort ALGORITHM FP32_ALL.onnx OUT_DIR [--calib CALIB.safetensors]

slimkit: builds the causal-LM task and its fp32 model, applies the plan (calibration batches
come from the task, as for any slimkit run), writes OUT_DIR/artifact (slimkit.save) and
OUT_DIR/deploy.onnx (export_causal_lm, last-position logits). ort: loads the fp32 all-positions
export, quantizes it with ONNX Runtime's MatMulNBits quantizer, writes OUT_DIR/quality.onnx
(all positions, fp32 compute) and OUT_DIR/deploy.onnx (last position, accuracy_level 4).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def proc_status() -> dict[str, float]:
    from proc_status import proc_status as status

    return status()


def reset_peak() -> dict[str, float]:
    """VmRSS/VmHWM now, then VmHWM := VmRSS, so the next reading is the peak from here on."""
    loaded = proc_status()
    Path("/proc/self/clear_refs").write_text("5")
    return loaded


def slimkit_row(plan_file: str, out: Path, text: str | None, eval_chunks: int) -> dict[str, Any]:
    from llm_bits import bits_per_weight, stored_weight_bytes

    import slimkit
    from slimkit.export.lm_onnx import export_causal_lm

    task = slimkit.make_task("causal-lm", text_file=text, eval_chunks=eval_chunks)
    before_model = proc_status()["VmRSS"]  # torch, transformers, tokenizer and text
    model = task.build_model()
    plan = slimkit.Plan.from_yaml(Path(plan_file).read_text())
    loaded = reset_peak()
    start = time.perf_counter()
    slimkit.compress_(model, plan, slimkit.Context(task=task))
    seconds = time.perf_counter() - start
    peak = proc_status()["VmHWM"]
    slimkit.save(model, out / "artifact", task=task)
    export_causal_lm(model, out / "deploy.onnx", logits="last")
    return {"seconds": seconds, "before_model_rss": before_model, "loaded_rss": loaded["VmRSS"],
            "load_peak": loaded["VmHWM"], "compress_peak": peak, "bits": bits_per_weight(model),
            "weight_bytes": stored_weight_bytes(model)}


def ort_row(algorithm: str, fp32_all: str, out: Path, calib: str | None) -> dict[str, Any]:
    import onnx
    from llm_ort import last_position_only, quantize, set_accuracy_level

    calibration = None
    if calib:
        from safetensors.numpy import load_file

        calibration = load_file(calib)["input_ids"]
    proto = onnx.load(fp32_all)
    loaded = reset_peak()
    start = time.perf_counter()
    quantized = quantize(proto, algorithm, calibration)
    seconds = time.perf_counter() - start
    peak = proc_status()["VmHWM"]
    del proto
    nodes = set_accuracy_level(quantized, 0)
    onnx.save(quantized, str(out / "quality.onnx"))
    deploy = last_position_only(quantized)
    set_accuracy_level(deploy, 4)
    onnx.save(deploy, str(out / "deploy.onnx"))
    return {"seconds": seconds, "loaded_rss": loaded["VmRSS"], "load_peak": loaded["VmHWM"],
            "compress_peak": peak, "matmulnbits_nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("slimkit", "ort"))
    parser.add_argument("args", nargs="+")
    parser.add_argument("--text", default=None)
    parser.add_argument("--eval-chunks", type=int, default=16)
    parser.add_argument("--calib", default=None)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.kind == "slimkit":
        plan_file, out = a.args
        Path(out).mkdir(parents=True, exist_ok=True)
        result = slimkit_row(plan_file, Path(out), a.text, a.eval_chunks)
    else:
        algorithm, fp32_all, out = a.args
        Path(out).mkdir(parents=True, exist_ok=True)
        result = ort_row(algorithm, fp32_all, Path(out), a.calib)
    print("\n" + json.dumps(result))  # after any progress bar's unfinished line


if __name__ == "__main__":
    main()
