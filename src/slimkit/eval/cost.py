"""Cost of a model as deployed: logical parameters, non-zeros, latency and run-time memory.

Latency is wall time of `model(*inputs)` under inference_mode, on the same threads for torch and
ONNX Runtime. A latency is only ever read against another: `latency_interleaved` times models
in shuffled rounds beside a copy of the baseline (the noise probe), and `Timing.compare` says
faster, slower or within noise by what that probe showed noise alone can do.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..export.runtime import OrtSession, available_cores
from .runtime_memory import runtime_memory

Inputs = tuple[torch.Tensor, ...]
log = logging.getLogger(__name__)
FALSE_VERDICT = 0.05  # the usual 5%: an identical model reads "within noise" 19 times in 20
PROBE = "noise probe: "  # a probe's name is this prefix and the name of the model it copies
FASTER, SLOWER, NOISE = "faster", "slower", "within noise"


def count_params(model: nn.Module) -> dict[str, int]:
    """Logical weights: the parameters of the equivalent float model (a packed 4-bit 768x3072
    weight counts 2.36M, its scales none), and how many of them are non-zero."""
    params = nonzeros = 0
    seen: set[int] = set()
    for module in model.modules():
        shape = _packed_weight_shape(module)
        packed = module._buffers.get("qweight")
        if shape is not None and packed is not None and id(packed) in seen:
            continue  # a tied head reading its table's codes (TiedLowBitHead) counts once
        if shape is not None:
            if packed is not None:
                seen.add(id(packed))
            numel = math.prod(shape)
            bias = module._buffers.get("bias", module._parameters.get("bias"))
            params += numel + (bias.numel() if bias is not None else 0)
            nonzeros += _packed_nonzeros(module, numel) + (
                int((bias != 0).sum()) if bias is not None else 0)
            seen.update(id(t) for t in module.parameters(recurse=False))
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:  # tied weights count once
                seen.add(id(param))
                params += param.numel()
                nonzeros += int((param != 0).sum())
    return {"params": params, "nonzeros": nonzeros}


def _packed_weight_shape(module: nn.Module) -> list[int] | None:
    """The float weight shape a quantized/packed layer stands for; None for any other module."""
    weight = module._parameters.get("weight")
    own = [t for t in [*module._parameters.values(), *module._buffers.values()] if t is not None]
    if (weight is not None and weight.is_floating_point()) \
            or all(t.is_floating_point() for t in own):
        return None  # nothing packed here: its parameters count as they are
    if hasattr(module, "weight_shape"):
        return [int(d) for d in module.weight_shape]
    coded = module._buffers.get("weight")
    if coded is not None and not coded.is_floating_point():
        return list(coded.shape)  # int8 codes: one per weight
    for rows, cols in (("out_features", "in_features"), ("num_embeddings", "embedding_dim")):
        if isinstance(getattr(module, rows, None), int) and isinstance(getattr(module, cols, None),
                                                                       int):
            return [getattr(module, rows), getattr(module, cols)]
    return None


@torch.no_grad()
def _packed_nonzeros(module: nn.Module, numel: int) -> int:
    for method in ("dequantized_weight", "dense_weight"):
        dense = getattr(module, method, None)
        if callable(dense):
            return int((dense() != 0).sum())
    return numel


def false_verdict_bound(rounds: int, spare: int) -> float:
    """Worst-case chance that a model identical to the baseline reads faster or slower after
    `rounds` rounds when the band is the (spare + 1)-th largest probe ratio (`noise_band`):
    2 * P(Binomial(k + spare, 1/2) >= k), k = ceil(rounds / 2)."""
    k = math.ceil(rounds / 2)
    n = k + spare
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def rounds_for(alpha: float, spare: int) -> int:
    """The fewest (odd) rounds whose `false_verdict_bound` is at most `alpha`."""
    rounds = 1
    while false_verdict_bound(rounds, spare) > alpha:
        rounds += 2
    return rounds


# Probe rounds a burst of load may hit without widening the band. With none, one burst that
# lands on the probe's calls sets the band alone (the median ratios it judges ignore such a
# round); one spare round costs 4 more rounds for the same 5%.
SPARE = 1
DEFAULT_ROUNDS = rounds_for(FALSE_VERDICT, SPARE)  # 15


def paired_ratio(reference: Sequence[float], model: Sequence[float]) -> float:
    """Median over rounds of reference / model, each a round's fastest call in ms (>1: model
    faster). The ratio is taken within a round, where both saw the same machine, so load that
    comes and goes between rounds cancels; the median ignores rounds a burst hit harder on one
    side."""
    return math.exp(statistics.median(
        math.log(r / m) for r, m in zip(reference, model, strict=True)))


def noise_band(baseline: Sequence[float], probe: Sequence[float], spare: int = SPARE) -> float:
    """Relative half-width b: ratios within [1/(1+b), 1+b] are what noise alone produces here.

    The probe is the baseline timed again as another model, so each round's ln(baseline/probe)
    is pure noise; b = exp(e) - 1 with e the (spare + 1)-th largest of their sizes (the largest
    when spare = 0). Why that is safe without any model of the noise: take a model M identical
    to the baseline and each round's pair (ln B/M, ln B/P). The models' order is shuffled every
    round, so M and P are exchangeable within it: either value of a pair is M's with chance
    1/2, independently from round to round, whatever the load does. M's median over R rounds
    exceeds the (spare + 1)-th largest probe value only if at least k (= ceil(R / 2)) of the
    k + spare largest of all 2R values are M's. Each of those values is M's by a fair coin, or
    two from one round are one M's and one P's, which only makes k of them (over half) less
    likely: the chance is at most P(Binomial(k + spare, 1/2) >= k), and as much again for
    "slower": 3.9% at R = 15, spare = 1 (`false_verdict_bound`; 3.1% at R = 11, spare = 0).
    """
    sizes = sorted((abs(math.log(b / p)) for b, p in zip(baseline, probe, strict=True)),
                   reverse=True)
    return math.exp(sizes[min(spare, len(sizes) - 1)]) - 1


def pair_band(band: float, probe_ms: float, side_ms: float) -> float:
    """The probe's band for jitter on a side that takes `side_ms`. The probe ran at the
    baseline's `probe_ms`; jitter of fixed size J (a preempted thread, a timer tick) makes a
    ratio of 1 + J / ms, more on a shorter call, and one probe cannot tell that jitter from
    noise that scales with the call, so the band is widened as if all of it were fixed:
    b = J / probe_ms becomes J / side_ms = b * probe_ms / side_ms."""
    return band * max(1.0, probe_ms / side_ms)


def verdict(ratio: float, band: float, slower_band: float | None = None) -> str:
    """"faster" above 1 + band, "slower" below 1 / (1 + slower_band) (default: band), else
    "within noise"."""
    if ratio > 1 + band:
        return FASTER
    if ratio < 1 / (1 + (band if slower_band is None else slower_band)):
        return SLOWER
    return NOISE


@dataclasses.dataclass
class Timing:
    """What `latency_interleaved` measured. `summary[name][batch]`: median and p90 ms over all
    calls, `spread` (half the width of the middle 80% of calls over the median) and rows/s;
    `rounds[name][batch]`: each round's fastest call, ms; `noise[name][batch]`: the band of a
    probed model's probe (`noise_band`); `threads`: torch's and ONNX Runtime's threads.
    Probes appear in summary and rounds as PROBE + name. `timing[name]` is summary[name]."""

    summary: dict[str, dict[str, dict[str, float]]]
    rounds: dict[str, dict[str, list[float]]]
    noise: dict[str, dict[str, float]]
    threads: int

    def __getitem__(self, name: str) -> dict[str, dict[str, float]]:
        return self.summary[name]

    def compare(self, name: str, reference: str, batch: str, probe: str) -> dict[str, Any]:
        """{"ratio": reference / name (paired_ratio), "verdict", "band"}, judged by the noise of
        `probe`'s probe (the baseline of the runtime both run in), widened by pair_band."""
        ratio = paired_ratio(self.rounds[reference][batch], self.rounds[name][batch])
        # A false "faster" comes from jitter on the reference's calls (ratio (t_ref + J) /
        # t_model), a false "slower" from jitter on the model's: each threshold is widened for
        # its own side's call length, measured like the ratio (median of each round's fastest
        # call; all-call medians inflate under load far more than fastest calls do).
        probe_ms, ref_ms, model_ms = (statistics.median(self.rounds[n][batch])
                                      for n in (PROBE + probe, reference, name))
        faster_band = pair_band(self.noise[probe][batch], probe_ms, ref_ms)
        slower_band = pair_band(self.noise[probe][batch], probe_ms, model_ms)
        band = faster_band if ratio >= 1 else slower_band
        return {"ratio": round(ratio, 4), "verdict": verdict(ratio, faster_band, slower_band),
                "band": round(band, 4)}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside, and restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_interleaved(models: Mapping[str, Any], inputs: Mapping[int, Inputs], *,
                        rounds: int = DEFAULT_ROUNDS, repeats: int = 5, warmup: int = 3,
                        probes: Sequence[str] | None = None, threads: int | None = None,
                        seed: int = 0, progress: Callable[..., Iterable] | None = None) -> Timing:
    """Time `models` (torch modules or OrtSessions) at each batch size of `inputs`.

    A round makes `repeats` passes per batch size, each calling every model once in an order
    shuffled anew (seeded: runs repeat their order), so load that starts or stops mid-round
    lands on every model's calls alike. A round's value for a model, the unit the ratios pair
    (Timing.compare), is its fastest call there: load only ever adds time (a preempted thread,
    a parallel region waiting for one), so the fastest call is the one it disturbed least, and
    a model is misjudged only when load hit all its calls of the round (under two busy loops on
    two cores, the median of a round's calls read 4x apart for two copies of one model where
    the fastest read 4% apart). Medians, p90 and spread still describe all calls.

    `probes` (default: the first model, the baseline) each get a deep copy timed as one more
    model: its own weights in their own memory, like any model compared with it (the same
    object timed again would find its weights still in cache right after itself and read
    quieter than a real comparison); an OrtSession copies into a second session on its file.
    `threads` (default `available_cores()`) is set for torch during the timing and restored;
    sessions built with another count are timed as they are, with a warning, since a
    comparison across runtimes is then unfair.
    """
    threads = available_cores() if threads is None else threads
    probes = list(models)[:1] if probes is None else list(probes)
    runners = dict(models)
    for name in probes:
        runners[PROBE + name] = copy.deepcopy(models[name])
    for name, model in runners.items():
        if isinstance(model, OrtSession) and model.threads != threads:
            log.warning("%s: ONNX Runtime session on %d threads, torch timed on %d",
                        name, model.threads, threads)
    # Each runtime in a phase of its own: ONNX Runtime's idle worker threads spin for a while
    # after every call, and a torch call right behind one ran several times slower (median
    # batch-512 latency 14.5 ms instead of 2.0 on a quiet 2-core machine). Models are only
    # compared within a runtime, so nothing is lost by not interleaving the two.
    groups = [{n: m for n, m in runners.items() if isinstance(m, OrtSession) == ort}
              for ort in (False, True)]
    calls: dict[str, dict[int, list[float]]] = {}
    fastest: dict[str, dict[int, list[float]]] = {}
    with torch_threads(threads):
        for group in (g for g in groups if g):
            group_calls, group_fastest = _run(group, inputs, rounds, repeats, warmup, seed,
                                              progress)
            calls.update(group_calls)
            fastest.update(group_fastest)
    summary = {name: {str(b): _summary(t, b) for b, t in per.items()}
               for name, per in calls.items()}
    per_round = {name: {str(b): t for b, t in per.items()} for name, per in fastest.items()}
    noise = {name: {b: round(noise_band(per_round[name][b], per_round[PROBE + name][b]), 4)
                    for b in per_round[name]} for name in probes}
    return Timing(summary, per_round, noise, threads)


