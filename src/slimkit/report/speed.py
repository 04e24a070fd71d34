"""Speed as the report may state it: a speed-up only where the run's own noise probe supports it
(a verdict recorded in metrics.json), "within noise" otherwise, and regressions with reasons.

metrics.json files written before the noise probe carry raw latencies only: those get the raw
times and no claim at all, since nothing says how much of a ratio is the machine's noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .units import format_ratio, format_sig

RUNTIMES = (("torch", "torch"), ("onnxruntime", "ONNX Runtime"))
VERDICTS = ("faster", "slower", "within noise")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def latency_of(stage: Mapping[str, Any], runtime: str) -> dict[str, dict[str, float | None]]:
    """batch -> {"median", "p90", "spread"} (ms; None when missing) for one runtime."""
    source = stage.get("latency_ms") if runtime == "torch" \
        else (stage.get("onnxruntime") or {}).get("latency_ms")
    if not isinstance(source, Mapping):
        return {}
    return {str(bs): {k: _num((v or {}).get(k)) for k in ("median", "p90", "spread")}
            for bs, v in source.items() if isinstance(v, Mapping)}


def claim_of(stage: Mapping[str, Any], runtime: str, batch: str,
             against: str = "vs_baseline") -> dict[str, Any] | None:
    """{"ratio", "verdict"} from the stage's recorded `speed`, or None when there is no verdict
    (an older metrics.json, or a comparison the run did not make)."""
    per = ((stage.get("speed") or {}).get(runtime) or {}).get(str(batch)) or {}
    claim = per.get(against) if isinstance(per, Mapping) else None
    if not isinstance(claim, Mapping) or claim.get("verdict") not in VERDICTS:
        return None
    return {"ratio": _num(claim.get("ratio")), "verdict": claim["verdict"]}


def format_times(ratio: float) -> str:
    """2 decimals near 1 (1.04x), 1 decimal above, none from 100x."""
    return f"{ratio:.2f}x" if ratio < 1.095 else format_ratio(ratio)


def claim_text(claim: Mapping[str, Any] | None) -> str:
    """"5.1x faster", "1.7x slower", "within noise" (never a ratio then), or "" for no claim."""
    if claim is None:
        return ""
    verdict, ratio = claim["verdict"], claim.get("ratio")
    if verdict == "within noise" or ratio is None or ratio <= 0:
        return "within noise" if verdict == "within noise" else verdict
    if verdict == "faster":
        return f"{format_times(ratio)} faster"
    return f"{format_times(1 / ratio)} slower"


def noise_band(metrics: Mapping[str, Any], runtime: str, batch: str) -> float | None:
    """The probe's relative half-width for this runtime and batch (0.08: ratios within
    1 ± 0.08 are noise), or None when the run had no probe."""
    return _num(((metrics.get("noise") or {}).get(runtime) or {}).get(str(batch)))


def has_verdicts(metrics: Mapping[str, Any]) -> bool:
    return any(isinstance(s.get("speed"), Mapping) and s["speed"]
               for s in metrics.get("stages") or [])


def regression_text(item: Mapping[str, Any]) -> str:
    """"artifact 8.4% larger than the previous stage (reason)", "torch batch 1 1.14x slower
    than the previous stage (reason)".

    `change` is what eval/regressions.py records: this stage's bytes over the previous stage's
    for "bytes" (1.084: 8.4% larger), the previous stage's median over this one's for "latency"
    (a speed ratio, 0.877: 1.14x slower).
    """
    change = _num(item.get("change"))
    if item.get("what") == "bytes":
        amount = "" if change is None else f" {format_sig((change - 1) * 100, 2)}%"
        text = f"artifact{amount} larger than the previous stage"
    else:
        runtime = dict(RUNTIMES).get(str(item.get("runtime")), str(item.get("runtime") or ""))
        batch = item.get("batch")
        where = " ".join(p for p in (runtime, f"batch {batch}" if batch is not None else "") if p)
        amount = "" if change is None or change <= 0 else f" {format_times(1 / change)}"
        text = f"{where or 'latency'}{amount} slower than the previous stage"
    reason = item.get("reason")
    return f"{text} ({reason})" if reason else text


def regressions_of(stage: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = stage.get("regressions")
    return [r for r in items if isinstance(r, Mapping)] if isinstance(items, list) else []


def speed_note(metrics: Mapping[str, Any]) -> str:
    """How to read the speed numbers: the probe's bands and the thread count, or that this run
    has no probe and so makes no claim."""
    if not has_verdicts(metrics):
        return ("Latency: raw medians. This run has no noise probe, so no speed-up is claimed "
                "(a ratio of two medians on a shared machine can be noise).")
    bands = []
    for runtime, label in RUNTIMES:
        per = (metrics.get("noise") or {}).get(runtime) or {}
        known = [(str(bs), _num(v)) for bs, v in per.items() if _num(v) is not None]
        if known:
            bands.append(f"{label} " + ", ".join(f"±{format_sig(v * 100, 2)}% at batch {bs}"
                                                 for bs, v in known if v is not None))
    threads = metrics.get("threads")
    parts = ["Latency: medians of interleaved rounds"
             + (f", {threads} threads for every runtime" if isinstance(threads, int) else "")
             + ". A speed-up is printed only where it exceeds the run's own noise probe (a "
             "second copy of the baseline timed alongside); otherwise the stage reads "
             "\"within noise\"."]
    if bands:
        parts.append("Noise bands: " + "; ".join(bands) + ".")
    return " ".join(parts)
