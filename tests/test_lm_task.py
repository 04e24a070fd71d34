"""The causal-LM task on a tiny local model folder and text file: metrics, splits, calibration,
bad input; block-by-block calibration equals whole-model calibration."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import tiny_lm_task, write_text, write_tiny_lm

import slimkit
from slimkit.core.errors import SlimkitError
from slimkit.methods import layerwise
from slimkit.nn import WeightOnlyLinear
from slimkit.tasks.registry import make_task

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    text = write_text(root / "text.txt")
    return write_tiny_lm(root / "model", text), text


@pytest.fixture(scope="module")
def task(files):
    return tiny_lm_task(*files)


def _quantized(model, task, **options):
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [
        {"method": "quantize.weight_only", "group_size": 32, **options}]})
    out = copy.deepcopy(model)
    records = slimkit.compress_(out, plan, slimkit.Context(task=task))
    return out, records[0].info


def test_the_uncompressed_model_agrees_with_itself(task):
    result = task.evaluate(task.build_model())
    assert result["top1"] == 1.0
    # fp16 log-probabilities move the KL by about sum p (l 2^-11)^2 / 2 (metrics.py).
    assert 0.0 <= result["kl"] < 1e-5
    assert result["perplexity"] == pytest.approx(torch.tensor(result["nll"]).exp().item())


def test_quantization_shows_in_kl_and_top1(task):
    model = task.build_model()
    low, _ = _quantized(model, task, bits=2, algorithm="rtn")
    result = task.evaluate(low)
    assert result["kl"] > 1e-3 and result["top1"] < 1.0


def test_splits_are_disjoint_documents_and_sized(task):
    chunks = task.chunks
    assert chunks["test"].shape == (4, 32) and chunks["valid"].shape == (4, 32)
    assert task.documents["test"] > 0 and task.documents["train"] == 8 * task.documents["test"]
    info = task.describe()
    assert info["eval_tokens"] == 128 and info["chunks"]["test"] == 4


def test_calibration_batches_are_recorded_not_capped(task):
    model = task.build_model()
    _, info = _quantized(model, task, bits=4, algorithm="gptq", calibration_batches=3)
    assert info["calibration"] == {"asked": 3, "batches": 3, "rows": 6, "elements": 6 * 32}
    assert info["blocks"] == "model.layers"


def test_blockwise_calibration_equals_whole_model_passes(task, monkeypatch):
    model = task.build_model()
    by_block, _ = _quantized(model, task, bits=3, algorithm="gptq")
    monkeypatch.setattr(layerwise, "find_blocks", lambda *_: None)
    by_model, info = _quantized(model, task, bits=3, algorithm="gptq")
    assert "blocks" not in info
    for name, layer in by_block.named_modules():
        if isinstance(layer, WeightOnlyLinear):
            other = by_model.get_submodule(name)
            same = (layer.codes() == other.codes()).float().mean()
            assert same > 0.999, name  # fp32 sums in another order may flip a rare tie


def test_gptq_beats_round_to_nearest_end_to_end(task):
    model = task.build_model()
    rtn = task.evaluate(_quantized(model, task, bits=3, algorithm="rtn")[0])
    gptq = task.evaluate(_quantized(model, task, bits=3, algorithm="gptq")[0])
    assert gptq["kl"] < rtn["kl"]


@pytest.mark.parametrize(("options", "field"), [
    ({"text_file": "/nonexistent/t.txt"}, "text_file"),
    ({"model_path": "/nonexistent/m"}, "model"),
    ({"seq_len": 0}, "seq_len"),
])
def test_bad_options_name_their_field(files, options, field):
    folder, text = files
    kwargs = {"model_path": str(folder), "text_file": str(text), **options}
    with pytest.raises(SlimkitError, match=field):
        make_task("causal-lm", **kwargs)


def test_non_utf8_text_is_refused(files, tmp_path):
    folder, _ = files
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(SlimkitError, match="not UTF-8"):
        make_task("causal-lm", model_path=str(folder), text_file=str(bad))


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_tied_table_quantized_once_and_reloaded_tied(task, algorithm, tmp_path):
    from slimkit.eval.cost import count_params
    from slimkit.nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding

    model = task.build_model()
    out, info = _quantized(model, task, bits=4, algorithm=algorithm, embedding_bits=4)
    assert count_params(out)["params"] == count_params(model)["params"]  # the table counts once
    table, head = out.model.embed_tokens, out.lm_head
    assert isinstance(table, WeightOnlyEmbedding) and isinstance(head, TiedLowBitHead)
    assert head.qweight is table.qweight
    assert {"model.embed_tokens", "lm_head"} <= set(info["quantized"])
    if algorithm == "gptq":
        assert info["layers"]["lm_head"]["error"] > 0
    slimkit.save(out, tmp_path / "a")
    back = slimkit.load(tmp_path / "a").model
    assert back.lm_head.qweight is back.model.embed_tokens.qweight
    ids = task.chunks["test"][:1]
    assert torch.equal(back(ids).logits, out(ids).logits)


def test_cli_run_and_eval_reproduce_with_kl_and_top1(files, tmp_path, capsys):
    import json

    import onnx

    from slimkit.cli.main import main

    folder, text = files
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nsteps:\n- method: quantize.weight_only\n  bits: 4\n"
                    "  group_size: 32\n  algorithm: gptq\n  embedding_bits: 4\n")
    task = ["--task", "causal-lm", "--task-opt", f"model_path={folder}", "--task-opt",
            f"text_file={text}", "--task-opt", "seq_len=32", "--task-opt", "eval_chunks=4"]
    out = tmp_path / "run"
    assert main(["run", str(plan), *task, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in metrics["stages"]:
        assert {"perplexity", "kl", "top1"} <= set(stage["metrics"])
        assert set(stage["latency_ms"]) == {"1"}  # the task's latency batch: one prompt
    final = metrics["stages"][-1]
    assert metrics["higher_is_better"] is False and final["metrics"]["kl"] > 0
    # Deployed as MatMulNBits with the cache inputs, not as de-quantized fp32 constants.
    graph = onnx.load(str(out / "onnx" / "01-quantize.weight_only.onnx")).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) >= 14
    assert any(i.name.startswith("past_key_values.") for i in graph.input)
    capsys.readouterr()
    assert main(["eval", str(out / "model"), "--json"]) == 0  # the task rebuilt from its spec
    result = json.loads(capsys.readouterr().out)
    assert result["measured"] == result["recorded"]


def test_default_plan_is_the_w4_recipe_and_the_space_parses():
    from pathlib import Path

    import yaml

    from slimkit.search.space import SearchSpace
    from slimkit.tasks.lm.defaults import LM_PLAN_YAML, LM_SPACE_YAML

    recipe = Path(__file__).parents[1] / "recipes" / "smollm2-w4.yaml"
    assert slimkit.Plan.from_yaml(recipe.read_text()).to_dict() == \
        slimkit.Plan.from_yaml(LM_PLAN_YAML).to_dict()
    SearchSpace.from_dict(yaml.safe_load(LM_SPACE_YAML))


@pytest.mark.parametrize("param_bits", [0, 6])
def test_table_gptq_by_row_blocks_equals_whole(param_bits):
    from slimkit.methods.layerwise import HessianAccumulator
    from slimkit.methods.quantize.weight_only import _gptq_codes, _gptq_codes_by_rows

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(100, 64, generator=gen)
    acc = HessianAccumulator(64)
    acc.add(torch.randn(512, 64, generator=gen) * torch.linspace(0.1, 3, 64))
    config = slimkit.WeightOnly(bits=4, group_size=32, algorithm="gptq", param_bits=param_bits)
    whole = _gptq_codes(weight, acc.hessian, config, 4, 32)
    blocks = _gptq_codes_by_rows(weight, acc.hessian, config, 4, 32, rows=32)
    assert torch.equal(whole[0], blocks[0])
    if param_bits:
        assert torch.equal(whole[1].scale(), blocks[1].scale())
        assert torch.equal(whole[1].offset(), blocks[1].offset())
    else:
        assert torch.equal(whole[1], blocks[1]) and torch.equal(whole[2], blocks[2])
