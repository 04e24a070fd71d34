"""Benchmark: the all-MiniLM-L6-v2 search encoder, side by side on the same texts: torch fp32,
torch quantize_dynamic (per channel), ONNX Runtime fp32, ONNX Runtime quantize_dynamic (per
channel), and slimkit's plan (layers 6 -> 3, vocabulary pruned to the domain, encoder
distillation from the fp32 model, deployed as ONNX with per-channel INT8).

Columns: MB on disk, latency at batch 1 and 32 (sequences padded to 128; median and p90, one
interleaved run beside noise probes of torch fp32 and ORT fp32), sentences per second, speed
against ORT INT8 with its verdict (faster / slower / within noise), Lee Spearman / Pearson /
nDCG@10, clothing-probe AUC, cosine and top-10 neighbour overlap with fp32 over the review
corpus, retention against fp32.

    .venv/bin/python bench/encoder.py [--plan recipes/minilm.yaml] [--student DIR] [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from verdicts import noise_line, speed_cell

import slimkit
from slimkit.eval.cost import DEFAULT_ROUNDS, latency_interleaved
from slimkit.export import artifact_bytes
from slimkit.export.encoder import save_sentence_transformers
from slimkit.export.encoder_onnx import (
    OrtEncoder,
    export_encoder_onnx,
    ort_dynamic_int8_baseline,
    torch_dynamic_int8,
)
from slimkit.export.runtime import available_cores

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("lee_spearman", "lee_pearson", "lee_ndcg10", "probe_auc")


def _student(args: argparse.Namespace, task, teacher, out: Path) -> tuple[torch.nn.Module, dict]:
    """The compressed encoder: from --student (an artifact), or by running the plan now."""
    if args.student:
        art = slimkit.load(args.student)
        return art.model, {k: art.manifest.get(k) for k in ("compress_minutes", "steps")}
    plan = slimkit.Plan.load(args.plan)
    model = copy.deepcopy(teacher)
    ctx = slimkit.Context(task=task, teacher=teacher, seed=0)
    start = time.perf_counter()
    records = slimkit.compress_(model, plan, ctx)
    minutes = (time.perf_counter() - start) / 60
    info = {"compress_minutes": round(minutes, 1),
            "steps": [{"method": r.method, "seconds": round(r.seconds, 1),
                       **{k: v for k, v in r.info.items() if k != "block_influence"}}
                      for r in records]}
    slimkit.save(model, out / "student", plan=plan.to_dict(), task=task, extra=info)
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(ROOT / "recipes" / "minilm.yaml"))
    parser.add_argument("--student", help="a saved student artifact (skips compression)")
    parser.add_argument("--out", default="runs/bench-encoder")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = slimkit.make_task("text-encoder")
    teacher = task.build_model("minilm")
    student, info = _student(args, task, teacher, out)
    print(json.dumps(info), flush=True)

    tmp = Path(tempfile.mkdtemp())
    fp32_st = save_sentence_transformers(teacher, task.tokenizer, tmp / "fp32-st")
    ort_fp32, ort_int8, _, _ = ort_dynamic_int8_baseline(teacher, tmp / "ort",
                                                         tokenizer=task.tokenizer)
    torch_int8, torch_int8_mb = torch_dynamic_int8(teacher)
    # Measured with the id map inside the graph (it takes the task's original token ids; the map
    # is counted in its bytes); the deployable folder with a remapped tokenizer is written too.
    slim_onnx = export_encoder_onnx(student, out / "onnx-int8-idmap", quantize="dynamic_int8")
    export_encoder_onnx(student, out / "deploy-onnx-int8", tokenizer=task.tokenizer,
                        quantize="dynamic_int8")
    slim_st = save_sentence_transformers(student, task.tokenizer, out / "sentence-transformers")
    variants = {
        "torch fp32": (teacher, _mb(fp32_st / "model.safetensors")),
        "torch quantize_dynamic (per channel)": (torch_int8, torch_int8_mb),
        "ORT fp32": (OrtEncoder(ort_fp32, threads=args.threads), _mb(ort_fp32)),
        "ORT quantize_dynamic (per channel)": (OrtEncoder(ort_int8, threads=args.threads),
                                               _mb(ort_int8)),
        "slimkit student, torch fp32": (student, artifact_bytes(out / "student") / 1e6
                                        if (out / "student").exists() else float("nan")),
        # Model files only, for every row (tokenizer files are about 1 MB in each case).
        "slimkit plan, ORT INT8": (OrtEncoder(slim_onnx, threads=args.threads), _mb(slim_onnx)),
    }
    inputs = {b: task.example_inputs(b) for b in (1, 32)}
    lat = latency_interleaved({k: v[0] for k, v in variants.items()}, inputs,
                              rounds=args.rounds, repeats=3, probes=["torch fp32", "ORT fp32"],
                              threads=args.threads)
    task.set_reference(teacher)
    quality = {name: task.evaluate(m) for name, (m, _) in variants.items()}
    st_check = _sentence_transformers_check(slim_st, student, task)
    _table(variants, lat, quality)
    print(f"\nsentence-transformers loads {slim_st}: {st_check}")
    print(noise_line(lat))
    (out / "bench.json").write_text(json.dumps({"info": info, "latency": lat.summary,
                                                "noise": lat.noise, "threads": lat.threads,
                                                "quality": quality,
                                                "mb": {k: v[1] for k, v in variants.items()},
                                                "sentence_transformers": st_check}, indent=1))


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def _table(variants, lat, quality) -> None:
    base_q = quality["torch fp32"]
    base_mb = variants["torch fp32"][1]
    ort_int8 = "ORT quantize_dynamic (per channel)"
    cols = ["variant", "MB", "x smaller", "ms@1 med/p90", "ms@32 med/p90", "sent/s@32",
            "x vs ORT INT8 @1/@32", *METRICS, "cosine", "top10", "retention Lee Sp. / AUC"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, (_m, mb) in variants.items():
        q, l1, l32 = quality[name], lat[name]["1"], lat[name]["32"]
        row = [name, f"{mb:.1f}", f"{base_mb / mb:.1f}",
               f"{l1['median']:.1f} / {l1['p90']:.1f}", f"{l32['median']:.0f} / {l32['p90']:.0f}",
               f"{32e3 / l32['median']:.0f}",
               " / ".join(speed_cell(lat, name, ort_int8, b, "ORT fp32") for b in (1, 32)),
               *[f"{q[m]:.4f}" for m in METRICS],
               f"{q.get('cosine', float('nan')):.4f}",
               f"{q.get('top10_overlap', float('nan')):.3f}",
               f"{q['lee_spearman'] / base_q['lee_spearman']:.1%} / "
               f"{q['probe_auc'] / base_q['probe_auc']:.1%}"]
        print("| " + " | ".join(row) + " |")


def _sentence_transformers_check(folder: Path, student, task) -> str:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return "sentence-transformers not installed (pip install 'slimkit[deploy]')"
    texts = task.train_texts[:64]
    st = SentenceTransformer(str(folder), device="cpu")
    ours = task.embed(student, texts)
    theirs = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
    cos = torch.nn.functional.cosine_similarity(ours, theirs).mean()
    return f"mean cosine to slimkit's embeddings {float(cos):.6f} on 64 reviews"


if __name__ == "__main__":
    main()
