"""The run report in headless chromium at 1280x900, as a reader first sees it: no sideways
scrolling (the page, and no table inside its scroll box), the headline on screen without
scrolling, a "within noise" stage never showing a ratio; screenshots kept for a person to look
at (SLIMKIT_SCREENSHOTS=dir keeps them there)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from test_report_demo import demo_metrics
from test_search_report import _load, driver, search_data  # noqa: F401  (the browser fixture)

from slimkit.report import write_report
from slimkit.report.search_html import write_search_report

WIDTH, HEIGHT = 1280, 900


def _viewport(drv: Any, width: int, height: int) -> None:
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1,
                         "mobile": False})


def _overflow(drv: Any) -> dict[str, Any]:
    """The page's scroll width, and every element wider than its own scroll box."""
    return dict(drv.execute_script("""
        const wide = [...document.querySelectorAll('.scroll, td, th, .card, figure')]
          .filter(e => e.scrollWidth > e.clientWidth + 1)
          .map(e => e.tagName + '.' + e.className + ': ' + e.textContent.slice(0, 40));
        return {page: document.scrollingElement.scrollWidth, wide: wide};"""))


@pytest.fixture()
def shots(tmp_path: Path) -> Path:
    where = os.environ.get("SLIMKIT_SCREENSHOTS")
    path = Path(where) if where else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_demo_report_fits_1280_with_the_headline_on_screen(driver: Any, tmp_path: Path,  # noqa: F811
                                                           shots: Path) -> None:
    write_report(tmp_path / "run", demo_metrics())
    _viewport(driver, WIDTH, HEIGHT)
    try:
        assert _load(driver, tmp_path / "run" / "report.html") == []
        found = _overflow(driver)
        assert found["page"] <= WIDTH and found["wide"] == [], found
        # The headline's size, speed and quality items sit inside the first screen.
        cards = driver.execute_script("""
            return [...document.querySelectorAll('#headline .card')].map(c => {
              const r = c.getBoundingClientRect();
              return [c.querySelector('.label').textContent, c.innerText, r.top, r.bottom,
                      r.right];});""")
        labels = [c[0] for c in cards]
        for want in ("Size", "Speed, torch", "Speed, ONNX Runtime", "Quality, test AUC"):
            assert want in labels, labels
        for _label, _text, top, bottom, right in cards:
            assert 0 <= top and bottom <= HEIGHT and right <= WIDTH
        text = {c[0]: c[1] for c in cards}
        assert "15.7x smaller" in text["Size"] and "(+0.0052)" in text["Quality, test AUC"]
        assert "batch 1: within noise" in text["Speed, torch"]
        driver.save_screenshot(str(shots / "report-1280-top.png"))

        # Every cell that says "within noise" shows no ratio beside it.
        cells = driver.execute_script(
            "return [...document.querySelectorAll('#speed td')].map(td => td.innerText)")
        noisy = [c for c in cells if "within noise" in c]
        assert noisy and not [c for c in noisy if re.search(r"\d+(\.\d+)?x\b", c)]
        assert driver.execute_script("return document.querySelectorAll('img').length") == 5

        # Folded details open: still no sideways scrolling; then the whole page, for a look.
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        found = _overflow(driver)
        assert found["page"] <= WIDTH and found["wide"] == [], found
        height = int(driver.execute_script("return document.scrollingElement.scrollHeight"))
        _viewport(driver, WIDTH, height)
        driver.save_screenshot(str(shots / "report-1280-full.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert (shots / "report-1280-top.png").stat().st_size > 10_000


def test_the_overflow_check_can_fail(driver: Any, tmp_path: Path) -> None:  # noqa: F811
    write_report(tmp_path / "run", demo_metrics())
    _viewport(driver, WIDTH, HEIGHT)
    try:
        assert _load(driver, tmp_path / "run" / "report.html") == []
        driver.execute_script(
            "document.querySelector('#stages td.txt').textContent = 'x'.repeat(300);"
            "document.querySelector('#stages td.txt').style.whiteSpace = 'pre';"
            "document.body.insertAdjacentHTML('beforeend', '<div style=\"width:1500px\">w</div>')")
        found = _overflow(driver)
        assert found["page"] > WIDTH and found["wide"], found
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_search_report_names_the_split_and_claims_only_verdicts(
        driver: Any, tmp_path: Path, shots: Path) -> None:  # noqa: F811
    write_search_report(tmp_path, search_data())
    _viewport(driver, WIDTH, HEIGHT)
    try:
        assert _load(driver, tmp_path / "report.html") == []
        found = _overflow(driver)
        assert found["page"] <= WIDTH and found["wide"] == [], found
        heads = driver.execute_script(
            "return [...document.querySelectorAll('#trials th')].map(th => th.textContent)")
        assert "valid AUC" in heads and "KiB" in heads and "speed vs baseline" in heads
        assert "KB" not in heads and "x faster" not in heads
        speed = dict(driver.execute_script(
            "return [...document.querySelectorAll('#trials tbody.trials tr')]"
            ".map(r => [r.dataset.trial, r.querySelector('td.c-speed').textContent])"))
        assert speed["0"] == "within noise" and speed["3"] == "1.8x faster"
        assert speed["11"] == "1.08x slower" and speed["2"] == "–"  # pruned: never timed
        axis = driver.execute_script(
            "return [...document.querySelectorAll('#chart-size text.label')]"
            ".map(t => t.textContent)")
        assert "artifact size (KiB, log scale)" in axis and "valid AUC drop (lower is better)" \
            in axis
        driver.save_screenshot(str(shots / "search-1280-top.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
