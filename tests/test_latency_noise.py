"""Noise-aware latency: the verdict statistics on synthetic rounds, identical and much slower
models timed for real (an identical one while busy loops load every core), threads set and
restored, the ONNX Runtime probe, and the regressions a stage is flagged with (bytes grown by
narrow INT8 tables, a batch slower than the previous stage)."""

from __future__ import annotations

import copy
import math
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

import slimkit
from slimkit.eval import cost
from slimkit.eval.cost import (
    DEFAULT_ROUNDS,
    PROBE,
    false_verdict_bound,
    latency_interleaved,
    noise_band,
    pair_band,
    paired_ratio,
    rounds_for,
    verdict,
)
from slimkit.eval.regressions import stage_regressions
from slimkit.export import save


class Thrice(nn.Module):
    """The same work three times per call: genuinely about 3x slower."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        self.model(*x)
        self.model(*x)
        return self.model(*x)


def test_paired_ratio_band_and_verdict_on_synthetic_rounds() -> None:
    # Load doubles every other round: paired per round, the 2x speed-up stays exactly 2.
    base = [4.0, 8.0, 4.0, 8.0, 4.0]
    assert paired_ratio(base, [b / 2 for b in base]) == pytest.approx(2.0)
    # The band is the second-largest probe ratio: one burst round (10x) does not set it.
    probe = [4.0, 8.4, 40.0, 8.0, 4.2]
    assert noise_band(base, probe) == pytest.approx(0.05)
    assert noise_band(base, probe, spare=0) == pytest.approx(9.0)
    assert verdict(1.04, 0.05) == verdict(1 / 1.04, 0.05) == "within noise"
    assert verdict(1.06, 0.05) == "faster" and verdict(1 / 1.06, 0.05) == "slower"
    assert verdict(1.0, 0.0) == "within noise"
    # Calls 4x shorter than the probe's: jitter of a fixed size weighs 4x as much.
    assert pair_band(0.05, 8.0, 2.0) == pytest.approx(0.2)
    assert pair_band(0.05, 8.0, 16.0) == pytest.approx(0.05)


def test_a_much_faster_model_reads_faster_even_with_a_wide_probe_band() -> None:
    """A false "faster" needs jitter on the baseline's calls, so the threshold against the
    baseline is the probe's own band, however much shorter the model's calls are: a model 4x
    faster in every round reads faster under a band of 100% (widening by the model's shorter
    calls, as before, left it "within noise" for any band above 75%)."""
    rng = random.Random(1)
    base = [10.0 * (1 + rng.random()) for _ in range(DEFAULT_ROUNDS)]
    probe = [b * (1 + rng.choice([-0.5, 0.5]) * rng.random()) for b in base]
    model = [b / 4 for b in base]
    rounds = {"base": {"1": base}, PROBE + "base": {"1": probe}, "model": {"1": model}}
    timed = cost.Timing({}, rounds, {"base": {"1": 1.0}}, threads=1)
    compared = timed.compare("model", "base", "1", probe="base")
    assert compared["verdict"] == "faster" and 1.0 <= compared["band"] < 1.5  # not 4x wider
    slower = {**rounds, "model": {"1": [b * 4 for b in base]}}
    assert cost.Timing({}, slower, {"base": {"1": 1.0}}, 1).compare(
        "model", "base", "1", probe="base")["verdict"] == "slower"
    same = {**rounds, "model": {"1": list(probe)}}
    assert cost.Timing({}, same, {"base": {"1": 1.0}}, 1).compare(
        "model", "base", "1", probe="base")["verdict"] == "within noise"


def test_rounds_follow_from_the_false_verdict_rate() -> None:
    assert false_verdict_bound(11, 0) == pytest.approx(2 / 64)
    assert false_verdict_bound(15, 1) == pytest.approx(2 * 10 / 512)
    assert rounds_for(0.05, 0) == 11 and rounds_for(0.05, 1) == DEFAULT_ROUNDS == 15
    assert false_verdict_bound(DEFAULT_ROUNDS, cost.SPARE) <= cost.FALSE_VERDICT


def test_identical_models_stay_within_the_bound_under_bursty_load() -> None:
    # Per round a load factor with bursts (x1..x20) and per-model jitter; the model and the
    # probe are drawn alike, as shuffled rounds make them. False verdicts stay under the bound.
    rng = random.Random(0)
    false = 0
    runs = 2000
    for _ in range(runs):
        rounds = [[rng.choice((1.0, 1.0, 1.0, 2.0, 20.0)) * rng.lognormvariate(0, 0.1)
                   for _ in range(3)] for _ in range(DEFAULT_ROUNDS)]
        base, model, probe = ([r[i] for r in rounds] for i in range(3))
        false += verdict(paired_ratio(base, model), noise_band(base, probe)) != "within noise"
    assert false / runs <= false_verdict_bound(DEFAULT_ROUNDS, cost.SPARE)


@pytest.fixture
def cpu_hog():
    """Busy loops in other processes, one per core this process may use, for the test."""
    loop = "print('busy', flush=True)\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", loop], stdout=subprocess.PIPE, text=True)
            for _ in range(cost.available_cores())]
    try:
        for hog in hogs:  # each is spinning before the timing starts
            assert hog.stdout is not None and hog.stdout.readline() == "busy\n"
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_an_identical_model_reads_within_noise_beside_a_cpu_hog(make_model, tiny_task,
                                                                cpu_hog) -> None:
    model = make_model()
    inputs = {1: tiny_task.example_inputs(1), 512: tiny_task.example_inputs(512)}
    timed = latency_interleaved({"base": model, "same": copy.deepcopy(model)}, inputs,
                                repeats=3, warmup=1)
    assert set(timed.summary) == {"base", "same", PROBE + "base"}
    for batch in ("1", "512"):
        versus = timed.compare("same", "base", batch, probe="base")
        assert versus["verdict"] == "within noise", (batch, versus, timed.noise)
        assert versus["band"] >= timed.noise["base"][batch] > 0
        assert set(timed["same"][batch]) == {"median", "p90", "spread", "throughput"}
        assert len(timed.rounds["same"][batch]) == DEFAULT_ROUNDS


def test_a_much_slower_model_reads_slower(make_model, tiny_task) -> None:
    model = make_model()
    timed = latency_interleaved({"base": model, "thrice": Thrice(copy.deepcopy(model))},
                                {1: tiny_task.example_inputs(1)}, repeats=3, warmup=1)
    versus = timed.compare("thrice", "base", "1", probe="base")
    assert versus["verdict"] == "slower" and versus["ratio"] < 0.5, (versus, timed.noise)
    back = timed.compare("base", "thrice", "1", probe="base")
    assert back["verdict"] == "faster" and back["ratio"] > 2


class ThreadsSeen(nn.Module):
    """Records torch's intra-op threads and which object ran, per call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), id(self)))
        return self.linear(x)


