"""The report's tables as formatted cells, shared by the HTML and Markdown pages: stages (quality,
size, memory, time), speed (torch and ONNX Runtime side by side, each with its verdict), and the
folded extras. Each is narrow enough for a 1280 px page; what does not fit goes to the extras."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .speed import RUNTIMES, claim_text, regression_text
from .table import (
    NA,
    batch_sizes,
    format_bytes,
    format_count,
    format_delta,
    format_duration,
    format_memory,
    format_ms,
    format_quality,
    format_ratio,
    format_sig,
    latency_batches,
    metric_name,
    quality_label,
    stage_rows,
)

MARK = "⚠"  # a regression: the cell's stage made this number worse than the stage before
TONES = {"faster": "good", "slower": "bad", "within noise": "noise"}


@dataclasses.dataclass(frozen=True)
class Table:
    """Formatted cells. A cell's text after "\\n" is its second line (a verdict or a note);
    tones mark cells a renderer may colour ("good", "bad", "noise" or "")."""

    headers: list[str]
    cells: list[list[str]]
    tones: list[list[str]]
    baseline: int  # index of the baseline row
    text_columns: int = 1  # the leading columns hold words (left-aligned), the rest numbers
    # Optional header row above the headers: (label, columns spanned), e.g. the runtimes.
    groups: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    short_headers: list[str] = dataclasses.field(default_factory=list)  # under the groups

    def is_text(self, column: int) -> bool:
        return column < self.text_columns


def _rows_and_base(metrics: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    rows = stage_rows(metrics)
    return rows, next(i for i, r in enumerate(rows) if r["is_baseline"])


def _regressed(row: Mapping[str, Any], what: str, runtime: str | None = None,
               batch: str | None = None) -> list[Mapping[str, Any]]:
    return [r for r in row["regressions"] if r.get("what") == what
            and (runtime is None or r.get("runtime") == runtime)
            and (batch is None or str(r.get("batch")) == batch)]


def stages_table(metrics: Mapping[str, Any]) -> Table:
    """Stage, its step as short text, quality, size and memory: the "x smaller" column stays
    within the page."""
    rows, base = _rows_and_base(metrics)
    headers = ["Stage", "Step", quality_label(metrics), f"Δ {metric_name(metrics)}", "Size",
               "Smaller", "Model memory", "Time"]
    base_quality = rows[base]["primary"]
    cells, tones = [], []
    for r in rows:
        grew = _regressed(r, "bytes")
        model_mb = r["runtime_mb"]["model"]
        cells.append([
            r["name"] + ("\nbaseline" if r["is_baseline"] else ""),
            ", ".join(r["steps"]) or "-",
            format_quality(r["primary"]),
            "-" if r["is_baseline"] else format_delta(r["quality_delta"], base_quality),
            format_bytes(r["bytes"]) + (f"\n{MARK} larger" if grew else ""),
            format_ratio(r["size_ratio"]),
            NA if model_mb is None else f"{format_sig(model_mb)} MiB",
            format_duration(r["seconds"]),
        ])
        quality = "" if r["quality_better"] is None else (
            "good" if r["quality_better"] else "bad")
        tones.append(["", "", "", quality, "bad" if grew else "", "", "", ""])
    return Table(headers, cells, tones, base, text_columns=2)


def _speed_cell(row: Mapping[str, Any], runtime: str, batch: str) -> tuple[str, str]:
    lat = (row["latency"] if runtime == "torch" else row["ort_latency"]).get(batch) or {}
    if lat.get("median") is None:
        return ("export failed" if runtime == "onnxruntime" and row["ort_error"] else NA), ""
    text = format_ms(lat["median"])
    claim = row["claims"][runtime].get(batch)
    tone = TONES.get(claim["verdict"], "") if claim else ""
    note = "baseline" if row["is_baseline"] else claim_text(claim)
    if _regressed(row, "latency", runtime, batch):
        note, tone = f"{MARK} {note or 'slower'}", "bad"
    return (f"{text}\n{note}" if note else text), tone


def speed_table(metrics: Mapping[str, Any]) -> Table | None:
    """Median latency per runtime and batch size, torch and ONNX Runtime side by side, each
    with its verdict against the baseline ("within noise" where the probe says so)."""
    rows, base = _rows_and_base(metrics)
    batches = latency_batches(metrics)
    runtimes = [(rt, label) for rt, label in RUNTIMES
                if any(r["latency" if rt == "torch" else "ort_latency"] for r in rows)]
    if not batches or not runtimes:
        return None
    headers = [f"{label}, batch {bs}" for _, label in runtimes for bs in batches]
    cells, tones = [], []
    for r in rows:
        pairs = [_speed_cell(r, rt, bs) for rt, _ in runtimes for bs in batches]
        cells.append([r["name"], *(p[0] for p in pairs)])
        tones.append(["", *(p[1] for p in pairs)])
    return Table(["Stage", *headers], cells, tones, base,
                 groups=[("", 1), *((label, len(batches)) for _, label in runtimes)],
                 short_headers=["Stage", *(f"batch {bs}" for _ in runtimes for bs in batches)])


def extra_tables(metrics: Mapping[str, Any]) -> list[tuple[str, Table]]:
    """The numbers a glance does not need, each table narrow enough on its own: other
    metrics, parameters and process memory; then latency tails and throughput."""
    rows, base = _rows_and_base(metrics)
    primary = str(metrics.get("primary_metric") or "")
    others = sorted({k for r in rows for k in r["metrics"]} - {primary})
    headers = ["Stage", *others, "Params", "Nonzeros",
               "Run-time memory (model, est.; process resident / peak)",
               "Memory after load / peak while loading"]
    cells = []
    for r in rows:
        mem = r["runtime_mb"]
        loaded = NA if mem["loaded"] is None or mem["load_peak"] is None \
            else f"{format_sig(mem['loaded'])} / {format_sig(mem['load_peak'])} MiB"
        cells.append([r["name"], *(format_quality(r["metrics"].get(k)) for k in others),
                      format_count(r["params"]), format_count(r["nonzeros"]),
                      format_memory(mem), loaded])
    blank = [[""] * len(headers) for _ in rows]
    out = [("Other metrics, parameters and memory", Table(headers, cells, blank, base))]
    batches = latency_batches(metrics)
    throughput = batch_sizes(metrics, "throughput")
    tails = [(key, label, bs) for key, label in (("latency", "torch"), ("ort_latency", "ORT"))
             for bs in batches if any(r[key].get(bs) for r in rows)]
    if tails or throughput:
        headers = ["Stage", *(f"{label} p90 b={bs}" for _, label, bs in tails),
                   *(f"Throughput b={bs} (/s)" for bs in throughput)]
        cells = [[r["name"],
                  *(format_ms((r[key].get(bs) or {}).get("p90")) for key, _, bs in tails),
                  *(format_count(r["throughput"].get(bs)) for bs in throughput)]
                 for r in rows]
        out.append(("Latency tails (p90) and throughput",
                    Table(headers, cells, [[""] * len(headers) for _ in rows], base)))
    return out


def regression_lines(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(stage, "artifact 8.4% larger than the previous stage (reason)") per flagged regression."""
    return [(r["name"], regression_text(item)) for r in stage_rows(metrics)
            for item in r["regressions"]]
