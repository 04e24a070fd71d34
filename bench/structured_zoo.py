"""Benchmark: structured pruning at ratio 0.3 (channels and heads, widths rounded to multiples
of 8, hidden widths under normalisation included) on the public zoo of
third-party architectures (bench/zoo_models.py: Hugging Face text and vision families and two
recommendation models, built from configs with random weights).

Per model: parameters kept, output shape kept, ONNX export parity with ONNX Runtime, analysis
time (the whole prune.structured step: trace, groups, probes, scores, cut), ONNX Runtime latency
before vs after at batch 1 and 8 (interleaved, with a copy of "before" as the noise probe), and the
groups left intact with their reasons. Random weights make quality meaningless; this measures
reach, not accuracy.

    .venv/bin/python bench/structured_zoo.py [--only NAME ...] [--rounds 9] [--no-latency]
"""

from __future__ import annotations

import argparse
import collections
import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from verdicts import noise_line, speed_cell
from zoo_models import ZOO, inputs_for

import slimkit
from slimkit.eval.cost import latency_interleaved
from slimkit.export.onnx import check_parity, export_onnx
from slimkit.export.runtime import OrtSession, available_cores
from slimkit.models import MainOutput, first_tensor
from slimkit.tasks.inputs import InputsTask

RATIO = 0.3
BATCHES = (1, 8)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _intact(info: dict[str, Any]) -> str:
    """The reasons groups were left whole, most frequent first, with counts."""
    analysis = info.get("analysis", {})
    units = analysis.get("units", [analysis])
    reasons = collections.Counter(
        item["reason"].split(" (")[0] for unit in units for item in unit.get("locked", []))
    reasons.update("probe: " + item["reason"][:40] for item in analysis.get("probe_failed", []))
    return ", ".join(f"{r} {n}" for r, n in reasons.most_common(4))


def _prune_one(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model = ZOO[name]()
    inputs = {b: inputs_for(name, model, b, seed=1) for b in BATCHES}
    task = InputsTask([inputs_for(name, model, 8, seed=2)])
    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    config = slimkit.Structured(ratio=RATIO, normalised_widths=not args.exact_only,
                                round_to=args.round_to)
    records = slimkit.compress_(pruned, slimkit.Plan([config]), slimkit.Context(task=task))
    seconds = time.perf_counter() - start
    x = inputs[BATCHES[-1]]
    with torch.no_grad():
        same_shape = first_tensor(pruned(*x)).shape == first_tensor(model(*x)).shape
    row: dict[str, Any] = {"name": name, "before": _params(model), "after": _params(pruned),
                           "seconds": seconds, "shape": same_shape,
                           "intact": _intact(records[0].info)}
    sessions = {}
    parity = []
    for label, m in (("before", model), ("after", pruned)):
        wrapped = MainOutput(m)
        path = export_onnx(wrapped, inputs[1], tmp / f"{name}-{label}.onnx")
        parity.append(check_parity(wrapped, path, x, min_cosine=0.999, atol=1e-3).cosine)
        sessions[label] = OrtSession(path, threads=args.threads, spin=False)
    row["parity"] = min(parity)
    if not args.no_latency:
        lat = latency_interleaved(sessions, inputs, rounds=args.rounds, repeats=3,
                                  probes=["before"], threads=args.threads)
        row["latency"] = lat
        print(f"  {name}: {noise_line(lat)}", flush=True)
    return row


def _speed(row: dict[str, Any], batch: int) -> tuple[str, float | None]:
    lat = row.get("latency")
    if lat is None:
        return "-", None
    before, after = (lat[k][str(batch)]["median"] for k in ("before", "after"))
    ratio = lat.compare("after", "before", str(batch), "before")["ratio"]
    return (f"{before:.1f} → {after:.1f} ({speed_cell(lat, 'after', 'before', batch, 'before')})",
            ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(ZOO))
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep channel counts multiples of this (8 or 16 suit CPU kernels)")
    parser.add_argument("--exact-only", action="store_true",
                        help="leave widths under a normalisation whole (normalised_widths=False)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    rows, failed = [], []
    for name in args.only or list(ZOO):
        try:
            rows.append(_prune_one(name, args, tmp))
        except Exception as exc:  # one architecture failing must not hide the others' rows
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            print(f"  FAILED {failed[-1]}", flush=True)
            continue
        r = rows[-1]
        print(f"  done {name}: kept {r['after'] / r['before']:.0%} in {r['seconds']:.1f} s",
              flush=True)
    cols = ("model", "params before → after", "kept", "shape kept", "ONNX parity (cosine)",
            "analysis + cut s", *(f"ORT ms batch {b} (speed-up)" for b in BATCHES),
            "left intact (reason: groups)")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    kept, speedups = [], {b: [] for b in BATCHES}
    for r in rows:
        cells = []
        for b in BATCHES:
            text, ratio = _speed(r, b)
            cells.append(text)
            if ratio is not None:
                speedups[b].append(ratio)
        kept.append(r["after"] / r["before"])
        print("| " + " | ".join([
            r["name"], f"{r['before'] / 1e6:.2f}M → {r['after'] / 1e6:.2f}M",
            f"{kept[-1]:.0%}", "yes" if r["shape"] else "NO", f"{r['parity']:.6f}",
            f"{r['seconds']:.1f}", *cells, r["intact"] or "-"]) + " |")
    print(f"\n{len(rows)} of {len(rows) + len(failed)} architectures pruned; median share of "
          f"parameters kept {statistics.median(kept):.0%}" if rows else "nothing pruned")
    for b, values in speedups.items():
        if values:
            print(f"median ONNX Runtime speed-up at batch {b}: {statistics.median(values):.2f}x")
    for line in failed:
        print("FAILED", line)


if __name__ == "__main__":
    main()
