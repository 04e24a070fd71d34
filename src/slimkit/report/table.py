"""Per-stage rows and ratios against the baseline, plus the number formatting that the HTML and
Markdown reports share so both show exactly the same figures."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

NA = "n/a"


def _num(value: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN (all shown as n/a)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    return numerator / denominator


def format_sig(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits without scientific notation: 0.2104 -> 0.210, 1234.5 -> 1235."""
    if value is None:
        return NA
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_bytes(n: float | None) -> str:
    """Decimal units (1 MB = 10^6 bytes), matching what file managers and `ls -h --si` show."""
    if n is None:
        return NA
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{format_sig(n / scale)} {unit}"
    return f"{n:.0f} B"


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


def format_ratio(r: float | None) -> str:
    if r is None:
        return NA
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def format_metric(v: float | None, *, signed: bool = False) -> str:
    """Quality values keep 4 significant digits (AUC deltas of 0.001 matter), minus trailing
    zeros: 0.781, 0.7764, -0.0046, 23.46."""
    if v is None:
        return NA
    text = format_sig(v, 4)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"+{text}" if signed and v > 0 else text


def batch_sizes(metrics: Mapping[str, Any], key: str = "latency_ms") -> list[str]:
    """Every batch size any stage reports under `key`, in numeric order (keys are strings)."""
    found: set[str] = set()
    for stage in metrics.get("stages") or []:
        found.update(str(k) for k in (stage.get(key) or {}))
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


def stage_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per stage: raw values (None when missing) and ratios against the baseline stage.

    size_ratio = baseline bytes / stage bytes and speedup[bs] = baseline median / stage median,
    so both read "N x better" above 1; quality_delta = stage - baseline on the primary metric, and
    quality_better says whether that delta is an improvement given higher_is_better.
    """
    stages = list(metrics.get("stages") or [])
    if not stages:
        raise ValueError("metrics: expected a non-empty 'stages' list, got none")
    primary = str(metrics.get("primary_metric") or "")
    higher = bool(metrics.get("higher_is_better", True))
    base = stages[baseline_index(metrics)]
    base_quality = _num((base.get("metrics") or {}).get(primary))
    base_bytes = _num(base.get("bytes"))
    base_latency = {bs: _num((v or {}).get("median")) for bs, v in _latency(base).items()}

    rows = []
    for stage in stages:
        quality = _num((stage.get("metrics") or {}).get(primary))
        delta = None if quality is None or base_quality is None else quality - base_quality
        latency = {
            bs: {"median": _num((v or {}).get("median")), "p90": _num((v or {}).get("p90"))}
            for bs, v in _latency(stage).items()
        }
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
            "latency": latency,
            "speedup": {bs: _ratio(base_latency.get(bs), v["median"]) for bs, v in latency.items()},
            "throughput": {str(k): _num(v) for k, v in (stage.get("throughput") or {}).items()},
            "peak_memory_mb": _num(stage.get("peak_memory_mb")),
            "runtime_mb": {k: _num((stage.get("runtime_mb") or {}).get(k))
                           for k in ("resident", "peak", "loaded", "load_peak", "model")},
            "seconds": _num(stage.get("seconds")),
        })
    return rows


def _latency(stage: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in (stage.get("latency_ms") or {}).items()}


@dataclasses.dataclass(frozen=True)
class Table:
    """Formatted cells; tones mark cells a renderer may colour ("good", "bad" or "")."""

    headers: list[str]
    cells: list[list[str]]
    tones: list[list[str]]
    baseline: int  # index of the baseline row
    speed_from: int  # first latency/throughput column: wide pages may split the table here

    def columns(self, start: int, stop: int | None = None) -> Table:
        """The Stage column plus columns [start, stop): one half of a split table."""
        keep = [0, *range(max(start, 1), len(self.headers) if stop is None else stop)]
        return Table([self.headers[i] for i in keep], [[c[i] for i in keep] for c in self.cells],
                     [[t[i] for i in keep] for t in self.tones], self.baseline, len(keep))

    def is_text(self, column: int) -> bool:
        """Stage and Steps hold words; every other column holds numbers (aligned right)."""
        return self.headers[column] in ("Stage", "Steps")


def build_table(metrics: Mapping[str, Any]) -> Table:
    rows = stage_rows(metrics)
    primary = str(metrics.get("primary_metric") or "quality")
    others = sorted({k for r in rows for k in r["metrics"]} - {primary})
    lat_bs, thr_bs = batch_sizes(metrics), batch_sizes(metrics, "throughput")
    # Bytes on disk beside memory at run time: packed weights may be unpacked when the model runs.
    headers = ["Stage", "Steps", primary, f"Δ {primary}", *others, "Size", "Smaller",
               "Run-time memory (model, est.; process resident / peak)", "Params", "Nonzeros"]
    speed_from = len(headers)
    for bs in lat_bs:
        headers += [f"Latency b={bs}, ms (median / p90)", f"Speed-up b={bs}"]
    headers += [f"Throughput b={bs} (/s)" for bs in thr_bs]
    headers += ["Time"]

    cells, tones = [], []
    for r in rows:
        row = [r["name"] + (" (baseline)" if r["is_baseline"] else ""),
               ", ".join(r["steps"]) or "-",
               format_metric(r["primary"]),
               "-" if r["is_baseline"] else format_metric(r["quality_delta"], signed=True),
               *(format_metric(r["metrics"].get(k)) for k in others),
               format_bytes(r["bytes"]), format_ratio(r["size_ratio"]),
               format_memory(r["runtime_mb"]), format_count(r["params"]),
               format_count(r["nonzeros"])]
        for bs in lat_bs:
            lat = r["latency"].get(bs) or {}
            median, p90 = lat.get("median"), lat.get("p90")
            row.append(NA if median is None else f"{format_sig(median)} / {format_sig(p90)}")
            row.append(format_ratio(r["speedup"].get(bs)))
        row += [format_count(r["throughput"].get(bs)) for bs in thr_bs]
        row += [NA if r["seconds"] is None else f"{format_sig(r['seconds'])} s"]
        tone = "" if r["quality_better"] is None else ("good" if r["quality_better"] else "bad")
        row_tones = [""] * len(row)
        row_tones[3] = tone
        cells.append(row)
        tones.append(row_tones)
    return Table(headers, cells, tones, baseline_index(metrics), speed_from)


def summary(metrics: Mapping[str, Any]) -> str:
    """One sentence: the final stage against the baseline on size, largest-batch speed, quality."""
    rows = stage_rows(metrics)
    base = next(r for r in rows if r["is_baseline"])
    final = rows[-1]
    if final is base:
        return f"Only the baseline stage '{base['name']}' was measured."
    parts = [f"{format_ratio(final['size_ratio'])} smaller"]
    common = [bs for bs in batch_sizes(metrics) if final["speedup"].get(bs) is not None]
    if common:
        parts.append(f"{format_ratio(final['speedup'][common[-1]])} faster at batch {common[-1]}")
    else:
        parts.append(f"speed-up {NA}")
    primary = str(metrics.get("primary_metric") or "quality")
    direction = "higher" if metrics.get("higher_is_better", True) else "lower"
    parts.append(
        f"{primary} {format_metric(final['quality_delta'], signed=True)} "
        f"({format_metric(base['primary'])} → {format_metric(final['primary'])}, "
        f"{direction} is better)"
    )
    return f"Final stage '{final['name']}' vs baseline '{base['name']}': " + ", ".join(parts) + "."
