"""The report's stage details: what steps reported, including entropy-coding numbers."""

from __future__ import annotations

from slimkit.report import render_html, render_markdown
from slimkit.report.details import stage_details

METRICS = {
    "title": "t", "primary_metric": "accuracy", "higher_is_better": True, "baseline": "teacher",
    "stages": [
        {"name": "teacher", "metrics": {"accuracy": 91.0}, "bytes": 1000},
        {"name": "quantize.cluster", "metrics": {"accuracy": 91.1}, "bytes": 30,
         "info": {"bits_per_weight": 0.601, "entropy_bits_per_weight": 0.588,
                  "entropy_gap_pct": 0.59, "layers": {"fc1": {"bits": 5}}},
         "onnxruntime": {"latency_ms": {"1": {"median": 0.1, "p90": 0.2}},
                         "parity_cosine": 0.99999}},
    ],
}


def test_details_list_scalars_and_skip_nested() -> None:
    rows = dict(stage_details(METRICS))
    assert "teacher" not in rows
    items = dict(rows["quantize.cluster"])
    assert items["bits_per_weight"] == "0.601" and items["entropy_bits_per_weight"] == "0.588"
    assert "layers" not in items and items["ONNX parity cosine"] == "0.999990"
    assert "ONNX Runtime ms @1" not in items  # latency lives in the speed table now


def test_details_appear_in_html_and_markdown() -> None:
    assert "Stage details" in render_html(METRICS, charts={})
    text, _ = render_markdown(METRICS, charts={})
    assert "entropy_gap_pct: 0.59" in text
