"""The Markdown table bench/llm.py prints (and the README shows): one line per row, a row that
could not run keeps its line with the reason, so a missing peer is visible rather than absent."""

from __future__ import annotations

from typing import Any

COLUMNS = ("row", "bits/weight (whole model)", "perplexity (change)", "KL vs fp32",
           "top-1 = fp32", "compress s", "peak MiB compressing (above loaded)", "artifact MB",
           "resident MiB deployed", "prefill 512 ms", "decode tok/s")


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cells(row: dict[str, Any]) -> list[str]:
    """The table cells of one row (see bench/llm.py for the keys); "-" where a value does not
    apply (fp32 compresses nothing; a row that does not deploy to ONNX Runtime has no timing)."""
    if row.get("not_run"):
        return [row["name"], f"not run: {row['not_run']}", *["-"] * (len(COLUMNS) - 2)]
    ppl = _num(row.get("perplexity"), ".3f")
    if row.get("ppl_change_pct") is not None:
        ppl += f" ({row['ppl_change_pct']:+.1f}%)"
    peak = _num(row.get("compress_peak_mib"), ".0f")
    if row.get("compress_peak_above_mib") is not None:
        peak += f" ({row['compress_peak_above_mib']:+.0f})"
    top1 = "-" if row.get("top1") is None else f"{100 * row['top1']:.1f}%"
    return [row["name"], _num(row.get("bits_per_weight"), ".2f"), ppl, _num(row.get("kl"), ".4f"),
            top1, _num(row.get("compress_s"), ".1f"), peak, _num(row.get("artifact_mb"), ".1f"),
            _num(row.get("resident_mib"), ".0f"), _num(row.get("prefill_512_ms"), ".0f"),
            _num(row.get("decode_tps"), ".1f")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def change_pct(value: float, base: float) -> float:
    return 100 * (value / base - 1)
