"""The search report page: fast checks of the HTML/JSON it writes, then the same page loaded in a
real headless chromium (console errors, rendered charts, sorting), and proof that check can fail."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from slimkit.report import search_html
from slimkit.report.search_html import render_search_html, search_summary, write_search_report

NASTY = '<script>alert("x")</script> & \'q\' <b>bold</b>'


BASE_MS, BAND = 2.128, 0.08


def _trial(n: int, state: str, steps: str, drop: float | None, size: int | None,
           ms: float | None, note: str = "") -> dict[str, Any]:
    done = state == "COMPLETE"
    # Timed against the baseline and its noise probe (search/trial.py), judged as eval/cost.py
    # does: ratios within [1 / (1 + band), 1 + band] are noise.
    ratio = None if ms is None or not done else BASE_MS / ms
    verdict = None if ratio is None else "faster" if ratio > 1 + BAND \
        else "slower" if ratio < 1 / (1 + BAND) else "within noise"
    return {"number": n, "state": state, "plan": {"version": 1, "steps": []} if steps else None,
            "steps": steps, "metrics": None if drop is None else {"auc": 0.7205 - drop},
            "bytes": size, "latency_ms": ms, "latency_ratio": ratio, "latency_verdict": verdict,
            "latency_band": None if ratio is None else BAND, "drop": drop,
            "feasible": drop is not None and drop <= 0.002, "pareto": False, "best": False,
            "rank": None, "artifact": f"trials/{n:04d}" if done else None,
            "seconds": 10.0 + n, "worker": "host:1", "note": note}


def search_data() -> dict[str, Any]:
    """12 trials: every state, negative drops, an over-budget front point, hostile strings."""
    t = [
        _trial(0, "COMPLETE", "prune.magnitude(sparsity=0.5)", -0.0002, 900_000, 2.10),
        _trial(1, "COMPLETE", "prune.magnitude(sparsity=0.8) > quantize.dynamic_int8()", 0.0005,
               300_000, 1.20),
        _trial(2, "PRUNED", "quantize.embedding(bits=2)", 0.031, 150_000, None,
               "stopped after step 1: drop 0.031"),
        _trial(3, "COMPLETE", "prune.magnitude(sparsity=0.8) > quantize.embedding(bits=4)",
               0.0015, 104_000, 1.19),
        # measured size and latency, then failed in evaluation: no drop, so on neither chart
        _trial(4, "FAIL", NASTY, None, 50_000, 0.9, "RuntimeError: </script><b>boom</b>"),
        _trial(5, "COMPLETE", "quantize.embedding(bits=2) > quantize.dynamic_int8()", 0.0045,
               90_000, 1.05),
        _trial(6, "COMPLETE", "truncate.layers(drop=1)", 0.0009, 220_000, 1.10),
        _trial(7, "COMPLETE", "quantize.embedding(bits=4)", 0.0011, 120_000, 1.15),
        _trial(8, "RUNNING", "", None, None, None),
        _trial(9, "COMPLETE", "prune.magnitude(sparsity=0.3)", 0.0030, 400_000, 1.9),
        _trial(10, "PRUNED", "prune.magnitude(sparsity=0.95)", 0.012, 500_000, 1.5, "stopped"),
        _trial(11, "COMPLETE", "distill.logits()", 0.0001, 1_200_000, 2.3),
    ]
    done = [x for x in t if x["state"] == "COMPLETE"]
    key = ("drop", "bytes", "latency_ms")
    for x in done:  # non-dominated among complete trials, as the study computes it
        x["pareto"] = not any(all(o[k] <= x[k] for k in key) and any(o[k] < x[k] for k in key)
                              for o in done)
        x["rank"] = 1 if x["pareto"] else 2
    t[3]["best"] = True
    return {
        "version": 1, "title": "slimkit auto: deepfm <movielens> & \"co\"", "task": "movielens",
        "primary_metric": "auc", "higher_is_better": True, "max_drop": 0.002,
        "objective": "size", "latency_batch": 512, "storage": "sqlite:////x/study.db",
        "study_name": "slimkit",
        "baseline": {"metrics": {"auc": 0.7205}, "bytes": 1_574_300, "latency_ms": BASE_MS,
                     "latency_band": BAND, "artifact": "baseline"}, "threads": 2,
        "trials": t, "best": 3, "pareto": [x["number"] for x in t if x["pareto"]],
        "sensitivity": [
            {"method": "quantize.embedding", "setting": "bits=2", "layer": "embeddings.user_id",
             "drop": 0.0031, "bytes_before": 40000, "bytes_after": 2600, "kept": False},
            {"method": "quantize.embedding", "setting": "bits=2", "layer": "embeddings.item_id",
             "drop": 0.0008, "bytes_before": 60000, "bytes_after": 3900, "kept": True},
            {"method": "prune.magnitude", "setting": "sparsity=0.8", "layer": "mlp.0",
             "drop": -0.0003, "bytes_before": 30000, "bytes_after": 9000, "kept": True},
            {"method": "prune.magnitude", "setting": "sparsity=0.8", "layer": "mlp.1",
             "drop": None, "bytes_before": None, "bytes_after": None, "kept": True,
             "status": "failed", "reason": "RuntimeError: " + NASTY},
            {"method": "quantize.embedding", "setting": "bits=2", "layer": "mlp.0",
             "drop": None, "bytes_before": None, "bytes_after": None, "kept": True,
             "status": "not applicable",
             "reason": "quantize.embedding: targets match no Embedding/EmbeddingBag module"},
        ],
    }


def _edge_cases() -> dict[str, dict[str, Any]]:
    one = search_data()
    one["trials"], one["pareto"], one["best"] = one["trials"][3:4], [3], 3
    none_done = search_data()
    none_done["trials"] = [x for x in none_done["trials"] if x["state"] != "COMPLETE"]
    none_done["best"], none_done["pareto"] = None, []
    infeasible = search_data()
    for x in infeasible["trials"]:
        x["feasible"], x["best"] = False, False
        x["drop"] = None if x["drop"] is None else x["drop"] + 0.01
    infeasible["best"], infeasible["sensitivity"] = None, []
    weird = search_data()
    del weird["sensitivity"]
    weird["trials"][0].update(state="ZOMBIE", bytes=0, latency_ms=float("nan"), drop=float("inf"))
    weird["trials"][1].update(number=None, metrics="oops", steps=None, artifact="javascript:x()")
    weird["trials"].append("not a trial")
    weird.update(best=99, max_drop=None, baseline=None, objective="latency", pareto=None)
    flat = search_data()  # every point at the same place: zero-width axes
    for x in flat["trials"]:
        x.update(drop=0.001, bytes=5000, latency_ms=1.0)
    return {"empty": {}, "no_trials": {"trials": [], "best": None}, "one_trial": one,
            "none_complete": none_done, "none_feasible": infeasible, "weird": weird, "flat": flat}


def _embedded(page: str) -> Any:
    block = re.search(r'<script type="application/json" id="search-data">(.*?)</script>', page,
                      re.S)
    assert block is not None
    return json.loads(block.group(1))


# ---- fast checks of the page text -------------------------------------------------------------

def test_page_embeds_the_data_and_escapes_hostile_strings() -> None:
    data = search_data()
    page = render_search_html(data)
    assert _embedded(page) == data
    assert NASTY not in page and "<b>boom</b>" not in page and "<script>alert" not in page
    assert page.count("</script>") == 2  # only the two real closing tags
    block = page.split('id="search-data">')[1].split("</script>")[0]
    assert not set("<>&") & set(block)  # not even "<!--", which changes how scripts parse
    assert "<title>slimkit auto: deepfm &lt;movielens&gt; &amp; &quot;co&quot;</title>" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_assets_cannot_close_their_own_tags() -> None:
    assert "</script" not in search_html._script().lower()
    assert "</style" not in search_html._asset("search_report.css").lower()


def test_summary_of_the_best_plan() -> None:
    text = search_summary(search_data())
    assert text.startswith("Best plan, trial 3 (prune.magnitude(sparsity=0.8) > ")
    assert "15.1x smaller than the baseline" in text  # 1574300 / 104000
    assert "1.8x faster than the baseline at batch 512" in text  # 2.128 / 1.19, its verdict
    assert "valid AUC drop 0.0015 (budget 0.002)" in text  # the split the search scores on
    # front by size: 5 (90 KB), 3 (104 KB), 7, 6, 1, 0
    assert "rank 1 on the front (position 2 of 6 front points by size)" in text


def test_summary_claims_only_what_the_noise_probe_supports() -> None:
    data = search_data()
    best = data["trials"][3]
    best.update(latency_verdict="within noise", latency_ratio=1.9)
    text = search_summary(data)
    assert "as fast as the baseline at batch 512 (within noise)" in text and "1.9" not in text
    for trial in data["trials"]:  # a search.json from before the probe: no claim at all
        trial.pop("latency_verdict")
    assert "faster" not in search_summary(data) and "noise" not in search_summary(data)
    assert "no speed-up is claimed" in render_search_html(data)


@pytest.mark.parametrize(("case", "expected"), [
    ("empty", "No trial has completed"), ("no_trials", "No trial has completed"),
    ("none_complete", "No trial has completed"),
    ("none_feasible", "No trial within the budget (drop ≤ 0.002): the smallest drop among 8 "
                      "complete trials was 0.0098 (trial 0)"),
    ("weird", "No answer was chosen, though 5 of 7 complete trials are within the budget"),
    ("one_trial", "Best plan, trial 3"),
])
def test_summary_edge_cases(case: str, expected: str) -> None:
    assert expected in search_summary(_edge_cases()[case])


@pytest.mark.parametrize("case", sorted(_edge_cases()))
def test_edge_cases_render_valid_json(case: str) -> None:
    data = _edge_cases()[case]
    page = render_search_html(data)
    embedded = _embedded(page)  # NaN/inf would make JSON.parse throw in the browser
    assert "NaN" not in page.split('id="search-data">')[1].split("</script>")[0]
    if case == "weird":
        assert embedded["trials"][0]["drop"] is None and embedded["trials"][0]["state"] == "ZOMBIE"


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_search_report(tmp_path / "out", search_data())
    assert path == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    old = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_search_report(tmp_path / "out", {"title": "new"})
    assert path.read_bytes() == old  # the old page survives and no temp file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


# ---- the real browser -------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Installed before any page script runs: uncaught exceptions and rejections, kept on window.
CATCH = ("window.__errors = [];"
         "addEventListener('error', e => __errors.push(String(e.message)));"
         "addEventListener('unhandledrejection', e => __errors.push(String(e.reason)));")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"browser test needs {', '.join(missing)}: apt-get install chromium " \
                  "chromium-driver; pip install selenium"
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test; " + message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with Service's path: Selenium Manager stays offline
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH})
    yield drv
    drv.quit()


def _load(driver: Any, path: Path) -> list[str]:
    """Open the page; every console error and uncaught exception it produced."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete")
    errors = [f"{e['level']}: {e['message']}" for e in driver.get_log("browser")
              if e["level"] in ("SEVERE", "ERROR")]
    return errors + [f"uncaught: {m}" for m in driver.execute_script("return window.__errors")]


