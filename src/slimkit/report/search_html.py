"""The interactive page of an automatic-compression search: search.json in, one self-contained
report.html out (inline CSS and JS, data embedded as JSON, charts drawn in the browser as SVG)."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from ..rundir import write_atomic
from .html import CSS
from .speed import claim_text
from .table import ACRONYMS, _num, _ratio, format_metric, format_ratio
from .units import UNIT_NOTE

# The page may not fetch anything: a report copied off a cluster must render the same offline.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
OBJECTIVE_KEYS = {"size": "bytes", "latency": "latency_ms"}
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


SCRIPTS = ("search_report.js", "search_charts.js", "search_table.js")


def _asset(name: str) -> str:
    return resources.files("slimkit.report").joinpath(name).read_text(encoding="utf-8")


def _script() -> str:
    """The three script files share one function scope (no globals leak into the page)."""
    body = "\n".join(_asset(name) for name in SCRIPTS)
    return f'(function () {{\n"use strict";\n{body}\nmain();\n}})();'


def _trials(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    trials = data.get("trials")
    return [t for t in trials if isinstance(t, Mapping)] if isinstance(trials, list) else []


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _best_trial(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The answer: the trial named by the top-level "best", else one flagged best itself."""
    trials = _trials(data)
    best = _num(data.get("best"))
    if best is not None:
        return next((t for t in trials if _num(t.get("number")) == best), None)
    return next((t for t in trials if t.get("best") is True), None)


def state_counts(data: Mapping[str, Any]) -> str:
    """"12 trials: 8 complete, 2 pruned, 1 fail, 1 running"; unknown states keep their name."""
    trials = _trials(data)
    counts = Counter(_text(t.get("state")) or "unknown" for t in trials)
    known = [s for s in STATE_ORDER if counts[s]]
    ordered = known + sorted(s for s in counts if s not in STATE_ORDER)
    noun = "trial" if len(trials) == 1 else "trials"
    if not trials:
        return "0 trials"
    return f"{len(trials)} {noun}: " + ", ".join(f"{counts[s]} {s.lower()}" for s in ordered)


def _front_position(data: Mapping[str, Any], best: Mapping[str, Any]) -> str:
    """"position k of n front points by size": where the answer sits when the front is sorted by
    the objective, so a reader sees how much further the budget could have been traded."""
    key = OBJECTIVE_KEYS.get(_text(data.get("objective")))
    names = {_num(n) for n in data.get("pareto") or [] if _num(n) is not None}
    front = [t for t in _trials(data) if t.get("pareto") is True or _num(t.get("number")) in names]
    if key is None or best not in front:
        return ""
    front.sort(key=lambda t: (_num(t.get(key)) is None, _num(t.get(key)) or 0.0))
    return (f" (position {front.index(best) + 1} of {len(front)} front points by "
            f"{data.get('objective')})")


def search_summary(data: Mapping[str, Any]) -> str:
    """One sentence on the answer, or why there is none."""
    budget = _num(data.get("max_drop"))
    budget_text = "no budget set" if budget is None else f"drop ≤ {format_metric(budget)}"
    best = _best_trial(data)
    if best is None:
        complete = [t for t in _trials(data) if t.get("state") == "COMPLETE"]
        if not complete:
            return "No trial has completed, so there is no answer yet."
        feasible = [t for t in complete if t.get("feasible") is True]
        if feasible:
            return (f"No answer was chosen, though {len(feasible)} of {len(complete)} complete "
                    f"trials are within the budget ({budget_text}).")
        scored = [t for t in complete if _num(t.get("drop")) is not None]
        if not scored:
            return f"No trial within the budget ({budget_text}): none has a measured drop."
        closest = min(scored, key=lambda t: _num(t.get("drop")) or 0.0)
        return (f"No trial within the budget ({budget_text}): the smallest drop among "
                f"{len(complete)} complete trials was {format_metric(_num(closest.get('drop')))} "
                f"(trial {_text(closest.get('number'))}).")
    raw = data.get("baseline")
    base: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    parts = []
    smaller = _ratio(_num(base.get("bytes")), _num(best.get("bytes")))
    if smaller is not None:
        parts.append(f"{format_ratio(smaller)} smaller than the baseline")
    speed = _speed(best)
    if speed:
        batch = _num(data.get("latency_batch"))
        at = f" at batch {batch:g}" if batch is not None else ""
        parts.append(f"{speed} than the baseline{at}" if speed != "within noise"
                     else f"as fast as the baseline{at} (within noise)")
    metric = quality_label(data)
    limit = "no budget" if budget is None else f"budget {format_metric(budget)}"
    parts.append(f"{metric} drop {format_metric(_num(best.get('drop')))} ({limit})")
    rank = _num(best.get("rank"))
    if rank is not None:
        parts.append(f"rank {rank:g} on the front{_front_position(data, best)}")
    steps = _text(best.get("steps")) or "no steps"
    return f"Best plan, trial {_text(best.get('number'))} ({steps}): " + ", ".join(parts) + "."


def quality_label(data: Mapping[str, Any]) -> str:
    """"valid AUC": the search scores trials on the validation split (search/trial.py), so its
    numbers never read as the run report's test numbers."""
    metric = _text(data.get("primary_metric")) or "quality"
    metric = metric.upper() if metric.lower() in ACRONYMS else metric
    return f"{_text(data.get('split')) or 'valid'} {metric}"