def test_threads_are_applied_recorded_and_restored() -> None:
    before = torch.get_num_threads()
    model = ThreadsSeen()
    wanted = 1 if before > 1 else 2
    timed = latency_interleaved({"m": model}, {2: (torch.zeros(2, 4),)}, rounds=3, repeats=1,
                                warmup=0, threads=wanted)
    assert timed.threads == wanted and torch.get_num_threads() == before
    assert {t for t, _ in model.seen} == {wanted}
    # The probe is a deep copy (its own weights), timed as often as the baseline.
    assert {i for _, i in model.seen} == {id(model)} and len(model.seen) == 3
    default = latency_interleaved({"m": ThreadsSeen()}, {2: (torch.zeros(2, 4),)}, rounds=1,
                                  repeats=1, warmup=0, probes=())
    assert default.threads == cost.available_cores() and default.noise == {}


def test_an_onnx_runtime_probe_is_a_second_session(tmp_path, make_model, tiny_task) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import export_onnx
    from slimkit.export.runtime import OrtSession

    path = export_onnx(make_model(), tiny_task.example_inputs(8), tmp_path / "m.onnx")
    session = OrtSession(path, threads=1)
    probe = copy.deepcopy(session)
    assert probe.session is not session.session and probe.threads == 1
    x = tiny_task.example_inputs(4)
    torch.testing.assert_close(probe(*x), session(*x))


