"""Reports: stage ratios, self-contained HTML with embedded PNGs, Markdown + chart files on disk."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from typing import Any

import pytest

from slimkit.report import render_html, render_markdown, stage_rows, summary, write_report
from slimkit.report.charts import latency_chart, render_charts
from slimkit.report.table import (
    format_bytes,
    format_delta,
    format_metric,
    format_ms,
    format_quality,
    format_sig,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stage(name: str, auc: float, size: int, lat1: float, lat512: float) -> dict[str, Any]:
    return {
        "name": name, "steps": [] if name == "teacher" else [f"step.{name}"],
        "metrics": {"auc": auc, "logloss": 0.55}, "bytes": size, "params": 410_000,
        "nonzeros": 205_000,
        "latency_ms": {"1": {"median": lat1, "p90": lat1 * 1.2},
                       "512": {"median": lat512, "p90": lat512 * 1.1}},
        "throughput": {"512": 512_000 / lat512}, "peak_memory_mb": 310.5, "seconds": 12.0,
    }


def _metrics() -> dict[str, Any]:
    return {
        "title": "slimkit demo: DeepFM <MovieLens> & co",
        "task": {"name": "ctr-movielens", "rows": {"train": 80000, "valid": 10000, "test": 10000}},
        "primary_metric": "auc", "higher_is_better": True, "baseline": "teacher",
        "stages": [
            _stage("teacher", 0.781, 1_650_000, 0.21, 2.9),
            _stage("prune", 0.776, 1_650_000, 0.21, 2.85),
            _stage("distill", 0.7795, 1_650_000, 0.205, 2.8),
            _stage("structured", 0.777, 825_000, 0.16, 1.7),
            _stage("quantize", 0.7758, 240_000, 0.12, 1.1),
        ],
        "created": "2026-11-22T12:00:00Z",
    }


@pytest.fixture(scope="module")
def charts() -> dict[str, bytes]:
    return render_charts(_metrics())  # drawn once: rendering is the slow part


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in
            re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_stage_rows_ratios_against_baseline() -> None:
    rows = stage_rows(_metrics())
    assert [r["name"] for r in rows] == ["teacher", "prune", "distill", "structured", "quantize"]
    assert [r["is_baseline"] for r in rows] == [True, False, False, False, False]
    final = rows[-1]
    assert final["size_ratio"] == pytest.approx(1_650_000 / 240_000)
    assert rows[3]["size_ratio"] == pytest.approx(2.0)
    assert final["speedup"]["512"] == pytest.approx(2.9 / 1.1)
    assert final["speedup"]["1"] == pytest.approx(0.21 / 0.12)
    assert final["quality_delta"] == pytest.approx(0.7758 - 0.781)
    assert final["quality_better"] is False
    assert rows[0]["size_ratio"] == pytest.approx(1.0) and rows[0]["quality_delta"] == 0.0


def test_baseline_is_looked_up_by_name() -> None:
    metrics = _metrics()
    metrics["baseline"] = "structured"
    rows = stage_rows(metrics)
    assert [r["is_baseline"] for r in rows] == [False, False, False, True, False]
    assert rows[0]["size_ratio"] == pytest.approx(0.5)
    assert rows[-1]["speedup"]["512"] == pytest.approx(1.7 / 1.1)


def test_formatting() -> None:
    assert format_bytes(1_650_000) == "1.57 MiB"  # binary units, as everywhere (units.py)
    assert format_bytes(240_000) == "234 KiB"
    assert format_bytes(512) == "512 B"
    assert format_ms(2.9) == "2.90 ms"
    assert format_ms(0.2104) == "0.210 ms"
    assert format_sig(1234.6) == "1235"
    assert format_quality(0.781) == "0.7810" and format_metric(0.002) == "0.002"
    assert format_delta(0.7758 - 0.781, 0.781) == "-0.0052"
    assert format_delta(0.00001, 0.781) == "0.0000"  # no sign on what rounds to nothing
    assert format_delta(-0.5, 23.4) == "-0.50"
    assert format_metric(None) == "n/a" and format_delta(None, 0.7) == "n/a"


def test_summary_line() -> None:
    line = summary(_metrics())
    assert "size: 6.9x smaller" in line and "test AUC: 0.7810 → 0.7758 (-0.0052)" in line
    assert "higher is better" in line
    # This fixture predates the noise probe: raw times, no speed-up claimed.
    assert "faster" not in line and "no speed claim" in line and "no noise probe" in line


def test_html_is_self_contained(charts: dict[str, bytes]) -> None:
    html = render_html(_metrics(), charts=charts)
    for name in ["teacher", "prune", "distill", "structured", "quantize"]:
        assert f">{name}" in html
    images = _images(html)
    assert len(images) == 4 and all(png.startswith(PNG_SIGNATURE) for png in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", html, re.IGNORECASE)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert "DeepFM &lt;MovieLens&gt; &amp; co" in html and "<MovieLens>" not in html
    assert "6.9x" in html  # the size ratio appears; no speed ratio without a noise probe
    assert "2.6x" not in html and "no speed claim" in html


def test_html_draws_its_own_charts() -> None:
    metrics = _metrics()
    metrics["stages"] = metrics["stages"][:2]
    images = _images(render_html(metrics))
    assert len(images) == 4 and all(png.startswith(PNG_SIGNATURE) for png in images)


def test_markdown_table_and_chart_files(charts: dict[str, bytes]) -> None:
    text, files = render_markdown(_metrics(), "figs", charts=charts)
    stages = text.split("## Stages")[1].split("##")[0]
    table_rows = [line for line in stages.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 2 + 5  # header, alignment row, one row per stage
    for name in ["prune", "distill", "structured", "quantize"]:
        assert any(line.startswith(f"| {name} |") for line in table_rows)
    assert set(files) == {f"figs/{n}.png" for n in charts}
    for rel in files:
        assert f"]({rel})" in text


def test_write_report_writes_every_file(tmp_path: Any) -> None:
    paths = write_report(tmp_path / "run", _metrics())
    assert {"report.html", "report.md", "charts/quality.png", "charts/size.png",
            "charts/latency.png", "charts/quality_vs_size.png"} == set(paths)
    for rel, path in paths.items():
        assert path == tmp_path / "run" / rel and path.is_file()
        if rel.endswith(".png"):
            assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert "charts/latency.png" in paths["report.md"].read_text(encoding="utf-8")
    assert not list((tmp_path / "run").rglob("*.tmp"))  # temp files renamed, none left behind


def test_missing_keys_show_na(tmp_path: Any) -> None:
    metrics = _metrics()
    stages = metrics["stages"]
    del stages[1]["peak_memory_mb"], stages[1]["throughput"], stages[1]["seconds"]
    del stages[2]["latency_ms"]["512"]
    stages[3]["latency_ms"]["1"].pop("p90")
    del stages[3]["bytes"], stages[3]["metrics"]
    stages[4]["latency_ms"] = {"1": {"median": 0.1}, "64": {"median": 0.5, "p90": 0.6}}
    rows = stage_rows(metrics)
    assert rows[1]["peak_memory_mb"] is None and rows[2]["speedup"].get("512") is None
    assert rows[3]["size_ratio"] is None and rows[3]["quality_delta"] is None
    assert rows[4]["speedup"]["64"] is None  # the baseline never ran batch 64
    html = render_html(metrics)
    assert "n/a" in html and len(_images(html)) == 4
    text, _ = render_markdown(metrics)
    assert "n/a" in text
    write_report(tmp_path, metrics)


def test_sparse_metrics_leave_out_empty_charts() -> None:
    metrics = {"primary_metric": "auc", "stages": [{"name": "only"}, {"name": "other"}]}
    assert render_charts(metrics) == {}
    assert latency_chart(metrics).startswith(PNG_SIGNATURE)  # a "no data" placeholder
    html = render_html(metrics)
    assert "only" in html and _images(html) == []
    assert render_markdown(metrics)[1] == {}


def test_lower_is_better_metric() -> None:
    metrics = copy.deepcopy(_metrics())
    metrics.update(primary_metric="perplexity", higher_is_better=False)
    for stage, ppl in zip(metrics["stages"], [23.4, 25.0, 22.9, 24.1, 24.8], strict=True):
        stage["metrics"] = {"perplexity": ppl}
    rows = stage_rows(metrics)
    assert rows[2]["quality_delta"] == pytest.approx(-0.5) and rows[2]["quality_better"] is True
    assert rows[1]["quality_delta"] == pytest.approx(1.6) and rows[1]["quality_better"] is False
    assert "lower is better" in summary(metrics)
    html = render_html(metrics)
    assert 'class="num good">-0.50<' in html and 'class="num bad">+1.60<' in html


def test_empty_stages_is_an_error() -> None:
    with pytest.raises(ValueError, match="stages"):
        stage_rows({"stages": []})


def test_import_stays_light() -> None:
    code = "import sys, slimkit.report; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