def _speed(trial: Mapping[str, Any]) -> str:
    """"1.8x faster", "1.3x slower", "within noise" from the trial's recorded verdict; "" when
    the trial has none (a search.json from before the noise probe: no claim then)."""
    verdict = trial.get("latency_verdict")
    if verdict not in ("faster", "slower", "within noise"):
        return ""
    return claim_text({"verdict": verdict, "ratio": _num(trial.get("latency_ratio"))})


def _meta(data: Mapping[str, Any]) -> str:
    parts = []
    if data.get("task"):
        parts.append(f"task {_text(data['task'])}")
    better = "higher" if data.get("higher_is_better", True) else "lower"
    parts.append(f"quality: {quality_label(data)} ({better} is better)")
    budget = _num(data.get("max_drop"))
    if budget is not None:
        parts.append(f"budget: drop ≤ {format_metric(budget)}")
    if data.get("objective"):
        parts.append(f"objective: smallest {_text(data['objective'])} within the budget")
    if data.get("study_name"):
        parts.append(f"study {_text(data['study_name'])}")
    if isinstance(data.get("threads"), int):
        parts.append(f"latency on {data['threads']} threads, timed against the baseline and "
                     "its noise probe")
    return " · ".join(parts)


def _note(data: Mapping[str, Any]) -> str:
    speed = ("A speed-up is shown only where it exceeds the noise probe timed beside each "
             "trial; otherwise \"within noise\"." if any(_speed(t) for t in _trials(data))
             else "These trials carry no noise verdict, so no speed-up is claimed; latencies "
                  "are raw medians.")
    return f"{UNIT_NOTE} {speed}"


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: json.dumps would write NaN, which JSON.parse rejects."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def embed_json(data: Mapping[str, Any]) -> str:
    """JSON safe inside <script>: no "<" (so no "</script>" or "<!--"), ">" or "&" survives."""
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, default=str)
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


_MARKS = (  # legend entries: (SVG shape drawn with the charts' own classes, label)
    ('<circle class="pt feasible" cx="13" cy="8" r="5"/>', "within budget"),
    ('<circle class="pt infeasible" cx="13" cy="8" r="5"/>', "over budget"),
    ('<circle class="pt pruned" cx="13" cy="8" r="3.5"/>', "pruned (stopped early)"),
    ('<circle class="pt feasible pareto" cx="13" cy="8" r="6"/>', "Pareto front (dark outline)"),
    ('<path class="front" d="M1 4 H13 V12 H25"/>', "front of this chart"),
    ('<circle class="best-mark" cx="13" cy="8" r="6"/>', "best plan"),
    ('<path class="base" d="M13 2 l6 6 l-6 6 l-6 -6 z"/>', "baseline"),
    ('<line class="budget" x1="1" y1="8" x2="25" y2="8"/>', "budget"),
)
LEGEND = ('<ul class="legend" aria-label="legend">'
          + "".join(f'<li><svg viewBox="0 0 26 16">{shape}</svg>{label}</li>'
                    for shape, label in _MARKS) + "</ul>")

SENS_HELP = ("Each bar is the quality drop when only that layer is compressed with that setting, "
             "everything else left as it was. Grey layers were taken out of that method's search "
             "space before the search; blue ones stayed in. The dashed line is the budget. "
             "Layers without a bar are listed under it with the reason: the probe failed on "
             "them (they stay in the search space), or the step does not apply to them.")


def render_search_html(data: Mapping[str, Any]) -> str:
    """The whole page as a string; never raises on missing or odd fields."""
    title = _text(data.get("title")) or "slimkit auto: search report"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}{_asset('search_report.css')}</style>",
        "</head>",
        "<body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(_meta(data))}</p>',
        f'<p class="meta" id="counts">{escape(state_counts(data))}</p>',
        f'<p class="summary" id="summary">{escape(search_summary(data))}</p>',
        f'<p class="note" id="note">{escape(_note(data))}</p>',
        "<noscript><p>The charts and the trial table need JavaScript.</p></noscript>",
        "<h2>Quality against size and latency</h2>",
        LEGEND,
        '<div class="charts">',
        '<figure><div id="chart-size"></div>'
        "<figcaption>Quality drop against artifact size.</figcaption></figure>",
        '<figure><div id="chart-latency"></div>'
        "<figcaption>Quality drop against latency. Click a point to find its row."
        "</figcaption></figure>",
        "</div>",
        "<h2>Trials</h2>",
        '<p class="tools"><label><input type="checkbox" id="only-pareto"> only Pareto</label>'
        '<label><input type="checkbox" id="only-feasible"> only within budget</label>'
        '<span id="shown"></span></p>',
        '<div class="scroll"><table id="trials"></table></div>',
        "<h2>Layer sensitivity</h2>",
        f'<p class="help" id="sens-help">{escape(SENS_HELP)}</p>',
        '<div id="sens-chart"></div>',
        "</main>",
        '<div id="tip" hidden></div>',
        f'<script type="application/json" id="search-data">{embed_json(data)}</script>',
        f"<script>{_script()}</script>",
        "</body>",
        "</html>",
        "",
    ])


def write_search_report(out_dir: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write `<out_dir>/report.html` atomically and return its path."""

    path = Path(out_dir) / "report.html"
    write_atomic(path, render_search_html(data).encode("utf-8"))
    return path
