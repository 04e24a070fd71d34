"""What a search leaves behind: one row per trial read back from the study, the Pareto front,
non-domination ranks, the best plan within the budget, and search.json (the report's data)."""

from __future__ import annotations

from typing import Any

FRONT_KEYS = ("drop", "bytes", "latency_ms")
LATENCY_KEYS = ("latency_ratio", "latency_verdict", "latency_band", "latency_timed_ms")


def trial_row(trial: Any) -> dict[str, Any]:
    """A JSON-ready row for one Optuna trial (any state). Latency of a measured trial (None
    otherwise), timed interleaved with the baseline and its noise probe (search/trial.py):
    "latency_ratio" baseline / trial, paired per round (>1: faster); "latency_verdict"
    "faster" | "slower" | "within noise"; "latency_band" the probe's relative half-width for
    it; "latency_timed_ms" {"trial", "baseline"} medians of those rounds; "latency_ms" the
    study's baseline ms / latency_ratio (trials timed under different loads on one scale)."""
    attrs = trial.user_attrs
    plan = attrs.get("plan")
    done = trial.state.name == "COMPLETE" and "bytes" in attrs
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)
    return {"number": trial.number, "state": trial.state.name, "plan": plan,
            "steps": attrs.get("steps", ""), "params": dict(trial.params),
            "metrics": attrs.get("metrics") if done else None,
            "bytes": attrs.get("bytes") if done else None,
            "latency_ms": attrs.get("latency_ms") if done else None,
            **{k: attrs.get(k) if done else None for k in LATENCY_KEYS},
            "drop": attrs.get("drop") if done else attrs.get("intermediate_drop"),
            "feasible": False, "pareto": False, "best": False, "rank": None,
            "artifact": attrs.get("artifact") if done else None, "seconds": seconds,
            "worker": attrs.get("worker", ""), "note": attrs.get("note", ""),
            "error": attrs.get("error")}


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] <= b[k] for k in FRONT_KEYS) and any(a[k] < b[k] for k in FRONT_KEYS)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on all of drop, bytes and latency (and strictly on one)."""
    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def nondominated_ranks(rows: list[dict[str, Any]]) -> list[int]:
    """Rank of each row by non-dominated sorting: 1 = on the Pareto front, 2 = on the front
    once rank 1 is removed, and so on (the ordering NSGA-II selects by)."""
    ranks = [0] * len(rows)
    left = set(range(len(rows)))
    rank = 1
    while left:
        front = {i for i in left
                 if not any(dominates(rows[j], rows[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def annotate(rows: list[dict[str, Any]], *, max_drop: float, key: str) -> dict[str, Any] | None:
    """Fill feasible / rank / pareto / best on the measured rows; return the best row."""
    measured = [r for r in rows if r["bytes"] is not None]
    for r, rank in zip(measured, nondominated_ranks(measured), strict=True):
        r["rank"], r["pareto"] = rank, rank == 1
        r["feasible"] = r["drop"] <= max_drop
    feasible = [r for r in measured if r["feasible"]]
    # Ties on the objective go to the smaller drop, then the other cost, then the earlier trial
    # (so the answer is always on the front).
    other = "latency_ms" if key == "bytes" else "bytes"
    best = min(feasible, key=lambda r: (r[key], r["drop"], r[other], r["number"])) \
        if feasible else None
    if best is not None:
        best["best"] = True
    return best


def front_position(rows: list[dict[str, Any]], best: dict[str, Any], key: str) -> tuple[int, int]:
    """(position of `best` among the Pareto points ordered by the objective, front size)."""
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: (r[key], r["drop"]))
    numbers = [r["number"] for r in front]
    return (numbers.index(best["number"]) + 1 if best["number"] in numbers else 0), len(front)
