"""`slimkit index ENCODER TEXTS --out DIR`: embed a corpus with a text encoder, build a compressed
index of it, check the index's recall against exact float search, and write a search bundle
(index, ONNX encoder, texts, standalone query-side search.py) that runs without slimkit.

ENCODER is an exported encoder folder (model.onnx + tokenizer.json) or a text-encoder artifact,
exported here to ONNX (INT8 weights unless --quantize none). Documents are embedded by the same
ONNX Runtime session the queries will use."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import SlimkitError
from ..export.artifact import read_manifest
from ..index import BinaryIndex, FlatIndex, Int8Index, PQIndex, write_search_bundle
from ..tasks.registry import task_from_spec
from .inputs import add_task_args, add_threads_arg, task_from_args, threads_from
from .progress import emit_json, results

KINDS = ("binary", "int8", "flat", "pq")
RESCORES = ("float", "int8", "binary", "none")
CHECK_QUERIES = 1000


def add_parser(add: Any) -> Any:
    about = ("embed a corpus with a text encoder, build a compressed index, check its recall "
             "and write a search bundle with standalone query-side code")
    p = add("index", help=about, description=about[0].upper() + about[1:] + ".")
    p.add_argument("encoder", help="an exported encoder folder (model.onnx + tokenizer.json) "
                   "or a text-encoder artifact directory")
    p.add_argument("texts", help="the documents: a .txt file (one per non-empty line) or "
                   ".jsonl (a JSON string or an object with a \"text\" field per line)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--kind", default="binary", choices=KINDS,
                   help="index kind (default: binary: centred sign bits, float-query search)")
    p.add_argument("--rescore", default="float", choices=RESCORES,
                   help="binary only: rescore the top k x multiplier candidates by the float "
                   "query against float or int8 rows kept on disk (default: float)")
    p.add_argument("--multiplier", type=int, default=20,
                   help="binary only: candidates per result to rescore (default: 20)")
    p.add_argument("--pq-m", type=int, default=48, help="pq only: sub-vectors (default: 48)")
    p.add_argument("--quantize", default="dynamic_int8", choices=["dynamic_int8", "none"],
                   help="ONNX weights when ENCODER is an artifact (default: dynamic_int8)")
    add_task_args(p, recorded=True)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_arg(p)
    p.set_defaults(func=build_index)
    return p


def read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise SlimkitError(f"texts: no such file {str(path)!r}")
    docs: list[str] = []
    # Lines end at "\n" only (newline="" keeps a stray \r; str.splitlines would also cut at
    # \x0b or \u2028 inside a document).
    with open(path, encoding="utf-8", newline="") as f:
        content = f.read()
    for number, line in enumerate(content.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                value = json.loads(line)
            except ValueError:
                raise SlimkitError(f"texts: line {number} of {path} is not JSON") from None
            value = value.get("text") if isinstance(value, dict) else value
            if not isinstance(value, str):
                raise SlimkitError(f"texts: line {number} of {path} has no string text")
            line = value
        docs.append(line)
    if not docs:
        raise SlimkitError(f"texts: {str(path)!r} holds no documents")
    return docs


def _encoder_folder(source: Path, args: argparse.Namespace, work: Path) -> Path:
    """An exported encoder folder: `source` itself, or `source` (an artifact) exported."""
    if (source / "model.onnx").is_file():
        if not (source / "tokenizer.json").is_file():
            raise SlimkitError(f"encoder: {str(source)!r} has model.onnx but no tokenizer.json")
        return source
    if not (source / "manifest.json").is_file():
        raise SlimkitError(f"encoder: {str(source)!r} is neither an encoder folder "
                           "(model.onnx + tokenizer.json) nor an artifact (manifest.json)")
    from ..export.encoder_onnx import ENCODER_JSON, export_encoder_onnx
    from ..export.static import export_static_onnx
    from ..nn.static_encoder import StaticEncoder
    from .commands import load_for_eval

    manifest = read_manifest(source)
    spec = manifest.get("task_spec")
    spec = spec if isinstance(spec, dict) else None
    task = task_from_args(args, spec) if args.task else task_from_spec(spec)
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None:
        raise SlimkitError(f"--task: {task.name!r} has no tokenizer; give a text-encoder task")
    model = load_for_eval(source, manifest, task, None).model.eval()
    folder = work / "encoder"
    if isinstance(model, StaticEncoder):
        export_static_onnx(model, folder / "model.onnx")
        tokenizer.save_pretrained(str(folder))
        (folder / ENCODER_JSON).write_text(json.dumps(
            {"max_length": int(getattr(task, "max_length", 128)), "quantize": "none"}))
    else:
        export_encoder_onnx(model, folder, tokenizer=tokenizer, quantize=args.quantize,
                            max_length=int(getattr(task, "max_length", 128)))
    return folder


def _build(vectors: torch.Tensor, args: argparse.Namespace) -> Any:
    if args.multiplier < 1:
        raise SlimkitError(f"--multiplier: expected an int >= 1, got {args.multiplier}")
    if args.kind == "binary":
        return BinaryIndex.build(vectors, rescore=args.rescore, multiplier=args.multiplier)
    if args.kind == "int8":
        return Int8Index.build(vectors, per="dim")
    if args.kind == "pq":
        if args.pq_m < 1 or vectors.shape[1] % args.pq_m:
            raise SlimkitError(f"--pq-m: expected a divisor of the dimension "
                               f"{vectors.shape[1]}, got {args.pq_m}")
        return PQIndex.build(vectors, m=args.pq_m)
    return FlatIndex.build(vectors)


def recall_check(index: Any, vectors: torch.Tensor, queries: int = CHECK_QUERIES,
                 k: int = 10) -> dict[str, Any]:
    """Recall@k of `index` against exact float search, the first `queries` documents as queries
    (each excluding itself)."""
    n = min(queries, len(vectors))
    k = min(k, len(vectors) - 1)
    if k < 1:
        return {"queries": 0, "k": 0, "recall": None}
    rows = torch.arange(n)
    exclude = torch.zeros(n, len(vectors), dtype=torch.bool)
    exclude[rows, rows] = True
    q = vectors[:n]
    truth = FlatIndex(vectors).search(q, k, exclude=exclude)[1]
    found = index.search(q, k, exclude=exclude)[1]
    hit = (found.unsqueeze(2) == truth.unsqueeze(1)).any(2).double().mean()
    return {"queries": n, "k": k, "recall": round(float(hit), 5),
            "against": "exact float inner product, each query excluding itself"}


def build_index(args: argparse.Namespace) -> int:
    from ..export.encoder_onnx import OrtEncoder

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SlimkitError(f"out: {str(out)!r} exists and is not empty (--force to replace it)")
    docs = read_texts(Path(args.texts))
    threads = threads_from(args) or 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = _encoder_folder(Path(args.encoder), args, Path(tmp))
        vectors = OrtEncoder(folder, threads=threads).embed(docs).float()
        index = _build(vectors, args)
        check = recall_check(index, vectors)
        try:
            path = write_search_bundle(out, index, encoder=folder, texts=docs, check=check,
                                       force=args.force)
        except ValueError as exc:
            raise SlimkitError(str(exc)) from None
    full = vectors.numel() * 4
    scanned = getattr(index, "search_bytes", index.nbytes)
    summary = {"bundle": str(path), "items": len(docs), "dim": int(vectors.shape[1]),
               "kind": index.kind, "bytes_scanned": scanned, "bytes_stored": index.nbytes,
               "float_bytes": full, "check": check}
    if getattr(args, "json", False):
        emit_json(summary)
    recall = check["recall"]
    results.print(f"{path}: {len(docs)} documents, {index.kind} index scanning "
                  f"{scanned:,} bytes ({full / scanned:.1f}x smaller than float), "
                  f"{index.nbytes:,} stored; recall@{check['k']} against exact search "
                  f"{'n/a' if recall is None else f'{recall:.4f}'} ({check['queries']} queries)")
    results.print(f"search: python {path / 'search.py'} \"your query\"")
    return 0