def _artifacts(tmp_path, model: nn.Module, config, task) -> tuple[dict, dict, nn.Module]:
    before = save(model, tmp_path / "before")
    quantized = copy.deepcopy(model)
    ctx = slimkit.Context(task=task)
    slimkit.compress_(quantized, slimkit.Plan(steps=(config,)), ctx)
    after = save(quantized, tmp_path / "after")
    sizes = [sum(f.stat().st_size for f in p.iterdir()) for p in (before, after)]
    return {"bytes": sizes[0]}, {"bytes": sizes[1], "info": {"quantized": [
        n for n, m in quantized.named_modules() if hasattr(m, "bits")]}}, quantized


def test_int8_on_narrow_tables_is_flagged_with_its_reason(tmp_path, tiny_task) -> None:
    torch.manual_seed(0)
    model = tiny_task.build_model("deepfm", embed_dim=4, hidden=[16]).eval()
    previous, stage, quantized = _artifacts(tmp_path, model, slimkit.EmbeddingQuant(bits=8),
                                            tiny_task)
    assert stage["bytes"] > previous["bytes"]  # 8 B rows for 16 B ones, yet the file grew
    found = stage_regressions(previous, stage, "quantize.embedding", before=tmp_path / "before",
                              after=tmp_path / "after", model=quantized)
    assert [(r["what"], r["runtime"], r["batch"]) for r in found] == [("bytes", None, None)]
    assert found[0]["change"] == pytest.approx(stage["bytes"] / previous["bytes"], abs=1e-4)
    assert "16 -> 8 B at width 4" in found[0]["reason"] and "metadata +" in found[0]["reason"]
    # min_dim=1 quantizes the 1-wide first-order tables: 1 code + 4 B scale/offset > 4 B.
    _, stage, quantized = _artifacts(tmp_path / "w1", model,
                                     slimkit.EmbeddingQuant(bits=8, min_dim=1), tiny_task)
    grown = {**stage, "bytes": int(previous["bytes"] * 1.02)}  # past the 1% the manifest moves
    found = stage_regressions(previous, grown,
                              "quantize.embedding", before=tmp_path / "before",
                              after=tmp_path / "w1" / "after", model=quantized)
    assert "INT8 rows of 5 B" in found[0]["reason"] and "width 1" in found[0]["reason"]


def test_a_few_bytes_of_manifest_are_no_regression(tmp_path, tiny_task) -> None:
    """A stage whose tensors did not change (a distillation) writes a manifest a few bytes
    longer now and then (a stage name, a metric's digits): not a regression."""
    torch.manual_seed(0)
    model = tiny_task.build_model("deepfm", embed_dim=4, hidden=[16]).eval()
    previous, stage, quantized = _artifacts(tmp_path, model, slimkit.EmbeddingQuant(bits=8),
                                            tiny_task)
    same = {**previous, "bytes": previous["bytes"] + 3}
    assert stage_regressions(previous, same, "distill.logits", before=tmp_path / "before",
                             after=tmp_path / "before", model=model) == []


def test_a_batch_slower_than_the_previous_stage_is_flagged(tmp_path) -> None:
    def cmp(ratio: float, name: str) -> dict:
        return {"vs_baseline": None, "vs_previous": {"ratio": ratio, "verdict": name}}

    stage = {"bytes": 10, "info": {}, "speed": {
        "torch": {"1": cmp(0.6, "slower"), "512": cmp(1.3, "faster")},
        "onnxruntime": {"1": cmp(0.97, "within noise"), "512": cmp(0.5, "slower")}}}
    found = stage_regressions({"bytes": 10}, stage, "quantize.dynamic_int8",
                              before=tmp_path, after=tmp_path, model=nn.Linear(1, 1))
    assert [(r["what"], r["runtime"], r["batch"], r["change"]) for r in found] == \
        [("latency", "torch", "1", 0.6), ("latency", "onnxruntime", "512", 0.5)]
    assert "activations" in found[0]["reason"] and "not slower at batch 512" in found[0]["reason"]
    assert "at batch" not in found[1]["reason"]  # slower at the largest batch: no amortising
    assert math.isclose(found[1]["change"], 0.5)
