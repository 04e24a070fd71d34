"""Per-layer widths for a bits-per-weight target (methods/quantize/bit_allocation.py): the
budget holds over the whole model, insensitive layers get the fewest bits, and the allocation
beats one width everywhere at the same size; AWQ with double-quantized parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import tiny_lm_task, write_text, write_tiny_lm

import slimkit
from slimkit.core.errors import ConfigError
from slimkit.eval.weight_bits import bits_per_weight
from slimkit.methods.quantize.bit_allocation import single_rows
from slimkit.nn import WeightOnlyLinear

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("alloc")
    text = write_text(root / "text.txt")
    return tiny_lm_task(write_tiny_lm(root / "model", text), text)


def _run(model, task, **options):
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [
        {"method": "quantize.weight_only", "group_size": 32, "embedding_bits": 4, **options}]})
    out = copy.deepcopy(model)
    records = slimkit.compress_(out, plan, slimkit.Context(task=task))
    return out, records[0].info


def _widths(model) -> dict[str, int]:
    return {n: m.bits for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}


def test_single_rows_splits_a_batch_of_equal_leading_size():
    batch = {"input_ids": torch.arange(12).reshape(3, 4), "mask": torch.ones(3, 4)}
    rows = single_rows(batch)
    assert len(rows) == 3 and torch.equal(rows[1]["input_ids"], torch.arange(4, 8)[None])
    assert len(single_rows({"a": torch.ones(2, 3), "b": torch.ones(3)})) == 1


@pytest.mark.parametrize("target", [3.5, 4.5, 6.0])
def test_the_whole_model_fits_the_target_and_widths_differ(task, target):
    model = task.build_model()
    out, info = _run(model, task, target_bits=target, bit_choices=[2, 3, 4, 8])
    achieved = bits_per_weight(out)
    assert achieved <= target
    assert info["allocation"]["bits_per_weight"] == pytest.approx(achieved, abs=1e-3)
    assert len(set(_widths(out).values())) > 1
    # The tied table takes part: one width for the embedding and the head it feeds.
    table = info["allocation"]["widths"]["model.embed_tokens"]
    assert out.model.embed_tokens.bits == table == out.lm_head.bits


def test_an_insensitive_layer_gets_the_fewest_bits(task):
    model = task.build_model()
    quiet = "model.layers.0.mlp.down_proj"
    with torch.no_grad():  # its output barely reaches the residual stream
        model.get_submodule(quiet).weight.mul_(1e-3)
    out, info = _run(model, task, target_bits=4.2, bit_choices=[2, 4, 8])
    assert _widths(out)[quiet] == 2
    cost = info["allocation"]["sensitivity_by_width"][quiet]
    assert cost["2"] > cost["4"] > cost["8"] >= 0.0


def test_allocation_beats_one_width_at_the_same_size(task):
    model = task.build_model()
    uniform, _ = _run(model, task, bits=3, embedding_bits=3)
    mixed, _ = _run(model, task, target_bits=bits_per_weight(uniform), bit_choices=[2, 3, 4, 8])
    assert bits_per_weight(mixed) <= bits_per_weight(uniform)
    assert task.evaluate(mixed)["kl"] < task.evaluate(uniform)["kl"]


def test_an_unreachable_target_names_the_field(task):
    model = task.build_model()
    with pytest.raises(ConfigError, match="target_bits"):
        _run(model, task, target_bits=1.5, bit_choices=[3, 4])


def test_awq_with_double_quantized_parameters(task):
    model = task.build_model()
    out, _ = _run(model, task, bits=4, algorithm="awq", param_bits=6)
    layers = [m for m in out.modules() if isinstance(m, WeightOnlyLinear)]
    assert layers and all(m.param_bits == 6 for m in layers)
    plain, _ = _run(model, task, bits=4, algorithm="awq")
    # Rounding the group parameters to 6 bits costs little next to 4-bit codes.
    assert task.evaluate(out)["kl"] < 2 * task.evaluate(plain)["kl"] + 1e-3


def test_the_w3_recipe_runs_from_the_cli_and_reloads(tmp_path, capsys):
    """recipes/smollm2-w3.yaml as shipped (widths to 3.5 bits, then the norms distilled), on a
    tiny model: both stages report perplexity / KL / top-1, the distillation keeps every layer
    packed, and `slimkit eval` reproduces the final metrics from the artifact."""
    import json
    from pathlib import Path

    from slimkit.cli.main import main

    text = write_text(tmp_path / "text.txt")
    folder = write_tiny_lm(tmp_path / "model", text)
    recipe = Path(__file__).parents[1] / "recipes" / "smollm2-w3.yaml"
    options = ["--task-opt", f"model_path={folder}", "--task-opt", f"text_file={text}",
               "--task-opt", "seq_len=32", "--task-opt", "eval_chunks=4"]
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--task", "causal-lm", *options, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    quantized, distilled = metrics["stages"][-2:]
    assert {"perplexity", "kl", "top1"} <= set(distilled["metrics"])
    assert distilled["metrics"]["kl"] < quantized["metrics"]["kl"]
    capsys.readouterr()
    assert main(["eval", str(out / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["measured"] == result["recorded"]


def test_awq_allocation_counts_its_input_scales(task):
    model = task.build_model()
    out, _ = _run(model, task, algorithm="awq", target_bits=4.5, bit_choices=[2, 3, 4, 8])
    assert bits_per_weight(out) <= 4.5
