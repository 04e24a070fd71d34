"""The run report on demo-style metrics (the demo's plan, numbers from a real synthetic run, plus
the noise probe's verdicts and regressions): the headline, the verdict rules and the unit. Other
report tests import demo_metrics from here."""

from __future__ import annotations

import copy
import re
from typing import Any

from slimkit.report import render_markdown, speed_table, stages_table, summary
from slimkit.report.headline import headline
from slimkit.report.stage_tables import regression_lines

NOISE = {"torch": {"1": 0.08, "512": 0.05}, "onnxruntime": {"1": 0.10, "512": 0.06}}
STAGES = [  # name, step summary, auc, bytes, seconds, torch ms @1/@512, ORT ms @1/@512, model MiB
    ("teacher", None, 0.70532, 1_567_925, 6.25, (0.15392, 2.39094), (0.05331, 1.10202), 1.489),
    ("prune.magnitude", "prune.magnitude 80% gradual 2 ep lr=0.0005 targets=tower.*,head,cross.*",
     0.70846, 485_144, 0.63, (0.14885, 2.06738), (0.04716, 1.82863), 1.489),
    ("truncate.layers", "truncate.layers recover=distill lr=0.0005 container=tower drop=1",
     0.71099, 334_890, 0.27, (0.12898, 1.24615), (0.03969, 1.16118), 0.877),
    ("distill.logits", "distill.logits lr=0.0003", 0.71068, 334_889, 0.26,
     (0.12763, 1.22297), (0.04029, 1.19342), 0.877),
    ("quantize.dynamic_int8", "quantize.dynamic_int8", 0.71070, 209_083, 0.0,
     (0.14416, 0.46507), (0.0319, 0.64648), 0.719),
    ("quantize.embedding", "quantize.embedding 4-bit", 0.71055, 99_947, 0.0,
     (0.16366, 0.47212), (0.0446, 0.75173), 0.636),
]
REASON = "quantize overhead at batch 1"


def _verdict(ratio: float, band: float) -> dict[str, Any]:
    """As eval/cost.py judges: ratios within [1 / (1 + band), 1 + band] are noise."""
    verdict = "faster" if ratio > 1 + band else "slower" if ratio < 1 / (1 + band) \
        else "within noise"
    return {"ratio": ratio, "verdict": verdict, "band": band}


def demo_metrics() -> dict[str, Any]:
    """metrics.json as pipeline.py writes it with the noise probe: verdicts against the baseline
    and the previous stage from the bands above, and each slower-than-previous a regression."""
    stages: list[dict[str, Any]] = []
    for name, step, auc, size, seconds, torch_ms, ort_ms, model in STAGES:
        lat = {"torch": dict(zip(("1", "512"), torch_ms, strict=True)),
               "onnxruntime": dict(zip(("1", "512"), ort_ms, strict=True))}
        stage: dict[str, Any] = {
            "name": name, "steps": [step] if step else [],
            "metrics": {"auc": auc, "logloss": 0.63}, "bytes": size, "params": 390_407,
            "nonzeros": 108_179, "seconds": seconds,
            "info": {"sparsity": 0.8} if name.startswith("prune") else {},
            "latency_ms": {bs: {"median": ms, "p90": ms * 1.3, "spread": 0.03}
                           for bs, ms in lat["torch"].items()},
            "onnxruntime": {"bytes": size + 2000, "parity_cosine": 1.0,
                            "latency_ms": {bs: {"median": ms, "p90": ms * 1.2, "spread": 0.04}
                                           for bs, ms in lat["onnxruntime"].items()}},
            "runtime_mb": {"resident": 15.2 + len(stages), "peak": 15.9 + len(stages),
                           "loaded": 6.3, "load_peak": 6.9, "model": model},
            "throughput": {"1": 1000 / torch_ms[0], "512": 512_000 / torch_ms[1]},
            "regressions": [],
        }
        if stages:
            first, prev = stages[0], stages[-1]
            stage["speed"] = {}
            for rt, per in lat.items():
                stage["speed"][rt] = {}
                for bs, ms in per.items():
                    ref = (first["latency_ms"] if rt == "torch"
                           else first["onnxruntime"]["latency_ms"])[bs]["median"]
                    before = (prev["latency_ms"] if rt == "torch"
                              else prev["onnxruntime"]["latency_ms"])[bs]["median"]
                    vs_prev = _verdict(before / ms, NOISE[rt][bs])
                    stage["speed"][rt][bs] = {"vs_baseline": _verdict(ref / ms, NOISE[rt][bs]),
                                              "vs_previous": vs_prev}
                    if vs_prev["verdict"] == "slower":
                        stage["regressions"].append({
                            "what": "latency", "runtime": rt, "batch": bs,
                            "change": vs_prev["ratio"],
                            "reason": REASON if "quantize" in name and bs == "1" else None})
        stages.append(stage)
    return {"title": "slimkit demo: the default plan on the synthetic CTR task",
            "task": {"name": "synthetic-20000-seed0",
                     "rows": {"train": 16000, "valid": 2000, "test": 2000}},
            "primary_metric": "auc", "higher_is_better": True, "baseline": "teacher",
            "split": "test", "threads": 2, "noise": NOISE, "stages": stages,
            "created": "2026-11-30T16:46:02+00:00"}


