"""Per-stage rows and ratios against the baseline, plus the number formatting that the HTML and
Markdown reports share so both show exactly the same figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .speed import RUNTIMES, claim_of, latency_of, regressions_of
from .units import NA, format_bytes, format_duration, format_ratio, format_sig

__all__ = ["NA", "format_bytes", "format_duration", "format_ratio", "format_sig"]  # for the pages


def _num(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN (all shown as n/a)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    return numerator / denominator


def format_memory(runtime_mb: Mapping[str, float | None]) -> str:
    """The model's own MiB (its tensors, exact, plus fbgemm's prepacked weights, estimated), then
    the process's measured resident / peak MiB above its baseline (/proc counts in KiB), which
    adds kernel code and workspace."""
    resident, peak = runtime_mb.get("resident"), runtime_mb.get("peak")
    if resident is None or peak is None:
        return NA
    model = runtime_mb.get("model")
    own = "" if model is None else f"{format_sig(model)} model; "
    return f"{own}{format_sig(resident)} / {format_sig(peak)} MiB"


def format_ms(ms: float | None) -> str:
    return NA if ms is None else f"{format_sig(ms)} ms"


def format_count(n: float | None) -> str:
    """Parameter and sample counts: 410000 -> 410k, 1250000 -> 1.25M."""
    if n is None:
        return NA
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{format_sig(n / scale)}{unit}"
    return f"{n:.0f}"


def format_metric(v: float | None, *, signed: bool = False) -> str:
    """Budgets and drops: 4 significant digits minus trailing zeros (0.002, -0.0046, 23.46)."""
    if v is None:
        return NA
    text = format_sig(v, 4)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"+{text}" if signed and v > 0 else text


def format_quality(v: float | None) -> str:
    """Quality values in a column: 4 significant digits, trailing zeros kept so the column
    lines up (0.7810 above 0.7764; AUC changes of 0.001 matter)."""
    return NA if v is None else format_sig(v, 4)


def format_delta(delta: float | None, reference: float | None) -> str:
    """A quality change at the precision its values are printed with (4 significant digits of
    the reference): 0.7053 -> 0.7105 is "+0.0052", 23.4 -> 22.9 is "-0.50"; "0.0000" when the
    change rounds to nothing at that precision."""
    if delta is None:
        return NA
    ref = abs(reference) if reference else abs(delta) or 1.0
    decimals = max(0, 3 - math.floor(math.log10(ref)))
    text = f"{delta:+.{decimals}f}"
    return text[1:] if float(text) == 0 else text


def batch_sizes(metrics: Mapping[str, Any], key: str = "latency_ms") -> list[str]:
    """Every batch size any stage reports under `key`, in numeric order (keys are strings)."""
    found: set[str] = set()
    for stage in metrics.get("stages") or []:
        found.update(str(k) for k in (stage.get(key) or {}))
    return sorted(found, key=_numeric_key)


def latency_batches(metrics: Mapping[str, Any]) -> list[str]:
    """Every batch size timed on any runtime (torch or ONNX Runtime), in numeric order."""
    found: set[str] = set()
    for stage in metrics.get("stages") or []:
        for runtime, _ in RUNTIMES:
            found.update(latency_of(stage, runtime))
    return sorted(found, key=_numeric_key)


def _numeric_key(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return math.inf, text


def baseline_index(metrics: Mapping[str, Any]) -> int:
    """The stage named by metrics["baseline"]; the first stage when absent or unknown."""
    name = metrics.get("baseline")
    for i, stage in enumerate(metrics.get("stages") or []):
        if stage.get("name") == name:
            return i
    return 0


def metric_name(metrics: Mapping[str, Any]) -> str:
    """The primary metric as people write it (AUC, not auc)."""
    name = str(metrics.get("primary_metric") or "quality")
    return name.upper() if name.lower() in ACRONYMS else name


def split_name(metrics: Mapping[str, Any]) -> str:
    """The split every quality number was measured on. pipeline.py measures each stage on the
    test split (the search measures trials on "valid"); files that do not record it are its."""
    return str(metrics.get("split") or "test")


def quality_label(metrics: Mapping[str, Any]) -> str:
    """"test AUC": a quality number never appears without the split it was measured on."""
    return f"{split_name(metrics)} {metric_name(metrics)}"


ACRONYMS = frozenset({"auc", "mse", "rmse", "mae", "f1", "ndcg", "map", "mrr", "bleu", "wer"})


def stage_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per stage: raw values (None when missing) and ratios against the baseline stage.

    size_ratio = baseline bytes / stage bytes, read "N x smaller" above 1; quality_delta = stage -
    baseline on the primary metric, and quality_better says whether that delta is an improvement
    given higher_is_better. speedup[bs] is the raw torch ratio of medians, kept for callers and
    never printed: the pages state speed only through `claims` (the run's verdicts).
    """
    stages = list(metrics.get("stages") or [])
    if not stages:
        raise ValueError("metrics: expected a non-empty 'stages' list, got none")
    primary = str(metrics.get("primary_metric") or "")
    higher = bool(metrics.get("higher_is_better", True))
    base = stages[baseline_index(metrics)]
    base_quality = _num((base.get("metrics") or {}).get(primary))
    base_bytes = _num(base.get("bytes"))
    base_latency = {bs: v["median"] for bs, v in latency_of(base, "torch").items()}

    rows = []
    for stage in stages:
        quality = _num((stage.get("metrics") or {}).get(primary))
        delta = None if quality is None or base_quality is None else quality - base_quality
        latency = {rt: latency_of(stage, rt) for rt, _ in RUNTIMES}
        rows.append({
            "name": str(stage.get("name", "?")),
            "steps": [str(s) for s in stage.get("steps") or []],
            "is_baseline": stage is base,
            "metrics": {str(k): _num(v) for k, v in (stage.get("metrics") or {}).items()},
            "primary": quality,
            "quality_delta": delta,
            "quality_better": None if not delta else (delta > 0) == higher,
            "bytes": _num(stage.get("bytes")),
            "size_ratio": _ratio(base_bytes, _num(stage.get("bytes"))),
            "params": _num(stage.get("params")),
            "nonzeros": _num(stage.get("nonzeros")),
            "latency": latency["torch"],
            "ort_latency": latency["onnxruntime"],
            "ort_error": (stage.get("onnxruntime") or {}).get("error"),
            "speedup": {bs: _ratio(base_latency.get(bs), v["median"])
                        for bs, v in latency["torch"].items()},
            "claims": {rt: {bs: claim_of(stage, rt, bs) for bs in latency[rt]}
                       for rt, _ in RUNTIMES},
            "regressions": regressions_of(stage),
            "throughput": {str(k): _num(v) for k, v in (stage.get("throughput") or {}).items()},
            "peak_memory_mb": _num(stage.get("peak_memory_mb")),
            "runtime_mb": {k: _num((stage.get("runtime_mb") or {}).get(k))
                           for k in ("resident", "peak", "loaded", "load_peak", "model")},
            "seconds": _num(stage.get("seconds")),
        })
    return rows
