"""Benchmark: low-bit compression of SmolLM2-135M-Instruct by slimkit and by its peers, one run,
the same text and tokens for every row (CPU).

    HF_HUB_OFFLINE=1 nice .venv/bin/python bench/llm.py [--plans A.yaml B.yaml ...] [--quick]
        [--text lee-background] [--eval-chunks 16] [--out bench-llm.json]

Rows: fp32 (the causal-LM task's model); slimkit plans (YAML files; default: every
recipes/smollm2-*.yaml plus an inline RTN plan, w4 g64 symmetric); ONNX Runtime's own MatMulNBits
quantizer on the fp32 ONNX export (bench/llm_ort.py: its DEFAULT round-to-nearest, HQQ, the RTN
and GPTQ ports of Intel Neural Compressor); llm-compressor's GPTQ W4A16 g64 in its own virtual
environment (bench/llm_llmc.py, --llmc-python), made once with
    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 \
        && /tmp/llmc/bin/pip install llmcompressor==0.14.0.1   # brings transformers 5.17.0
(torch first, pinned to the local CPU build: left to pip, llmcompressor pulls a CUDA torch).

Quality: the task's test chunks (perplexity, and KL / top-1 agreement against the fp32 model's
distribution); slimkit and llm-compressor rows run in torch, ORT rows run their ONNX file in ONNX
Runtime with fp32 compute (accuracy_level 0), so every row measures its weights alone. The GPTQ
rows all calibrate on the same chunks: the task's calibration batches (8 x 4 chunks of 512
tokens, what slimkit's weight-only method takes by default), except that ORT's GPTQ takes only
the first of them (--ort-gptq-chunks 1): its port runs a whole-model forward per MatMul input per
chunk, 120 forwards per chunk on SmolLM2; one chunk took 1085 s on 2 busy cores.
Compression: each in a fresh child process (bench/llm_compress.py), time and peak memory there.
Deployment (rows with an ONNX Runtime file, MatMulNBits at accuracy_level 4): bench/llm_decode.py's
interleaved timing (prefill of the first 512-token test chunk, greedy decode tokens/s) with a
second fp32 session as a noise probe, and its fresh-process resident memory.
Bits per weight: bench/llm_bits.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
LLMC_PYTHON = "/tmp/llmc/bin/python"
CALIBRATION_BATCHES = 8  # slimkit's weight-only default: the same chunks for every GPTQ row


def default_plans() -> list[str]:
    return [*map(str, sorted((HERE.parent / "recipes").glob("smollm2-*.yaml"))), "inline:rtn"]


def parse_args() -> argparse.Namespace:
    from llm_ort import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="*", default=None,
                        help="slimkit plan YAML files ('inline:rtn' for the built-in RTN plan)")
    parser.add_argument("--ort", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS,
                        help="ONNX Runtime quantizer algorithms to run")
    parser.add_argument("--ort-gptq-chunks", type=int, default=1,
                        help="calibration chunks for ORT's GPTQ (the first of the shared ones)")
    parser.add_argument("--llmc-python", default=LLMC_PYTHON,
                        help="python of llm-compressor's virtual environment ('' skips it)")
    parser.add_argument("--text", default=None, help="the task's text_file (e.g. lee-background)")
    parser.add_argument("--eval-chunks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 eval chunks, 1 round, 16 tokens, 4 calibration chunks "
                             "for the peers' GPTQ")
    parser.add_argument("--out", default=None, help="write every row as JSON here")
    parser.add_argument("--work", default=None, help="keep the files here (default: temporary)")
    args = parser.parse_args()
    args.calibration_batches = CALIBRATION_BATCHES
    if args.quick:
        args.eval_chunks, args.rounds, args.new_tokens, args.calibration_batches = 2, 1, 16, 1
    if args.plans is None:
        args.plans = default_plans()
    if args.threads is None:
        from slimkit.export.runtime import available_cores

        args.threads = available_cores()
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        run(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_llm_") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    from llm_bits import bits_per_weight, logical_parameters
    from llm_report import markdown_table
    from llm_rows import deployment, dir_mb, quality, run_llmc, run_ort, run_slimkit
    from safetensors.torch import save_file

    import slimkit
    from slimkit.export.lm_onnx import export_causal_lm

    started = time.perf_counter()
    task = slimkit.make_task("causal-lm", text_file=args.text, eval_chunks=args.eval_chunks)
    fp32 = task.build_model()
    task.set_reference(fp32)  # the reference distribution: this model, not a second load
    params = logical_parameters(fp32)
    base = quality(task, fp32, None)
    slimkit.save(fp32, work / "fp32_artifact", task=task)
    rows = [{"name": "fp32", "kind": "fp32", "bits_per_weight": bits_per_weight(fp32),
             "artifact_mb": dir_mb(work / "fp32_artifact"), **base, "ppl_change_pct": 0.0}]
    fp32_all = export_causal_lm(fp32, work / "fp32_all.onnx")
    files = {"fp32": export_causal_lm(fp32, work / "fp32.onnx", logits="last")}
    # The peers' calibration chunks: the task's own calibration batches, as slimkit's GPTQ gets.
    calib = work / "calibration.safetensors"
    batches = task.calibration_batches(args.calibration_batches)
    chunks = torch.cat([b["input_ids"] for b in batches])
    save_file({"input_ids": chunks.contiguous()}, calib)
    # ORT's GPTQ (INC port) runs a whole forward per MatMul input per chunk (120 x chunks on
    # SmolLM2, not layer by layer): it gets the first --ort-gptq-chunks of the same chunks.
    ort_calib = work / "calibration_ort.safetensors"
    save_file({"input_ids": chunks[:args.ort_gptq_chunks].contiguous()}, ort_calib)
    for spec in args.plans:
        row, path = run_slimkit(spec, args, task, work, base)
        rows.append(row)
        files.update({row["name"]: path} if path else {})
        print(f"{row['name']}: done", file=sys.stderr)
    for algorithm in args.ort:
        row, path = run_ort(algorithm, args, task, work, fp32_all, ort_calib, params, base)
        rows.append(row)
        files.update({row["name"]: path} if path else {})
        print(f"{row['name']}: done", file=sys.stderr)
    if args.llmc_python:
        rows.append(run_llmc(args, task, fp32, work, calib, params, base))
    del fp32
    timing = deployment(files, task.chunks["test"][:1].numpy(), args, work)
    for row in rows:
        row.update(timing.get(row["name"], {}))
    probe, fp32_timing = timing["fp32 ORT (probe)"], timing["fp32"]
    noise = {key: probe[key] / fp32_timing[key] for key in ("prefill_512_ms", "decode_tps")}
    print(f"\n{task.describe()['text']} text, {task.chunks['test'].numel()} test tokens; "
          f"{args.threads} threads; {args.rounds} interleaved rounds (medians), prefill of a "
          f"512-token test chunk, {args.new_tokens} greedy tokens; resident memory: fresh process "
          "per ONNX file\n")
    print(markdown_table(rows))
    print(f"\nnoise probe (a second fp32 session on the same file): prefill "
          f"{noise['prefill_512_ms']:.3f}x, decode {noise['decode_tps']:.3f}x of the fp32 "
          "medians; timing ratios closer to 1 than that are noise.")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"settings": {k: v for k, v in vars(args).items()}, "task": task.describe(),
             "logical_parameters": params, "rows": rows, "probe": probe, "noise": noise,
             "wall_s": time.perf_counter() - started}, indent=1, default=str))


if __name__ == "__main__":
    main()
