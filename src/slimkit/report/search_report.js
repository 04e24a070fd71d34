/* Search report, shared part: the data, number formats, SVG/DOM helpers, scales, tooltip and
   selection. search_html.py joins this with search_charts.js and search_table.js inside one
   function scope, then calls main(). Data strings go in with textContent only, never as HTML. */
const SVGNS = "http://www.w3.org/2000/svg";
const D = JSON.parse(document.getElementById("search-data").textContent) || {};
const trials = (Array.isArray(D.trials) ? D.trials : []).filter(isObj);
const base = isObj(D.baseline) ? D.baseline : {};
const metric = typeof D.primary_metric === "string" && D.primary_metric ? D.primary_metric
  : "quality";
const budget = num(D.max_drop);
const bestN = num(D.best);
const front = new Set((Array.isArray(D.pareto) ? D.pareto : []).filter((n) => num(n) !== null));
const tip = document.getElementById("tip");
const batch = num(D.latency_batch);
// Trials are scored on the validation split (search/trial.py): every quality number says so.
const ACRONYMS = ["auc", "mse", "rmse", "mae", "f1", "ndcg", "map", "mrr", "bleu", "wer"];
const quality = (typeof D.split === "string" && D.split ? D.split : "valid") + " " +
  (ACRONYMS.indexOf(metric.toLowerCase()) >= 0 ? metric.toUpperCase() : metric);

function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
function str(v) { return typeof v === "string" ? v : (num(v) !== null ? String(v) : ""); }
function ratio(a, b) {
  a = num(a); b = num(b);
  return a !== null && b !== null && a > 0 && b > 0 ? a / b : null;
}
function isPareto(t) {
  return t.pareto === true || (num(t.number) !== null && front.has(t.number));
}
// The top-level "best" is the answer; per-trial flags only stand in when it is absent.
function isBest(t) { return bestN !== null ? num(t.number) === bestN : t.best === true; }
function kind(t) {
  if (t.state === "COMPLETE") return t.feasible === true ? "feasible" : "infeasible";
  return t.state === "PRUNED" ? "pruned" : "other";
}
// Same rules as table.py's format_sig (significant digits, no exponent), format_metric and
// format_ratio, so the page and the summary sentence show the same figures.
function sig(v, d) {
  if (v === null) return "n/a";
  if (v === 0) return "0";
  const dec = Math.max(0, d - 1 - Math.floor(Math.log10(Math.abs(v))));
  return v.toFixed(Math.min(dec, 20));
}
function fmtMetric(v) {
  let t = sig(v, 4);
  if (v !== null && t.indexOf(".") >= 0) t = t.replace(/0+$/, "").replace(/\.$/, "");
  return t;
}
function fmtX(r) { return r === null ? "n/a" : (r >= 100 ? r.toFixed(0) : r.toFixed(1)) + "x"; }
// Binary units, as everywhere in slimkit (report/units.py): 1 KiB = 1024 bytes.
function kib(t) { const b = num(t.bytes); return b === null ? null : b / 1024; }
// speed.py's claim_text: a ratio only with a "faster" or "slower" verdict from the trial's noise
// probe; "within noise" never shows one; no verdict (an older search.json), no claim at all.
function fmtTimes(r) {
  return r >= 100 ? r.toFixed(0) + "x" : (r < 1.095 ? r.toFixed(2) : r.toFixed(1)) + "x";
}
function speedText(t) {
  const verdict = t.latency_verdict, r = num(t.latency_ratio);
  if (verdict === "within noise") return "within noise";
  if (r === null || r <= 0 || (verdict !== "faster" && verdict !== "slower")) return "";
  return verdict === "faster" ? fmtTimes(r) + " faster" : fmtTimes(1 / r) + " slower";
}

function el(tag, attrs, text, parent) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function sv(tag, attrs, parent, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function extent(vals, log) {
  let lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
  if (log) {
    const pad = hi > lo ? Math.pow(hi / lo, 0.06) : 1.5;
    return [lo / pad, hi * pad];
  }
  const pad = hi > lo ? (hi - lo) * 0.07 : Math.max(Math.abs(hi) * 0.1, 1e-3);
  return [lo - pad, hi + pad];
}
function scale(dom, range, log) {
  const f = log ? Math.log10 : function (v) { return v; };
  const a = f(dom[0]), b = f(dom[1]);
  return function (v) { return range[0] + (f(v) - a) / (b - a) * (range[1] - range[0]); };
}
function linTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0) || !isFinite(span)) return [lo];
  const p = Math.pow(10, Math.floor(Math.log10(span / n)));
  const step = [1, 2, 5, 10].map(function (m) { return m * p; })
    .find(function (s) { return span / s <= n; }) || 10 * p;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9 && out.length < 50; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return out;
}
function logTicks(lo, hi) {
  const all = [], decades = [];
  for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
    [1, 2, 5].forEach(function (m) {
      const v = Number((m * Math.pow(10, k)).toPrecision(12));
      if (v >= lo && v <= hi) { all.push(v); if (m === 1) decades.push(v); }
    });
  }
  if (all.length > 8) return decades.length >= 2 ? decades : all;
  return all.length >= 2 ? all : linTicks(lo, hi, 4); // a narrow range: even steps read better
}
function tickText(v) { return String(Number(v.toPrecision(6))); }

function showTip(ev, lines) {
  tip.textContent = "";
  lines.forEach(function (line, i) { el(i ? "div" : "strong", {}, line, tip); });
  tip.hidden = false;
  const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = Math.max(4, x) + "px";
  tip.style.top = Math.max(4, y) + "px";
}
function hideTip() { tip.hidden = true; }
function trialLines(t) {
  const lines = ["trial " + str(t.number) + " · " + str(t.state), str(t.steps) || "(no steps)",
    "drop " + fmtMetric(num(t.drop)) + " · " + sig(kib(t), 3) + " KiB · " +
    sig(num(t.latency_ms), 3) + " ms" + (speedText(t) ? " · " + speedText(t) : "")];
  if (str(t.note)) lines.push(str(t.note));
  return lines;
}
function select(n, scroll) {
  document.querySelectorAll(".sel").forEach(function (e) { e.classList.remove("sel"); });
  document.querySelectorAll('[data-trial="' + CSS.escape(n) + '"]')
    .forEach(function (e) { e.classList.add("sel"); });
  const row = document.querySelector('#trials tbody.trials tr[data-trial="' + CSS.escape(n) + '"]');
  if (row && row.hidden) { clearFilters(); }
  if (row && scroll) row.scrollIntoView({block: "center", behavior: "smooth"});
}

function main() {
  scatter("chart-size", {x: kib, log: true, label: "artifact size (KiB, log scale)",
    title: "quality drop against artifact size", what: "an artifact size"});
  scatter("chart-latency", {x: function (t) { return num(t.latency_ms); }, log: false,
    label: "latency (ms" + (batch !== null ? " at batch " + batch : "") + ", torch CPU)",
    title: "quality drop against latency", what: "a latency"});
  table();
  sensitivity();
  document.body.dataset.rendered = "true";
}
