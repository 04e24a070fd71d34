/* Search report trial table: one row per trial (the baseline above them in its own tbody),
   columns sortable by clicking a header with nulls last both ways, and two filters. */
const three = (v) => sig(v, 3);
const VERDICT_TONE = {"faster": "good", "slower": "bad", "within noise": "noise"};
const yesNo = (v) => (v ? "yes" : "no");
const COLS = [
  {key: "number", label: "#", v: (t) => num(t.number), f: String},
  {key: "state", label: "state", text: true, v: (t) => str(t.state)},
  {key: "steps", label: "steps", text: true, v: (t) => str(t.steps)},
  {key: "metric", label: quality, v: (t) => num(isObj(t.metrics) ? t.metrics[metric] : null),
    f: (v) => sig(v, 4)},  // a column of qualities lines up (0.7200 above 0.7194)
  {key: "drop", label: "drop", v: (t) => num(t.drop), f: fmtMetric},
  {key: "kib", label: "KiB", v: kib, f: three},
  {key: "smaller", label: "x smaller", v: (t) => ratio(base.bytes, t.bytes), f: fmtX},
  {key: "ms", label: "ms" + (batch !== null ? " @" + batch : ""), v: (t) => num(t.latency_ms),
    f: three},
  // Sorts by the paired ratio; shows only what the trial's noise verdict supports.
  {key: "speed", label: "speed vs baseline", show: speedText,
    v: (t) => (speedText(t) ? num(t.latency_ratio) : null)},
  {key: "feasible", label: "feasible",
    v: (t) => (typeof t.feasible === "boolean" ? +t.feasible : null), f: yesNo},
  {key: "pareto", label: "Pareto", v: (t) => (isPareto(t) ? 1 : 0), f: (v) => (v ? "yes" : "")},
  {key: "rank", label: "rank", v: (t) => num(t.rank), f: String},
  {key: "seconds", label: "s", v: (t) => num(t.seconds), f: three},
  {key: "artifact", label: "artifact", text: true, v: (t) => str(t.artifact)},
  {key: "note", label: "note", text: true, v: (t) => str(t.note)},
];
const sortState = {key: "number", dir: 1};

function cell(col, v, tr, t) {
  const td = el("td", {class: (col.text ? "txt" : "num") + " c-" + col.key}, null, tr);
  if (col.show && t) {
    td.textContent = col.show(t) || "–";
    if (t.latency_verdict) td.classList.add(VERDICT_TONE[t.latency_verdict] || "");
  } else if (col.key === "artifact" && v && !/^([a-z][a-z0-9+.-]*:|\/\/)/i.test(v)) {
    el("a", {href: v}, v, td); // relative paths only: a "javascript:" value stays plain text
  } else if (v === null || v === "") {
    td.textContent = col.text ? "" : "–";
  } else {
    td.textContent = col.text ? v : col.f(v);
  }
  if (col.key === "drop" && v !== null && budget !== null) {
    td.classList.add(v <= budget ? "good" : "bad");
  }
}

function table() {
  const tbl = document.getElementById("trials");
  const head = el("tr", {}, null, el("thead", {}, null, tbl));
  COLS.forEach((c) => {
    const th = el("th", {class: c.text ? "txt" : "num", "data-key": c.key, title: "sort"},
      c.label, head);
    th.addEventListener("click", () => sortBy(c.key));
  });
  const bt = el("tr", {class: "baseline"}, null, el("tbody", {class: "base"}, null, tbl));
  const baseVals = {state: "baseline", drop: 0, kib: kib(base), ms: num(base.latency_ms),
    metric: num(isObj(base.metrics) ? base.metrics[metric] : null), artifact: str(base.artifact),
    smaller: kib(base) === null ? null : 1};
  COLS.forEach((c) => cell(c, c.key in baseVals ? baseVals[c.key] : null, bt));
  const body = el("tbody", {class: "trials"}, null, tbl);
  trials.forEach((t, i) => {
    const row = el("tr", {"data-trial": str(t.number), "data-index": i,
      class: kind(t) + (isBest(t) ? " best-row" : "") + (t.state === "FAIL" ? " failed" : "")},
      null, body);
    COLS.forEach((c) => cell(c, c.v(t), row, t));
    row.addEventListener("click", () => select(str(t.number), false));
  });
  if (!trials.length) {
    el("td", {colspan: COLS.length, class: "empty"}, "No trials yet.", el("tr", {}, null, body));
  }
  ["only-pareto", "only-feasible"].forEach((id) => {
    document.getElementById(id).addEventListener("change", applyFilters);
  });
  applyFilters();
}

function sortBy(key) {
  sortState.dir = sortState.key === key ? -sortState.dir : 1;
  sortState.key = key;
  const col = COLS.find((c) => c.key === key);
  const body = document.querySelector("#trials tbody.trials");
  const rows = Array.from(body.querySelectorAll("tr[data-index]"));
  const val = (r) => { const v = col.v(trials[+r.dataset.index]); return v === "" ? null : v; };
  const byIndex = (a, b) => a.dataset.index - b.dataset.index; // ties keep the study's order
  rows.sort((a, b) => {
    const va = val(a), vb = val(b);
    if (va === null || vb === null) return (va === null) - (vb === null) || byIndex(a, b);
    const c = col.text ? String(va).localeCompare(String(vb)) : va - vb;
    return sortState.dir * c || byIndex(a, b); // nulls stay last in both directions
  });
  rows.forEach((r) => body.appendChild(r));
  document.querySelectorAll("#trials th").forEach((th) => {
    if (th.dataset.key === key) th.dataset.sort = sortState.dir > 0 ? "asc" : "desc";
    else delete th.dataset.sort;
  });
}

function applyFilters() {
  const onlyFront = document.getElementById("only-pareto").checked;
  const onlyOk = document.getElementById("only-feasible").checked;
  let shown = 0;
  document.querySelectorAll("#trials tbody.trials tr[data-index]").forEach((r) => {
    const t = trials[+r.dataset.index];
    r.hidden = (onlyFront && !isPareto(t)) || (onlyOk && t.feasible !== true);
    shown += r.hidden ? 0 : 1;
  });
  document.getElementById("shown").textContent = "showing " + shown + " of " + trials.length;
}

function clearFilters() {
  document.getElementById("only-pareto").checked = false;
  document.getElementById("only-feasible").checked = false;
  applyFilters();
}
