"""Regressions of a stage against the stage before it: an artifact that grew, or a batch size
that got slower beyond noise (metrics.json's per-stage `regressions`), each with its reason when
the method and facts measured on the artifacts and the model explain it (None otherwise)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .cost import SLOWER

# Per-layer side data a method stores beside its compressed tensors (why a small layer can cost
# more than it saves); quantize.embedding's rows are worked out from the table widths instead.
SIDE_DATA = {
    "quantize.cluster": "a codebook per layer beside the packed indices",
    "quantize.dynamic_int8": "per-channel scales beside the int8 weights",
    "quantize.static_int8": "per-channel scales and zero points, and activation ranges",
    "quantize.qat": "per-channel scales and zero points, and activation ranges",
    "quantize.weight_only": "a scale per group beside the packed weights",
    "quantize.binary": "a scale per row beside the sign bits",
    "quantize.mixed": "scales per layer beside the low-bit weights",
    "prune.magnitude": "a bitmap of kept positions beside the kept values",
}
# What a method adds to every call, whatever the batch (why small batches can get slower).
PER_CALL = {
    "quantize.dynamic_int8": "quantizes every call's activations (a range scan, then int8 "
                             "conversion) before each int8 matmul",
    "quantize.static_int8": "quantizes and dequantizes activations where int8 and fp32 ops meet",
    "quantize.qat": "quantizes and dequantizes activations where int8 and fp32 ops meet",
    "quantize.embedding": "dequantizes every looked-up row (codes x scale + offset)",
    "quantize.embedding_budget": "dequantizes every looked-up row (codes x scale + offset)",
}
PACKED = "packed"  # memory_mode of layers that rebuild their dense weight on every call


def artifact_parts(path: Path) -> dict[str, int]:
    """{"tensors": tensor data bytes, "metadata": the rest (manifest.json, the safetensors
    header, other files)} of an artifact directory."""
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    weights = path / "model.safetensors"
    tensors = 0
    if weights.is_file():
        with weights.open("rb") as f:  # safetensors: u64 header length, JSON header, data
            tensors = weights.stat().st_size - 8 - int.from_bytes(f.read(8), "little")
    return {"tensors": tensors, "metadata": total - tensors}


def _tables(model: nn.Module, names: list[str] | None) -> list[tuple[int, int, int]]:
    """(rows, width, bits) of the row-quantized tables among `names` (all when None)."""
    found = []
    for name, module in model.named_modules():
        rows, width, bits = (getattr(module, k, None)
                             for k in ("num_embeddings", "embedding_dim", "bits"))
        if isinstance(rows, int) and isinstance(width, int) and isinstance(bits, int) \
                and (names is None or name in names):
            found.append((rows, width, bits))
    return found


def _embedding_reason(tables: list[tuple[int, int, int]], parts: dict[str, int]) -> str | None:
    """Row-wise codes cost ceil(width * bits / 8) bytes plus an fp16 scale and offset (4 B) a
    row, against 4 * width for fp32: from that and the measured parts, why the tables grew."""
    if not tables:
        return None
    pairs = sorted({(w, b) for _, w, b in tables})
    coded = {(w, b): math.ceil(w * b / 8) + 4 for w, b in pairs}
    larger = [(w, b) for w, b in pairs if coded[w, b] >= 4 * w]
    if larger:
        w, b = larger[0]
        return (f"INT{b} rows of {coded[w, b]} B (codes + fp16 scale and offset) are not smaller "
                f"than the fp32 rows of {4 * w} B they replace in tables of width {w}")
    rows = sum(r for r, _, _ in tables)
    per_row = ", ".join(f"{4 * w} -> {coded[w, b]} B at width {w}" for w, b in pairs)
    return (f"{len(tables)} tables of {rows:,} rows in all ({per_row} a row): tensor data "
            f"{parts['tensors']:+,} B, metadata {parts['metadata']:+,} B (manifest entries and "
            "tensor headers for each table's codes, scales and offsets); tables this narrow "
            "and short cost more than they save")


def _bytes_reason(method: str | None, stage: Mapping[str, Any], parts: dict[str, int],
                  model: nn.Module) -> str | None:
    if method in ("quantize.embedding", "quantize.embedding_budget"):
        quantized = (stage.get("info") or {}).get("quantized")
        reason = _embedding_reason(_tables(model, quantized), parts)
        if reason:
            return reason
    side = SIDE_DATA.get(method or "")
    if parts["tensors"] <= 0 < parts["metadata"]:
        return (f"tensor data {parts['tensors']:+,} B, metadata {parts['metadata']:+,} B: the "
                "per-layer entries" + (f" ({side})" if side else "") +
                " cost more than the layers save")
    if parts["tensors"] > 0:
        return f"tensor data {parts['tensors']:+,} B" + (f": {side}" if side else "")
    return None


def _latency_reason(method: str | None, stage: Mapping[str, Any], runtime: str,
                    batch: str, slower: set[str]) -> str | None:
    info = stage.get("info") or {}
    if info.get("memory_mode") == PACKED:
        return "packed layers rebuild their dense weights on every call (cache=True keeps them)"
    largest = max(stage["speed"][runtime], key=int)
    per_call = PER_CALL.get(method or "")
    if batch != largest and largest not in slower:
        cost = f"{method} {per_call}" if per_call else "a fixed per-call cost"
        return f"{cost}: at batch {batch} that outweighs what it saves (not slower at batch " \
               f"{largest})"
    return f"{method} {per_call}" if per_call else None


def stage_regressions(previous: Mapping[str, Any], stage: Mapping[str, Any],
                      method: str | None, *, before: Path, after: Path,
                      model: nn.Module) -> list[dict[str, Any]]:
    """`stage` against `previous`: a "bytes" entry when its artifact (`after`, the previous
    one `before`) grew (its tensor data, or the whole by more than 1%), a "latency" entry per
    runtime and batch whose verdict against the previous stage (stage["speed"]) is "slower".
    `method` made the stage, `model` is it."""
    found: list[dict[str, Any]] = []
    old, new = (artifact_parts(before), artifact_parts(after)) \
        if stage["bytes"] > previous["bytes"] else ({}, {})
    parts = {k: new[k] - old[k] for k in new}
    # The manifest's text (a stage name, the digits of a metric) moves by a few bytes from
    # stage to stage: growth counts when the tensors grew or the whole grew by over 1%.
    if parts and (parts["tensors"] > 0 or stage["bytes"] > previous["bytes"] * 1.01):
        found.append({"what": "bytes", "runtime": None, "batch": None,
                      "change": round(stage["bytes"] / previous["bytes"], 4),
                      "reason": _bytes_reason(method, stage, parts, model)})
    for runtime, per_batch in (stage.get("speed") or {}).items():
        slower = {b: v["vs_previous"] for b, v in per_batch.items()
                  if v["vs_previous"] and v["vs_previous"]["verdict"] == SLOWER}
        for batch, versus in slower.items():
            found.append({"what": "latency", "runtime": runtime, "batch": batch,
                          "change": versus["ratio"],
                          "reason": _latency_reason(method, stage, runtime, batch, set(slower))})
    return found


def describe(regression: Mapping[str, Any]) -> str:
    """One line for a log: what regressed, by how much, and why when known."""
    if regression["what"] == "bytes":
        what = f"artifact {regression['change']:.2f}x the previous stage's bytes"
    else:
        what = (f"{regression['runtime']} batch {regression['batch']} "
                f"{1 / regression['change']:.2f}x slower than the previous stage")
    return what + (f" ({regression['reason']})" if regression["reason"] else "")

