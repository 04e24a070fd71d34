/* Search report charts (SVG): quality drop against size or latency, one point per trial with
   numbers, and the per-layer sensitivity bars. */
function scatter(boxId, opts) {
  const box = document.getElementById(boxId);
  const okX = (v) => v !== null && (!opts.log || v > 0);
  const pts = trials.filter((t) => num(t.drop) !== null && okX(opts.x(t)));
  const bx = okX(opts.x(base)) ? opts.x(base) : null;
  if (!pts.length && bx === null) {
    el("p", {class: "empty"}, "No trial has both a quality drop and " + opts.what + ".", box);
    return;
  }
  const W = 560, H = 380, M = {l: 68, r: 18, t: 16, b: 50}, right = W - M.r, bottom = H - M.b;
  const svg = sv("svg", {viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
    "aria-label": opts.title});
  // Hopeless trials (drop 0.03 against a 0.002 budget) would squash the budget region into a
  // line: drops above 4x the budget are drawn on a dotted cap line; the tooltip keeps the value.
  const cap = budget !== null && budget > 0 ? 4 * budget : Infinity;
  const yOf = (t) => Math.min(t.drop, cap);
  const clipped = pts.filter((t) => t.drop > cap).length;
  const xd = extent(pts.map(opts.x).concat(bx === null ? [] : [bx]), opts.log);
  const yd = extent(pts.map(yOf).concat([0], budget === null ? [] : [budget]), false);
  const X = scale(xd, [M.l, right], opts.log), Y = scale(yd, [bottom, M.t], false);
  const plot = sv("g", {}, svg);
  if (budget !== null) {
    const top = Math.max(M.t, Math.min(bottom, Y(budget)));
    sv("rect", {class: "ok-zone", x: M.l, y: top, width: right - M.l, height: bottom - top}, plot);
  }
  const grid = sv("g", {class: "axis"}, plot);
  (opts.log ? logTicks(xd[0], xd[1]) : linTicks(xd[0], xd[1], 6)).forEach((v) => {
    sv("line", {x1: X(v), x2: X(v), y1: M.t, y2: bottom, class: "grid"}, grid);
    sv("text", {x: X(v), y: bottom + 16, "text-anchor": "middle"}, grid, tickText(v));
  });
  linTicks(yd[0], yd[1], 6).forEach((v) => {
    sv("line", {x1: M.l, x2: right, y1: Y(v), y2: Y(v), class: "grid"}, grid);
    sv("text", {x: M.l - 6, y: Y(v) + 4, "text-anchor": "end"}, grid, tickText(v));
  });
  sv("rect", {class: "frame", x: M.l, y: M.t, width: right - M.l, height: bottom - M.t}, grid);
  sv("text", {class: "label", x: (M.l + right) / 2, y: H - 10, "text-anchor": "middle"},
    grid, opts.label);
  sv("text", {class: "label", transform: "rotate(-90)", x: -(M.t + bottom) / 2, y: 16,
    "text-anchor": "middle"}, grid, quality + " drop (lower is better)");
  if (budget !== null && Y(budget) >= M.t && Y(budget) <= bottom) {
    sv("line", {class: "budget", x1: M.l, x2: right, y1: Y(budget), y2: Y(budget)}, plot);
    sv("text", {class: "budget-text", x: right - 4, y: Y(budget) - 5, "text-anchor": "end"},
      plot, "budget " + fmtMetric(budget));
  }
  // This chart's own 2-D front: complete trials that no other beats on both drop and x, joined
  // by steps (the edge of the region they dominate).
  const done = pts.filter((t) => t.state === "COMPLETE")
    .sort((a, b) => opts.x(a) - opts.x(b) || a.drop - b.drop);
  let lowest = Infinity, path = "";
  done.forEach((t) => {
    if (t.drop >= lowest) return;
    const x = X(opts.x(t)).toFixed(1), y = Y(yOf(t)).toFixed(1);
    path += path ? " H" + x + " V" + y : "M" + x + " " + y;
    lowest = t.drop;
  });
  if (path) sv("path", {class: "front", d: path}, plot);
  // Front points last, so they sit on top of the others.
  pts.slice().sort((a, b) => isPareto(a) - isPareto(b)).forEach((t) => {
    const small = kind(t) === "pruned" || kind(t) === "other";
    const c = sv("circle", {
      class: "pt " + kind(t) + (isPareto(t) ? " pareto" : "") + (isBest(t) ? " best" : "") +
        (t.drop > cap ? " clipped" : ""),
      cx: X(opts.x(t)).toFixed(2), cy: Y(yOf(t)).toFixed(2), r: small ? 3.5 : isPareto(t) ? 6 : 5,
      "data-trial": str(t.number)}, plot);
    c.addEventListener("mousemove", (ev) => showTip(ev, trialLines(t)));
    c.addEventListener("mouseleave", hideTip);
    c.addEventListener("click", () => select(str(t.number), true));
  });
  pts.filter(isBest).forEach((t) => {
    sv("circle", {class: "best-mark", cx: X(opts.x(t)), cy: Y(yOf(t)), r: 11}, plot);
  });
  if (clipped) {
    sv("line", {class: "cap", x1: M.l, x2: right, y1: Y(cap), y2: Y(cap)}, plot);
    sv("text", {class: "cap-text", x: M.l + 6, y: M.t + 12}, plot, clipped +
      (clipped > 1 ? " points" : " point") + " above " + fmtMetric(cap) + " drawn on this line");
  }
  if (bx !== null) {
    const x = X(bx), y = Y(0);
    const b = sv("path", {class: "base", d: `M${x} ${y - 7} l7 7 l-7 7 l-7 -7 z`}, plot);
    const lines = ["baseline", sig(kib(base), 3) + " KiB · " + sig(num(base.latency_ms), 3) +
      " ms"];
    b.addEventListener("mousemove", (ev) => showTip(ev, lines));
    b.addEventListener("mouseleave", hideTip);
  }
  box.appendChild(svg);
}

