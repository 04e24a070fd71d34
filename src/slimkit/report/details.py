"""Per-stage details for the report: what each step reported (sparsity reached, layers chosen,
bits per weight against the entropy of the coded streams) and the ONNX export's parity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ITEMS = 12


def _short(value: Any) -> str | None:
    """A compact text for scalars and short lists; None for nested structures (left out)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(
            isinstance(v, (int, float, str)) for v in value):
        return "[" + ", ".join(_short(v) or "" for v in value) + "]"
    return None


def stage_details(metrics: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, [(key, text), ...]) for every stage that reported anything printable."""
    rows = []
    for stage in metrics.get("stages") or []:
        items = []
        for key, value in (stage.get("info") or {}).items():
            text = _short(value)
            if text is not None:
                items.append((str(key), text))
        # Latency and memory are in the report's tables; here only what has no column.
        ort = stage.get("onnxruntime") or {}
        if "error" in ort:
            items.append(("onnx export", str(ort["error"])))
        elif isinstance(ort.get("parity_cosine"), (int, float)):
            items.append(("ONNX parity cosine", f"{ort['parity_cosine']:.6f}"))
        if items:
            rows.append((str(stage.get("name", "?")), items[:MAX_ITEMS]))
    return rows
