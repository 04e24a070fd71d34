"""Benchmark: the all-MiniLM-L6-v2 search encoder, side by side on the same texts: torch fp32,
torch quantize_dynamic (per channel), ONNX Runtime fp32, ONNX Runtime quantize_dynamic (per
channel), slimkit's plan (layers 6 -> 3, vocabulary pruned to the domain with dropped tokens
spelled from kept pieces, encoder distillation from the fp32 model, deployed as ONNX with
per-channel INT8), and slimkit's static-embedding student (distill.static, in torch and ONNX
Runtime, fp32 and INT8 rows).

Table 1: MB on disk, MB of a float index of the 20,000-review corpus, latency at batch 1 and 32
(sequences padded to 128; median and p90, one interleaved run beside noise probes of torch fp32
and ORT fp32), sentences per second, speed against ORT INT8 with its verdict, Lee Spearman /
Pearson / nDCG@10, clothing-probe AUC. Table 2, what compression never saw: topic probe
(department), held-out Wikipedia titles as queries for their paragraphs (P@1, R@10), cosine and
top-10 overlap with fp32 on reviews and on held-out Wikipedia, retention of every metric.
Table 3: indexes of the fp32 model's corpus embeddings (float, int8, binary with and without
centring, the float query and rescoring, product quantization, truncated dimensions), each loaded
memory-mapped: bytes scanned in memory, stored, and read per query, recall@10 against exact
float search of 2,000 queries.

    .venv/bin/python bench/encoder.py [--plan recipes/minilm.yaml] [--student DIR] [--rounds 15]
    .venv/bin/python bench/encoder.py --indexes-only
    .venv/bin/python bench/encoder.py --student DIR --extra "narrow 256=DIR2"   # more rows
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
import torch.nn.functional as F
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
from slimkit.export.static import export_static_onnx, write_static_embedding_folder
from slimkit.index import BinaryIndex, FlatIndex, Int8Index, PQIndex, load_index, save_index

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("lee_spearman", "lee_pearson", "lee_ndcg10", "probe_auc")
HELD_OUT = ("topic_acc", "polarity_acc", "wiki_title_p1", "wiki_title_r10", "cosine",
            "top10_overlap", "wiki_cosine", "wiki_top10_overlap")
RETAINED = ("topic_acc", "polarity_acc", "wiki_title_p1", "wiki_title_r10")
PLAIN_BITS = {"center": False, "query": "bits"}  # sign bits searched by Hamming distance
INDEXES = {
    "float (exact)": FlatIndex.build,
    "int8 per dimension": lambda x: Int8Index.build(x, per="dim"),
    # Matryoshka-style prefixes of an embedding not trained for it, renormalised.
    "float, first 96 dims": lambda x: FlatIndex.build(F.normalize(x[:, :96], dim=1)),
    "int8, first 96 dims": lambda x: Int8Index.build(F.normalize(x[:, :96], dim=1), per="dim"),
    "PQ 96 x 8 bits": lambda x: PQIndex.build(x, m=96),
    "PQ 48 x 8 bits": lambda x: PQIndex.build(x, m=48),
    "binary, Hamming": lambda x: BinaryIndex.build(x, **PLAIN_BITS),
    "binary, Hamming + int8 rescore x10": lambda x: BinaryIndex.build(
        x, rescore="int8", multiplier=10, **PLAIN_BITS),
    "binary centred, float query": BinaryIndex.build,
    "binary centred + int8 rescore x10": lambda x: BinaryIndex.build(x, rescore="int8",
                                                                     multiplier=10),
    "binary centred + int8 rescore x20": lambda x: BinaryIndex.build(x, rescore="int8",
                                                                     multiplier=20),
    "binary centred + float rescore x10": lambda x: BinaryIndex.build(x, rescore="float",
                                                                      multiplier=10),
    "binary centred + float rescore x20": lambda x: BinaryIndex.build(x, rescore="float",
                                                                      multiplier=20),
}


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


def _static(args: argparse.Namespace, task, teacher, out: Path) -> tuple[torch.nn.Module, dict]:
    """The static-embedding student (distill.static, defaults), cached as an artifact."""
    path = out / "static"
    if path.exists():
        art = slimkit.load(path)
        return art.model, art.manifest.get("extra") or {}
    model = copy.deepcopy(teacher)
    start = time.perf_counter()
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.methods.StaticKD()]),
                            slimkit.Context(task=task, teacher=teacher, seed=0))
    info = {"compress_minutes": round((time.perf_counter() - start) / 60, 1), **rec[0].info}
    slimkit.save(model, path, task=task, extra=info)
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(ROOT / "recipes" / "minilm.yaml"))
    parser.add_argument("--student", help="a saved student artifact (skips compression)")
    parser.add_argument("--out", default="runs/bench-encoder")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=ARTIFACT",
                        help="another compressed encoder (an artifact), deployed as ONNX INT8 "
                        "and measured beside the plan (repeatable)")
    parser.add_argument("--indexes-only", action="store_true",
                        help="only table 3 (embeds the corpus with the fp32 model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = slimkit.make_task("text-encoder")
    teacher = task.build_model("minilm")
    if args.indexes_only:
        task.set_reference(teacher)
        rows = _index_table(task)
        (out / "indexes.json").write_text(json.dumps(rows, indent=1))
        return
    student, info = _student(args, task, teacher, out)
    print(json.dumps(info), flush=True)
    static, static_info = _static(args, task, teacher, out)
    print(json.dumps(static_info), flush=True)
    static_int8 = copy.deepcopy(static)
    slimkit.compress_(static_int8, slimkit.Plan([slimkit.methods.EmbeddingQuant(bits=8)]),
                      slimkit.Context(task=task, seed=0))
    static_ort = export_static_onnx(static, out / "static-onnx" / "model.onnx")
    static_ort8 = export_static_onnx(static_int8, out / "static-onnx-int8" / "model.onnx")
    write_static_embedding_folder(static, task.tokenizer, out / "static-sentence-transformers",
                                  overwrite=True)

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
    def ort(path: Path) -> OrtEncoder:
        # Idle ONNX Runtime workers sleep at once: spinning, they would take the cores the next
        # variant in the interleaved timing needs.
        return OrtEncoder(path, threads=args.threads, spin=False)

    variants = {
        "torch fp32": (teacher, _mb(fp32_st / "model.safetensors")),
        "torch quantize_dynamic (per channel)": (torch_int8, torch_int8_mb),
        "ORT fp32": (ort(ort_fp32), _mb(ort_fp32)),
        "ORT quantize_dynamic (per channel)": (ort(ort_int8),
                                               _mb(ort_int8)),
        "slimkit student, torch fp32": (student, artifact_bytes(out / "student") / 1e6
                                        if (out / "student").exists() else float("nan")),
        # Model files only, for every row (tokenizer files are about 1 MB in each case).
        "slimkit plan, ORT INT8": (ort(slim_onnx), _mb(slim_onnx)),
        "slimkit static, torch fp32": (static, artifact_bytes(out / "static") / 1e6),
        "slimkit static, ORT fp32": (ort(static_ort),
                                     _mb(static_ort)),
        "slimkit static, ORT INT8 rows": (ort(static_ort8),
                                          _mb(static_ort8)),
    }
    for i, spec in enumerate(args.extra):
        name, _, path = spec.partition("=")
        extra = slimkit.load(path).model.eval()
        onnx = export_encoder_onnx(extra, out / f"extra-{i}-onnx-int8", quantize="dynamic_int8")
        variants[f"{name}, ORT INT8"] = (ort(onnx), _mb(onnx))
    inputs = {b: task.example_inputs(b) for b in (1, 32)}
    lat = latency_interleaved({k: v[0] for k, v in variants.items()}, inputs,
                              rounds=args.rounds, repeats=3, probes=["torch fp32", "ORT fp32"],
                              threads=args.threads)
    task.set_reference(teacher)
    quality = {name: task.evaluate(m) for name, (m, _) in variants.items()}
    st_check = _sentence_transformers_check(slim_st, student, task)
    static_check = _sentence_transformers_check(out / "static-sentence-transformers", static,
                                                task)
    dims = {name: int(task.embed(m, ["a"]).shape[1]) for name, (m, _) in variants.items()}
    _table(variants, lat, quality, dims, len(task.corpus))
    _held_out_table(variants, quality)
    unk = _unk_rates(task, student)
    print(f"\nword pieces of held-out Wikipedia, the plan's vocabulary: {json.dumps(unk)}")
    print(f"sentence-transformers loads {slim_st}: {st_check}")
    print(f"sentence-transformers loads the static student: {static_check}")
    print(noise_line(lat))
    index_rows = _index_table(task)
    (out / "bench.json").write_text(json.dumps({"info": info, "static": static_info,
                                                "latency": lat.summary,
                                                "noise": lat.noise, "threads": lat.threads,
                                                "quality": quality, "unk": unk,
                                                "indexes": index_rows,
                                                "mb": {k: v[1] for k, v in variants.items()},
                                                "sentence_transformers": st_check,
                                                "static_sentence_transformers": static_check},
                                               indent=1))


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def _table(variants, lat, quality, dims, corpus) -> None:
    base_q = quality["torch fp32"]
    base_mb = variants["torch fp32"][1]
    ort_int8 = "ORT quantize_dynamic (per channel)"
    cols = ["variant", "MB", "x smaller", "index MB", "ms@1 med/p90", "ms@32 med/p90",
            "sent/s@32", "x fp32 sent/s", "x vs ORT INT8 @1/@32", *METRICS,
            "retention Lee Sp. / Pe. / nDCG / AUC"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, (_m, mb) in variants.items():
        q, l1, l32 = quality[name], lat[name]["1"], lat[name]["32"]
        row = [name, f"{mb:.1f}", f"{base_mb / mb:.1f}", f"{corpus * dims[name] * 4 / 1e6:.1f}",
               f"{l1['median']:.2f} / {l1['p90']:.2f}",
               f"{l32['median']:.1f} / {l32['p90']:.1f}",
               f"{32e3 / l32['median']:.0f}",
               f"{lat['torch fp32']['32']['median'] / l32['median']:.1f}",
               " / ".join(speed_cell(lat, name, ort_int8, b, "ORT fp32") for b in (1, 32)),
               *[f"{q[m]:.4f}" for m in METRICS],
               " / ".join(f"{q[m] / base_q[m]:.1%}" for m in METRICS)]
        print("| " + " | ".join(row) + " |")


def _held_out_table(variants, quality) -> None:
    base_q = quality["torch fp32"]
    cols = ["variant", *HELD_OUT, "retention (topic / polarity / P@1 / R@10)"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name in variants:
        q = quality[name]
        row = [name, *[f"{q.get(m, float('nan')):.4f}" for m in HELD_OUT],
               " / ".join(f"{q[m] / base_q[m]:.1%}" for m in RETAINED)]
        print("| " + " | ".join(row) + " |")


def _unk_rates(task, student) -> dict:
    from slimkit.nn.remapped_embedding import RemappedEmbedding

    table = next((m for m in student.modules() if isinstance(m, RemappedEmbedding)), None)
    if table is None:
        return {"pruned": False}
    ids = torch.tensor([i for seq in task.general_text_ids() for i in seq])
    composed, unk = table.spelled_share(ids)
    return {"pieces": len(ids), "kept_rows": int(table.weight.shape[0]),
            "spelled_from_kept": round(composed, 5), "unk": round(unk, 5)}


def _index_table(task) -> list[dict]:
    """Indexes over the fp32 model's corpus embeddings (task.reference): recall@10 of each
    against exact float search, for the task's 2,000 query reviews (each excluding itself).
    Each index is saved and loaded back memory-mapped, as a service would: a rescoring store
    stays in the file and only the candidates' rows are read."""
    items, queries = task.reference, task.queries
    exclude = torch.zeros(len(queries), len(items), dtype=torch.bool)
    exclude[torch.arange(len(queries)), queries] = True
    q = items[queries]
    truth = FlatIndex.build(items).search(q, 10, exclude=exclude)[1]
    rows = []
    cols = ["index", "bytes in memory (scanned)", "x smaller in memory", "bytes stored",
            "x smaller stored", "bytes read per query", "recall@10", "ms per 100 queries",
            "build s"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    full = items.numel() * 4
    folder = Path(tempfile.mkdtemp())
    for name, build in INDEXES.items():
        start = time.perf_counter()
        built = build(items)
        build_s = time.perf_counter() - start
        index = load_index(save_index(built, folder / "index.safetensors"), mmap=True)
        dims = index.dim
        start = time.perf_counter()
        found = index.search(q[:, :dims], 10, exclude=exclude)[1]
        ms = (time.perf_counter() - start) * 1e3 / len(q) * 100
        recall = float((found.unsqueeze(2) == truth.unsqueeze(1)).any(2).double().mean())
        scan = getattr(index, "search_bytes", index.nbytes)
        per_row = (index.nbytes - scan) // max(len(index), 1)
        read = scan + 10 * getattr(index, "multiplier", 0) * per_row
        row = {"name": name, "bytes": index.nbytes, "scan": scan, "read_per_query": read,
               "recall@10": recall, "ms_per_100": ms, "build_s": build_s}
        rows.append(row)
        print(f"| {name} | {scan:,} | {full / scan:.1f} | {index.nbytes:,} | "
              f"{full / index.nbytes:.1f} | {read:,} | {recall:.4f} | {ms:.1f} | "
              f"{build_s:.1f} |", flush=True)
    return rows


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