def _rendered(driver: Any) -> bool:
    return driver.execute_script("return document.body.dataset.rendered") == "true"


def _count(driver: Any, css: str) -> int:
    return int(driver.execute_script(f"return document.querySelectorAll({css!r}).length"))


def _row_order(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#trials tbody.trials tr')]"
        ".map(r => r.dataset.trial)"))


def test_page_renders_in_chromium(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    data = search_data()
    assert _load(driver, write_search_report(tmp_path, data)) == []
    assert _rendered(driver)
    trials = data["trials"]
    has = [t for t in trials if t["drop"] is not None]
    assert _count(driver, "#chart-size circle.pt") == sum(1 for t in has if t["bytes"]) == 10
    assert _count(driver, "#chart-latency circle.pt") == \
        sum(1 for t in has if t["latency_ms"] is not None) == 9
    assert _count(driver, "#chart-size circle.pt.pareto") == len(data["pareto"])
    for chart in ("#chart-size", "#chart-latency"):
        assert _count(driver, f"{chart} circle.pt.best[data-trial='3']") == 1
        assert _count(driver, f"{chart} .best-mark") == 1
        assert _count(driver, f"{chart} path.front") == 1
        assert _count(driver, f"{chart} line.budget") == 1
        assert _count(driver, f"{chart} path.base") == 1
        svg = driver.find_element(By.CSS_SELECTOR, f"{chart} svg")
        assert svg.size["width"] > 300 and svg.size["height"] > 200
    # drops above 4x the budget (trials 2 and 10) sit on the cap line, not off the chart
    assert _count(driver, "#chart-size circle.pt.clipped") == 2
    cap, ys = driver.execute_script(
        "return [document.querySelector('#chart-size line.cap').getAttribute('y1'),"
        "[...document.querySelectorAll('#chart-size circle.clipped')]"
        ".map(c => c.getAttribute('cy'))]")
    assert all(abs(float(y) - float(cap)) < 0.01 for y in ys)
    assert _count(driver, "#sens-chart rect.bar") == 3
    assert _count(driver, "#sens-chart rect.bar.excluded") == 1
    # layers without a drop are listed with their reason, the failure first
    assert _count(driver, "#sens-skipped tbody tr") == 2
    assert _count(driver, "#sens-skipped tr.sens-failed") == 1
    skipped = driver.find_element(By.ID, "sens-skipped").text
    assert "RuntimeError: " + NASTY in skipped and "targets match no" in skipped
    assert skipped.index("mlp.1") < skipped.index("not applicable")
    assert _count(driver, "#trials tr.failed[data-trial='4']") == 1
    assert _count(driver, "#trials tbody.trials tr") == 12
    # hostile strings arrived as text, not markup
    assert _count(driver, "#trials b") == 0 and NASTY in driver.find_element(By.ID, "trials").text

    driver.find_element(By.CSS_SELECTOR, "#trials th[data-key='drop']").click()
    by_drop = sorted((t for t in has), key=lambda t: t["drop"])
    nulls = [str(t["number"]) for t in trials if t["drop"] is None]
    assert _row_order(driver) == [str(t["number"]) for t in by_drop] + nulls
    driver.find_element(By.CSS_SELECTOR, "#trials th[data-key='drop']").click()
    assert _row_order(driver) == [str(t["number"]) for t in reversed(by_drop)] + nulls

    driver.find_element(By.ID, "only-pareto").click()
    visible = driver.execute_script(
        "return [...document.querySelectorAll('#trials tbody.trials tr')].filter(r => !r.hidden)"
        ".map(r => +r.dataset.trial)")
    assert sorted(visible) == sorted(data["pareto"])
    driver.find_element(By.ID, "only-pareto").click()

    hidden = "return document.querySelector('#trials tr[data-trial=\"9\"]').hidden"
    driver.find_element(By.ID, "only-feasible").click()
    assert driver.execute_script(hidden)  # trial 9 is over budget
    point = driver.find_element(By.CSS_SELECTOR, "#chart-latency circle.pt[data-trial='9']")
    ActionChains(driver).move_to_element(point).perform()
    assert driver.find_element(By.ID, "tip").text.startswith("trial 9 · COMPLETE")
    point.click()
    assert _count(driver, "#trials tr.sel[data-trial='9']") == 1
    assert not driver.execute_script(hidden)  # clicking its point lifted the filter
    assert _load(driver, tmp_path / "report.html") == []  # hover and clicks raised nothing


def test_chart_pixels_are_drawn(driver: Any, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    assert _load(driver, write_search_report(tmp_path, search_data())) == []
    png = driver.find_element(By.CSS_SELECTOR, "#chart-size svg").screenshot_as_png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    blue = sum(c for c, rgb in colours if math.dist(rgb, (0x2F, 0x6D, 0xB5)) < 30)
    assert len(colours) > 20 and blue > 50  # the feasible markers really are on screen


@pytest.mark.parametrize("case", sorted(_edge_cases()))
def test_edge_cases_load_without_errors(driver: Any, tmp_path: Path, case: str) -> None:
    data = _edge_cases()[case]
    assert _load(driver, write_search_report(tmp_path, data)) == []
    assert _rendered(driver)
    if case in ("weird", "flat"):  # no budget, or nothing far above it: nothing is clipped
        assert _count(driver, "circle.pt") > 0 and _count(driver, "circle.clipped") == 0
    if case in ("empty", "no_trials"):
        assert _count(driver, "#chart-size circle.pt, #chart-latency circle.pt") == 0
        assert _count(driver, "#sens-chart p.empty") == 1


@pytest.mark.parametrize("broken", ["noSuchFunction();", "function ( {"])
def test_checker_reports_a_broken_script(driver: Any, tmp_path: Path, broken: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    asset = search_html._asset
    monkeypatch.setattr(search_html, "_asset",
                        lambda name: broken if name.endswith(".js") else asset(name))
    errors = _load(driver, write_search_report(tmp_path, copy.deepcopy(search_data())))
    assert errors and any("SEVERE" in e for e in errors), errors
    assert not _rendered(driver)
