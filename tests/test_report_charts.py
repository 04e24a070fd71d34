"""The report charts' honesty: quality drawn as a change from the baseline with a zero line on an
axis at least 1% of the baseline wide, latency from zero with the noise band, and no two texts
of a chart overlapping (checked on the boxes matplotlib computes, in crowded cases too)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_report_demo import demo_metrics

from slimkit.report.chart_labels import overlapping, overlaps
from slimkit.report.charts import chart_figures, label_boxes


def _crowded() -> dict[str, Any]:
    """Ten stages, several of the same size and quality: labels must step aside."""
    metrics = demo_metrics()
    extra = copy.deepcopy(metrics["stages"][1:5])
    for i, stage in enumerate(extra):
        stage["name"] = f"{stage['name']}.again{i}"
        stage["metrics"]["auc"] += 0.00001 * i
    metrics["stages"] += extra
    return metrics


@pytest.fixture(scope="module")
def demo_figures() -> dict[str, Any]:
    return chart_figures(demo_metrics())


@pytest.mark.parametrize("case", ["demo", "crowded"])
def test_no_two_chart_texts_overlap(case: str) -> None:
    metrics = demo_metrics() if case == "demo" else _crowded()
    boxes = label_boxes(metrics)
    assert set(boxes) == {"quality", "size", "memory", "latency", "quality_vs_size"}
    for name, found in boxes.items():
        assert len(found) > 10, name
        assert overlapping(found) == [], name
    names = [text for text, _ in boxes["quality_vs_size"]]
    assert all(s["name"] in " ".join(names) for s in metrics["stages"])


def test_the_overlap_check_sees_overlap() -> None:
    assert overlaps((0, 0, 10, 10), (5, 5, 15, 15))
    assert not overlaps((0, 0, 10, 10), (10, 0, 20, 10))  # touching is fine
    assert overlapping([("a", (0, 0, 10, 10)), ("b", (9, 9, 12, 12))]) == [("a", "b")]


def test_quality_is_a_change_from_the_baseline(demo_figures: dict[str, Any]) -> None:
    ax = demo_figures["quality"].axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 0 < hi and hi - lo >= 0.01 * 0.70532  # zero inside, at least 1% of the baseline
    zero = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.0, 0.0]]
    assert zero and "zero = baseline teacher: test AUC 0.7053" in zero[0].get_label()
    assert "test AUC" in ax.get_ylabel() and "test AUC" in ax.get_title()
    assert "noise" not in ax.get_ylabel()  # no invented band for a single measurement


def test_a_noise_sized_quality_change_stays_small() -> None:
    metrics = demo_metrics()
    metrics["stages"] = metrics["stages"][:2]
    metrics["stages"][1]["metrics"]["auc"] = metrics["stages"][0]["metrics"]["auc"] + 0.0009
    ax = chart_figures(metrics)["quality"].axes[0]
    lo, hi = ax.get_ylim()
    assert 0.0009 / (hi - lo) < 0.15  # was a doubling on an axis of 0.7202-0.7223


def test_latency_from_zero_with_the_noise_band(demo_figures: dict[str, Any]) -> None:
    fig = demo_figures["latency"]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "torch, batch 1", "ONNX Runtime, batch 1", "torch, batch 512", "ONNX Runtime, batch 512"]
    for ax in panels:
        assert ax.get_xlim()[0] == 0
        bands = [p for p in ax.patches if p.get_label() == "noise band of the run's probe"]
        assert len(bands) == 1
        for text in (t.get_text() for t in ax.texts):
            if "within noise" in text:
                assert "x " not in text and "x faster" not in text
    # torch batch 1: ratios within [1/1.08, 1.08] are noise: medians within 0.15392 x that
    band = next(p for p in panels[0].patches if p.get_label().startswith("noise"))
    assert band.get_x() == pytest.approx(0.15392 / 1.08)
    assert band.get_x() + band.get_width() == pytest.approx(0.15392 * 1.08)


def test_no_probe_draws_no_band() -> None:
    metrics = demo_metrics()
    del metrics["noise"]
    fig = chart_figures(metrics)["latency"]
    assert not [p for ax in fig.axes for p in ax.patches if p.get_label().startswith("noise")]


def test_sizes_in_binary_units(demo_figures: dict[str, Any]) -> None:
    ax = demo_figures["size"].axes[0]
    assert "MiB" in ax.get_ylabel() and "1024" in ax.get_ylabel()
    assert any(t.get_text().startswith("97.6 KiB") for t in ax.texts)
