"""Shared by the benchmarks: speed cells from an interleaved timing with a noise probe
(slimkit.eval.cost.latency_interleaved), so no table prints a bare ratio: each cell is the paired
ratio and its verdict, faster / slower / within noise of the runtime's probe."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from slimkit.eval.cost import Timing
from slimkit.report.speed import claim_text


def cell(versus: Mapping[str, Any] | None) -> str:
    """`1.78x faster`, `1.6x slower` or `within noise (±9%)` from a comparison ({"ratio",
    "verdict", "band"}: Timing.compare, or a run_plan stage's speed entry), as the report
    words it: no ratio where the probe cannot tell it from noise."""
    if not versus:
        return "n/a"
    if versus["verdict"] == "within noise":
        return f"within noise (±{versus['band']:.0%})"
    return claim_text(versus)


def speed_cell(timed: Timing, name: str, reference: str, batch: int | str, probe: str) -> str:
    """`name` against `reference` (ratio reference / name), judged by `probe`'s noise."""
    if name == reference:
        return "1 (reference)"
    return cell(timed.compare(name, reference, str(batch), probe))


def stage_speed_cell(stage: Mapping[str, Any], batch: int | str,
                     runtime: str = "torch") -> str:
    """A run_plan stage's recorded speed against the baseline, in `runtime`."""
    speed = ((stage.get("speed") or {}).get(runtime) or {}).get(str(batch)) or {}
    return cell(speed.get("vs_baseline"))


def noise_line(timed: Timing) -> str:
    """One line: threads, load and each probe's band per batch size."""
    bands = "; ".join(f"{name}: " + ", ".join(f"±{band:.0%} at batch {b}"
                                              for b, band in per.items())
                      for name, per in timed.noise.items())
    return (f"timed on {timed.threads} threads (torch and ONNX Runtime), load average "
            f"{os.getloadavg()[0]:.1f}; noise probe bands: {bands}")


def regressions_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A line per regression run_plan flagged (bytes grown, a batch slower than before)."""
    from slimkit.eval.regressions import describe

    return [f"- {s['name']}: {describe(r)}" for s in metrics["stages"]
            for r in s.get("regressions", [])]