function sensitivity() {
  const box = document.getElementById("sens-chart");
  const all = (Array.isArray(D.sensitivity) ? D.sensitivity : []).filter(isObj);
  const rows = all.filter((r) => num(r.drop) !== null).sort((a, b) => b.drop - a.drop);
  // Layers without a measured drop (the probe failed, or the step does not apply) are listed
  // under the bars with their reason: a failure must never vanish from the page.
  const others = all.filter((r) => num(r.drop) === null)
    .sort((a, b) => (str(a.status) === "failed" ? 0 : 1) - (str(b.status) === "failed" ? 0 : 1));
  if (!rows.length && !others.length) {
    document.getElementById("sens-help").hidden = true;
    el("p", {class: "empty"}, "No sensitivity data: the search ran without a per-layer " +
      "sensitivity pass, so every layer stayed in its search space.", box);
    return;
  }
  if (rows.length) sensBars(box, rows);
  if (others.length) sensOthers(box, others);
}

function sensBars(box, rows) {
  const RH = 24, W = 1040, L = 360, R = 70, T = 10, B = 44, H = T + B + RH * rows.length;
  const svg = sv("svg", {viewBox: "0 0 " + W + " " + H, class: "chart sens", role: "img",
    "aria-label": "per-layer sensitivity"});
  const xd = extent(rows.map((r) => r.drop).concat([0], budget === null ? [] : [budget]), false);
  const X = scale(xd, [L, W - R], false);
  const axis = sv("g", {class: "axis"}, svg);
  linTicks(xd[0], xd[1], 8).forEach((v) => {
    sv("line", {class: "grid", x1: X(v), x2: X(v), y1: T, y2: H - B}, axis);
    sv("text", {x: X(v), y: H - B + 16, "text-anchor": "middle"}, axis, tickText(v));
  });
  sv("text", {class: "label", x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle"}, axis,
    quality + " drop when only this layer is compressed");
  const kibOf = (v) => sig(num(v) === null ? null : v / 1024, 3) + " KiB";
  rows.forEach((r, i) => {
    const y = T + i * RH, x0 = X(0), x1 = X(r.drop), cy = y + RH / 2 + 4;
    const full = str(r.layer) + " · " + str(r.method) + " " + str(r.setting);
    const label = full.length > 52 ? full.slice(0, 51) + "…" : full;
    sv("text", {class: "bar-label", x: L - 8, y: cy, "text-anchor": "end"}, svg, label);
    const bar = sv("rect", {class: "bar " + (r.kept === false ? "excluded" : "kept"),
      "data-index": i, x: Math.min(x0, x1), y: y + 4, width: Math.max(1, Math.abs(x1 - x0)),
      height: RH - 8}, svg);
    sv("text", {class: "bar-value", x: Math.max(x0, x1) + 4, y: cy}, svg, fmtMetric(r.drop));
    const lines = [full, "drop " + fmtMetric(r.drop) + (r.kept === false ? " · excluded" :
      " · kept"), kibOf(r.bytes_before) + " → " + kibOf(r.bytes_after)];
    bar.addEventListener("mousemove", (ev) => showTip(ev, lines));
    bar.addEventListener("mouseleave", hideTip);
  });
  sv("line", {class: "zero", x1: X(0), x2: X(0), y1: T, y2: H - B}, svg);
  if (budget !== null) {
    sv("line", {class: "budget", x1: X(budget), x2: X(budget), y1: T, y2: H - B}, svg);
  }
  box.appendChild(svg);
}

function sensOthers(box, rows) {
  const failed = rows.filter((r) => str(r.status) === "failed").length;
  el("p", {class: "help" + (failed ? " sens-failed-note" : "")},
    rows.length + " layer(s) without a measured drop" + (failed ? ", " + failed +
    " of them because the probe failed (kept in the search space)" : "") + ":", box);
  const tbl = el("table", {id: "sens-skipped"}, null, box);
  const head = el("tr", {}, null, el("thead", {}, null, tbl));
  ["layer", "method", "status", "reason"].forEach((h) => el("th", {class: "txt"}, h, head));
  const body = el("tbody", {}, null, tbl);
  rows.forEach((r) => {
    const tr = el("tr", {class: "sens-" + (str(r.status) || "unknown").replace(/\W+/g, "-")},
      null, body);
    [str(r.layer), str(r.method) + " " + str(r.setting), str(r.status) || "unknown",
      str(r.reason)].forEach((v) => el("td", {class: "txt"}, v, tr));
  });
}
