"""The headline a reader sees first: the final stage against the baseline on size, speed per
runtime (batch 1 and the largest batch, each with its verdict), quality with its split, memory
and any regression. Both pages render these items; `summary` is the same as one sentence."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .speed import RUNTIMES, claim_text, has_verdicts
from .stage_tables import regression_lines
from .table import (
    format_bytes,
    format_delta,
    format_quality,
    format_ratio,
    format_sig,
    latency_batches,
    quality_label,
    stage_rows,
)


@dataclasses.dataclass(frozen=True)
class Item:
    label: str
    value: str  # lines separated by "\n"
    detail: str = ""
    tone: str = ""  # "good", "bad", "noise" or ""


def _speed(metrics: Mapping[str, Any], base: Mapping[str, Any], final: Mapping[str, Any],
           runtime: str, label: str) -> Item | None:
    key = "latency" if runtime == "torch" else "ort_latency"
    timed = [bs for bs in latency_batches(metrics)
             if (base[key].get(bs) or {}).get("median") is not None
             and (final[key].get(bs) or {}).get("median") is not None]
    if not timed:
        return None
    shown = list(dict.fromkeys([timed[0], timed[-1]]))  # batch 1 and the large batch
    times = "; ".join(f"batch {bs}: {format_sig(base[key][bs]['median'])} → "
                      f"{format_sig(final[key][bs]['median'])} ms" for bs in shown)
    claims = [final["claims"][runtime].get(bs) for bs in shown]
    if not any(claims):
        # No verdict, no claim: without a noise probe a ratio may be the machine's noise.
        return Item(f"Speed, {label}", "no speed claim",
                    f"median {times}; this run has no noise probe", "noise")
    lines = [f"batch {bs}: {claim_text(c) or 'no verdict'}" for bs, c in zip(shown, claims,
                                                                               strict=True)]
    verdicts = {c["verdict"] for c in claims if c}
    tone = "bad" if "slower" in verdicts else "good" if verdicts == {"faster"} else "noise"
    return Item(f"Speed, {label}", "\n".join(lines), f"median {times}", tone)


def _cut(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def headline(metrics: Mapping[str, Any]) -> list[Item]:
    """The items in reading order; only the baseline when no other stage was measured."""
    rows = stage_rows(metrics)
    base = next(r for r in rows if r["is_baseline"])
    final = rows[-1]
    if final is base:
        return [Item("Baseline only", f"only '{base['name']}' was measured")]
    items = []
    if final["size_ratio"] is not None:
        ratio = final["size_ratio"]
        items.append(Item("Size", f"{format_ratio(ratio)} smaller" if ratio >= 1
                          else f"{format_ratio(1 / ratio)} larger",
                          f"artifact {format_bytes(base['bytes'])} → "
                          f"{format_bytes(final['bytes'])}", "good" if ratio > 1 else "bad"))
    for runtime, label in RUNTIMES:
        item = _speed(metrics, base, final, runtime, label)
        if item is not None:
            items.append(item)
    better = "higher" if metrics.get("higher_is_better", True) else "lower"
    tone = "" if final["quality_better"] is None else (
        "good" if final["quality_better"] else "bad")
    if final["quality_delta"] is not None:
        items.append(Item(
            f"Quality, {quality_label(metrics)}",
            f"{format_quality(base['primary'])} → {format_quality(final['primary'])} "
            f"({format_delta(final['quality_delta'], base['primary'])})",
            f"{better} is better; one measurement, so no noise band", tone))
    before, after = base["runtime_mb"], final["runtime_mb"]
    if before["model"] is not None and after["model"] is not None:
        process = "" if before["resident"] is None or after["resident"] is None else (
            f"process resident {format_sig(before['resident'])} → "
            f"{format_sig(after['resident'])} MiB above its baseline")
        items.append(Item("Run-time memory",
                          f"model {format_sig(before['model'])} → "
                          f"{format_sig(after['model'])} MiB", process))
    flagged = regression_lines(metrics)
    if flagged or any("regressions" in s for s in metrics.get("stages") or []):
        # The first two, each cut short: the Regressions section below has them in full.
        shown = "; ".join(_cut(f"{name}: {text}") for name, text in flagged[:2])
        items.append(Item("Regressions", f"{len(flagged)} flagged" if flagged else "none",
                          shown + (" …" if len(flagged) > 2 else ""),
                          "bad" if flagged else "good"))
    return items


def summary(metrics: Mapping[str, Any]) -> str:
    """The headline as one sentence (the first line of both pages' text versions)."""
    rows = stage_rows(metrics)
    base, final = next(r for r in rows if r["is_baseline"]), rows[-1]
    if final is base:
        return f"Only the baseline stage '{base['name']}' was measured."
    parts = []
    for item in headline(metrics):
        text = f"{item.label[0].lower()}{item.label[1:]}: {item.value.replace(chr(10), ', ')}"
        if item.label.startswith("Quality"):
            text += ", " + item.detail.split(";")[0]  # "higher is better"
        parts.append(text)
    tail = "" if has_verdicts(metrics) else " (no speed claims: this run has no noise probe)"
    return (f"Final stage '{final['name']}' vs baseline '{base['name']}': "
            + "; ".join(parts) + "." + tail)