@torch.inference_mode()
def _run(runners: Mapping[str, Any], inputs: Mapping[int, Inputs], rounds: int, repeats: int,
         warmup: int, seed: int, progress: Callable[..., Iterable] | None
         ) -> tuple[dict[str, dict[int, list[float]]], dict[str, dict[int, list[float]]]]:
    for model in runners.values():
        model.eval()
        for x in inputs.values():
            for _ in range(warmup):
                model(*x)
    calls: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in runners}
    fastest: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in runners}
    order, shuffle = list(runners), random.Random(seed).shuffle
    rounds_iter: Iterable[int] = range(rounds)
    if progress is not None:
        rounds_iter = progress(rounds_iter, total=rounds, desc="latency")
    for _ in rounds_iter:
        for batch, x in inputs.items():
            times: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(repeats):
                shuffle(order)
                for name in order:
                    times[name].append(_time_once(runners[name], x))
            for name, t in times.items():
                calls[name][batch].extend(t)
                fastest[name][batch].append(min(t))
    return calls, fastest


def _time_once(model: Any, inputs: Inputs) -> float:
    start = time.perf_counter()
    model(*inputs)
    return max((time.perf_counter() - start) * 1e3, 1e-9)  # a ratio needs a positive time


def _summary(times: list[float], batch: int) -> dict[str, float]:
    times = sorted(times)
    median = statistics.median(times)
    p10, p90 = (times[min(len(times) - 1, int(round(q * (len(times) - 1))))] for q in (0.1, 0.9))
    return {"median": round(median, 5), "p90": round(p90, 5),
            "spread": round((p90 - p10) / (2 * median), 4),
            "throughput": round(batch / (median / 1e3), 1)}


def peak_memory_mb(artifact: Path, inputs: Inputs) -> tuple[float, float] | None:
    """(peak, added) MiB: peak resident memory (VmHWM) of a fresh process that loads the artifact
    and runs `inputs`, and how much of it came after its imports (`runtime_memory` gives more)."""
    measured = runtime_memory(artifact, inputs)
    if measured is None:
        return None
    return measured["peak_absolute"], measured["peak"]
