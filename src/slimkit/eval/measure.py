"""The one measurement of a model on a task: quality on a split, logical parameters, artifact
bytes, latency and run-time memory. `slimkit.evaluate`, `run_plan`'s stages and the search's
trials all measure quality and bytes through `measure`; latency is always timed against a
baseline and its noise probe (run_plan times its stages together and reads them with
`latency_fields` and `speed_fields`; a search trial is timed beside the baseline by
search.trial.time_latency), so their numbers mean the same."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import SlimkitError
from ..core.task import Task
from ..export import artifact_bytes, save
from .cost import NOISE, Inputs, Timing, count_params, latency_interleaved
from .runtime_memory import runtime_memory

BATCH_SIZES = (1, 512)


def task_batch_sizes(task: Task) -> tuple[int, ...]:
    """The batch sizes latency and run-time memory are measured at: the task's own
    `latency_batches` when it has them (a language model's batch of 512 sequences would hold
    gigabytes of logits), else BATCH_SIZES."""
    return tuple(getattr(task, "latency_batches", BATCH_SIZES))
# What a stage records of runtime_memory's figures (MiB above a fresh process's baseline).
MEMORY_KEYS = ("resident", "peak", "loaded", "load_peak", "model")


def quality(model: nn.Module, task: Task, split: str, label: str | None = None) -> dict[str, float]:
    """The task's metrics on `split`. With `label`, a ValueError of the evaluation (NaN scores
    after a diverged fine-tune, say) becomes a one-line SlimkitError naming `label`."""
    if label is None:
        return task.evaluate(model, split)
    try:
        return task.evaluate(model, split)
    except ValueError as exc:
        raise SlimkitError(f"{label}: evaluation failed ({exc}); did training diverge?") from None


def latency_fields(timed: Timing, name: str) -> dict[str, dict[str, Any]]:
    """One model's share of an interleaved timing (cost.latency_interleaved; torch models and
    ONNX Runtime sessions alike): {"latency_ms": {batch: {"median", "p90", "spread"}},
    "throughput": {batch: rows/s}}."""
    per = timed[name]
    return {"latency_ms": {b: {k: v[k] for k in ("median", "p90", "spread")}
                           for b, v in per.items()},
            "throughput": {b: v["throughput"] for b, v in per.items()}}


def speed_fields(timed: Timing, name: str, *, baseline: str, previous: str | None,
                 probe: str) -> dict[str, dict[str, Any]]:
    """{batch: {"vs_baseline": {"ratio", "verdict", "band"}, "vs_previous": same or None}}:
    `name` against `baseline` and `previous` (None: not timed), judged by `probe`'s noise
    (Timing.compare). A model against itself is 1.0 within noise by definition."""
    def against(reference: str | None, batch: str) -> dict[str, Any] | None:
        if reference is None:
            return None
        if reference == name:
            return {"ratio": 1.0, "verdict": NOISE, "band": timed.noise[probe][batch]}
        return timed.compare(name, reference, batch, probe)

    return {b: {"vs_baseline": against(baseline, b), "vs_previous": against(previous, b)}
            for b in timed[name]}


def memory_fields(artifact: Path, inputs: Inputs, keys: Sequence[str] = MEMORY_KEYS,
                  model_factory: str | None = None) -> dict[str, Any] | None:
    """{"runtime_mb": {key: MiB}, "peak_memory_mb": whole VmHWM} of a fresh process that loads
    `artifact` (into `model_factory()`'s instance when given) and runs `inputs`
    (runtime_memory); None if it could not be measured."""
    measured = runtime_memory(artifact, inputs, model_factory)
    if measured is None:
        return None
    return {"runtime_mb": {k: measured[k] for k in keys},
            "peak_memory_mb": measured["peak_absolute"]}


def _same_metrics(path: Path, split: str, metrics: Mapping[str, float]) -> bool:
    manifest = path / "manifest.json"
    return manifest.is_file() and \
        json.loads(manifest.read_text()).get("metrics", {}).get(split) == metrics


def measure(model: nn.Module, task: Task, *, split: str = "test", artifact: Path | None = None,
            save_to: Path | None = None, manifest: Mapping[str, Any] | None = None,
            reuse: bool = False, params: bool = True,
            batch_sizes: Sequence[int] | None = None, timing: Mapping[str, Any] | None = None,
            memory: bool = True, memory_keys: Sequence[str] = MEMORY_KEYS,
            label: str | None = None, model_factory: str | None = None) -> dict[str, Any]:
    """Measure `model` on `task`; returns what was asked for, in this order:

    - "metrics": the task's metrics on `split` (see `quality` for `label`);
    - "params", "nonzeros" (with `params`): logical weights, cost.count_params;
    - "latency_ms", "throughput", "threads" (for each of `batch_sizes`, default the task's
      (task_batch_sizes); none: not timed),
      `timing` passed to cost.latency_interleaved (rounds, repeats, warmup, threads); one
      model is timed without a noise probe: nothing is compared with it here;
    - "bytes": the artifact's bytes on disk: `artifact` if given; else the model saved to
      `save_to` with its metrics under `split` in the manifest (plus `manifest`: plan, task,
      extra), kept as it is with `reuse` when it already holds the same metrics; else saved
      to a temporary artifact;
    - "runtime_mb", "peak_memory_mb" (with `memory` and `batch_sizes`): a fresh process's
      memory after loading the artifact and running the largest batch (`memory_keys` of it);
      a model that loads into an instance (a class of the caller's) needs `model_factory`,
      the `module:function` that builds one, for that process.
    """
    metrics = quality(model, task, split, label)
    result: dict[str, Any] = {"metrics": metrics}
    if params:
        result.update(count_params(model))
    sizes = task_batch_sizes(task) if batch_sizes is None else batch_sizes
    inputs = {b: task.example_inputs(b) for b in sizes}
    if inputs:
        timed = latency_interleaved({"model": model}, inputs, probes=(), **(timing or {}))
        result.update(latency_fields(timed, "model"), threads=timed.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = artifact
        if path is None and save_to is not None:
            path = save_to
            if not (reuse and _same_metrics(save_to, split, metrics)):
                path = save(model, save_to, metrics={split: metrics}, **(manifest or {}))
        elif path is None:
            path = save(model, Path(tmp) / "artifact")
        result["bytes"] = artifact_bytes(path)
        measured = memory_fields(path, inputs[max(inputs)], memory_keys, model_factory) \
            if memory and inputs else None
        if measured is not None:
            result.update(measured)
    return result