def _claims(table: Any) -> list[str]:
    return [c for row in table.cells for c in row[1:]]


def test_headline_names_size_speed_per_runtime_quality_with_split_and_memory() -> None:
    items = {i.label: i for i in headline(demo_metrics())}
    assert items["Size"].value == "15.7x smaller"
    assert items["Size"].detail == "artifact 1.50 MiB → 97.6 KiB"
    assert items["Speed, torch"].value == "batch 1: within noise\nbatch 512: 5.1x faster"
    assert items["Speed, ONNX Runtime"].value == "batch 1: 1.2x faster\nbatch 512: 1.5x faster"
    assert items["Quality, test AUC"].value == "0.7053 → 0.7106 (+0.0052)"
    assert items["Run-time memory"].value == "model 1.49 → 0.636 MiB"
    assert items["Regressions"].value == "5 flagged"
    assert list(items)[0] == "Size"


def test_within_noise_never_shows_a_ratio() -> None:
    metrics = demo_metrics()
    table = speed_table(metrics)
    assert table is not None
    noisy = [c for c in _claims(table) if "within noise" in c]
    assert noisy and all(not re.search(r"\d(\.\d+)?x", c) for c in noisy)
    # every stage within noise at both batches, both runtimes: no "x faster" anywhere
    for stage in metrics["stages"][1:]:
        for per in stage["speed"].values():
            for claim in per.values():
                claim["vs_baseline"] = {"ratio": 1.9, "verdict": "within noise"}
    page = render_markdown(metrics, charts={})[0]
    assert "faster" not in page and "1.9x" not in page
    assert "within noise" in summary(metrics)


def test_no_probe_no_claim() -> None:
    """A metrics.json from before the noise probe: raw times only, no speed-up anywhere."""
    metrics = demo_metrics()
    for stage in metrics["stages"]:
        stage.pop("speed", None)
        stage.pop("regressions", None)
    del metrics["noise"]
    page = render_markdown(metrics, charts={})[0]
    assert "faster" not in page and "slower" not in page and "no noise probe" in page
    assert "2.39 ms" in page and "0.472 ms" in page  # the raw medians stay


def test_regressions_are_marked_with_their_reason() -> None:
    metrics = demo_metrics()
    lines = regression_lines(metrics)
    assert ("quantize.embedding",
            f"torch batch 1 1.1x slower than the previous stage ({REASON})") in lines
    table = speed_table(metrics)
    assert table is not None
    row = next(r for r in table.cells if r[0] == "quantize.embedding")
    assert row[1] == "0.164 ms\n⚠ within noise"  # vs the baseline: noise; vs the previous: worse
    grown = copy.deepcopy(metrics)
    grown["stages"][-1]["regressions"].append(
        {"what": "bytes", "runtime": None, "batch": None, "change": 1.084,
         "reason": "INT8 rows larger than the fp32 ones for narrow tables"})
    sizes = [r[4] for r in stages_table(grown).cells]
    assert sizes[-1] == "97.6 KiB\n⚠ larger" and "⚠" not in "".join(sizes[:-1])
    text = render_markdown(grown, charts={})[0]
    assert "artifact 8.4% larger than the previous stage (INT8 rows larger" in text


def test_steps_are_short_and_sizes_binary() -> None:
    table = stages_table(demo_metrics())
    assert table.headers[:4] == ["Stage", "Step", "test AUC", "Δ AUC"]
    assert all(len(row[1]) < 80 for row in table.cells)
    assert [row[4] for row in table.cells][:2] == ["1.50 MiB", "474 KiB"]
    assert [row[-1] for row in table.cells][-2:] == ["<1 s", "<1 s"]
