"""Loading without a second copy, and run-time memory measured in a fresh process beside the
artifact's bytes (metrics.json, report, logical parameter counts)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import slimkit
from slimkit.eval.cost import count_params
from slimkit.eval.runtime_memory import runtime_memory
from slimkit.export import artifact
from slimkit.export.assign_load import empty_weights, meta_leftovers
from slimkit.pipeline import run_plan

MB = 2**20
LOAD_PEAK_RATIO = 1.25  # what users asked for: load may peak at most 1.25x the loaded model


def _classic_load(path) -> nn.Module:
    """Today's path before this change: random init, then copy every tensor in."""
    manifest = artifact.read_manifest(path)
    state = slimkit.load(path).model.state_dict()
    return artifact._build_and_copy(manifest, state).eval()


def _hidden(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_load_equals_a_random_init_then_copy_load(tmp_path, arch) -> None:
    from slimkit.models import example_inputs, tiny_model

    model = tiny_model(arch)
    path = slimkit.save(model, tmp_path / arch)
    loaded = slimkit.load(path).model
    assert not meta_leftovers(loaded)
    inputs = example_inputs(model)
    with torch.no_grad():
        assert torch.equal(_hidden(loaded(*inputs)), _hidden(_classic_load(path)(*inputs)))
        assert torch.equal(_hidden(loaded(*inputs)), _hidden(model(*inputs)))
    if arch == "llama":  # tied embeddings stay one Parameter, as after a copy into the tie
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert all(p.requires_grad for p in loaded.parameters())


class _ReadsItsWeight(nn.Module):
    """A constructor that computes a non-persistent buffer from a parameter: the storage-less
    build cannot fill it, so load must fall back to building with real tensors."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.scale = nn.Parameter(torch.full((features,), 2.0))
        self.register_buffer("inverse", 1 / self.scale.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale * self.inverse


def test_constructor_needing_real_tensors_falls_back_to_a_copy(tmp_path) -> None:
    with empty_weights():
        assert "inverse" in meta_leftovers(_ReadsItsWeight())
    model = _ReadsItsWeight().eval()
    slimkit.register_module_type(_ReadsItsWeight)  # loads by name: built without arguments
    path = slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(path).model
    x = torch.randn(3, 8)
    assert not meta_leftovers(loaded) and torch.equal(loaded(x), model(x))


def test_logical_params_count_packed_weights_as_floats() -> None:
    from slimkit.nn.lowbit_linear import WeightOnlyLinear

    linear = nn.Linear(768, 3072)
    packed = WeightOnlyLinear.from_linear(linear, bits=4, group_size=128)
    assert count_params(nn.Sequential(linear))["params"] == 768 * 3072 + 3072
    assert count_params(nn.Sequential(packed))["params"] == 768 * 3072 + 3072
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert count_params(tied)["params"] == 40


def _measure(tmp_path, name: str, model: nn.Module, inputs) -> tuple[dict[str, float], float]:
    path = slimkit.save(model, tmp_path / name)
    tensors = slimkit.load(path).model.state_dict().values()
    # Tied weights share storage: count each storage once.
    state_mb = sum({t.data_ptr(): t.numel() * t.element_size() for t in tensors}.values()) / MB
    memory = runtime_memory(path, inputs)
    assert memory is not None, "the measuring process failed"
    return memory, state_mb


def _assert_loads_once(memory: dict[str, float], state_mb: float) -> None:
    # The loaded model must actually be resident (else the ratio below would mean nothing);
    # the classic path (random init + copy + the decoded file) peaks near 2x.
    assert memory["loaded"] >= 0.9 * state_mb, (memory, state_mb)
    assert memory["load_peak"] <= LOAD_PEAK_RATIO * memory["loaded"], (memory, state_mb)
    assert memory["peak"] >= memory["resident"] > 0


def test_load_peaks_at_most_1_25x_the_loaded_model(tmp_path) -> None:
    from slimkit.models import example_inputs, tiny_model

    # About 37 MB of fp32 tensors: 25% of it (9 MB) is well above RSS noise of a few MB.
    model = tiny_model("llama", hidden_size=512, intermediate_size=1536, vocab_size=4000,
                       num_hidden_layers=2)
    memory, state_mb = _measure(tmp_path, "llama", model, example_inputs(model, batch=1, seq=32))
    assert state_mb > 30
    _assert_loads_once(memory, state_mb)


def test_metrics_json_has_bytes_and_runtime_memory_per_stage(tmp_path, tiny_task,
                                                             make_model) -> None:
    plan = slimkit.Plan(steps=(slimkit.DynamicInt8(),))
    metrics = run_plan(make_model(), tiny_task, plan, tmp_path / "run",
                       ctx=slimkit.Context(task=tiny_task), title="t", onnxruntime=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["stages"] == json.loads(json.dumps(metrics["stages"]))
    for stage in saved["stages"]:
        assert stage["bytes"] > 0
        memory = stage["runtime_mb"]
        assert set(memory) >= {"resident", "peak", "loaded", "load_peak", "model"}
        assert memory["peak"] >= memory["resident"] >= 0
    base, quantized = saved["stages"]
    # The model's own run-time share (tensors + fbgemm's prepacked weights) shrinks with INT8.
    assert quantized["runtime_mb"]["model"] < base["runtime_mb"]["model"]
    # INT8 codes stand for the same float weights: the logical count does not change.
    assert quantized["params"] == base["params"] and quantized["bytes"] < base["bytes"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Run-time memory (model, est.; process resident / peak)" in report and " MiB |" in report
    assert (tmp_path / "run" / "charts" / "memory.png").stat().st_size > 0


@pytest.mark.slow
def test_llama_4bit_holds_less_memory_and_loads_once(tmp_path) -> None:
    from slimkit.models import example_inputs, tiny_model
    from slimkit.tasks.inputs import InputsTask, next_token_loss

    model = tiny_model("llama", hidden_size=768, intermediate_size=3072, vocab_size=8000)
    inputs = example_inputs(model, batch=1, seq=128)
    fp32, fp32_state = _measure(tmp_path, "fp32", model, inputs)
    slimkit.compress_(model, slimkit.Plan([slimkit.WeightOnly(bits=4)]),
                      slimkit.Context(task=InputsTask([inputs], next_token_loss)))
    int4, int4_state = _measure(tmp_path, "int4", model, inputs)
    print(f"fp32 {fp32} state {fp32_state:.1f} MB; int4 {int4} state {int4_state:.1f} MB")
    _assert_loads_once(fp32, fp32_state)
    assert int4["resident"] <= 0.6 * fp32["resident"], (int4, fp32)
    # Huffman-coded codes are decoded one tensor at a time; the decoder's buffers for the
    # largest one (lm_head) are what this bounds.
    _assert_loads_once(int4, int4_state)
