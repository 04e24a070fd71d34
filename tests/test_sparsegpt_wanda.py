"""prune.sparsegpt and prune.wanda: exact counts and N:M patterns, lower layer error than
magnitude pruning where their statistics matter, lower KL on a tiny Llama, zeros kept through
save/load and later training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.graph import is_masked
from slimkit.methods.layerwise import HessianAccumulator, hessian_error
from slimkit.methods.prune.calibrated import keep_n_of_m, keep_per_row
from slimkit.methods.prune.masks import magnitude_mask
from slimkit.methods.prune.sparsegpt import sparsegpt_prune
from slimkit.methods.prune.wanda import wanda_scores


def _inputs(rows: int = 1024, features: int = 128, rank: int = 12, outliers: int = 0,
            seed: int = 0) -> torch.Tensor:
    """Correlated inputs (low rank plus noise); `outliers` channels 20x larger, as in LLMs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, rank, generator=g) @ torch.randn(rank, features, generator=g)
    x = x + 0.3 * torch.randn(rows, features, generator=g)
    x[:, :outliers] *= 20.0
    return x


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[1])
    acc.add(x)
    return acc.hessian


def _output_error(x: torch.Tensor, w: torch.Tensor, pruned: torch.Tensor) -> float:
    ref = x @ w.T
    return float((x @ pruned.T - ref).pow(2).sum() / ref.pow(2).sum())


def _groups_of(w: torch.Tensor, m: int) -> torch.Tensor:
    return (w != 0).reshape(w.shape[0], -1, m).sum(-1)


def test_masks_are_exact_per_row_and_per_group() -> None:
    scores = torch.randn(6, 40).abs()
    scores[:, :10] = 0.0  # ties must not over-prune
    assert ((~keep_per_row(scores, 0.6)).sum(1) == 24).all()
    assert (keep_n_of_m(scores, 2, 4).reshape(6, 10, 4).sum(-1) == 2).all()
    distinct = torch.randn(6, 40)
    keep = keep_n_of_m(distinct, 1, 4).reshape(6, 10, 4)
    best = distinct.reshape(6, 10, 4).argmax(-1, keepdim=True)
    assert keep.gather(-1, best).all() and (keep.sum(-1) == 1).all()


def test_sparsegpt_with_a_uniform_hessian_is_magnitude_pruning() -> None:
    # H = cI: no column can compensate another, so the mask is magnitude's and nothing moves.
    w = torch.randn(16, 64)
    out = sparsegpt_prune(w, 3.0 * torch.eye(64, dtype=torch.float64), sparsity=0.5,
                          block_size=64)
    assert torch.equal(out != 0, magnitude_mask(w, 0.5))
    assert torch.allclose(out, w * (out != 0))


@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
def test_sparsegpt_beats_magnitude_on_its_calibration_inputs(pattern) -> None:
    n, m = pattern
    x = _inputs()
    h = _hessian(x)
    w = torch.randn(64, 128)
    out = sparsegpt_prune(w, h, sparsity=0.5, n=n, m=m, block_size=32)
    if n:
        assert (_groups_of(out, 4) == 2).all()
        magnitude = w * keep_n_of_m(w.abs(), 2, 4)
    else:
        assert int((out == 0).sum()) == w.numel() // 2  # exact per layer
        magnitude = w * magnitude_mask(w, 0.5)
    err = _output_error(x, w, out)
    assert err < 0.5 * _output_error(x, w, magnitude)
    # The recorded error (Hessian form) is the output error on the calibration rows.
    assert hessian_error(w, out, h) == pytest.approx(err, rel=1e-3)


def test_sparsegpt_keeps_dead_inputs_finite() -> None:
    x = _inputs(features=64)
    x[:, [3, 50]] = 0.0
    out = sparsegpt_prune(torch.randn(8, 64), _hessian(x), sparsity=0.5)
    assert torch.isfinite(out).all() and int((out == 0).sum()) == 8 * 32


def test_wanda_beats_magnitude_with_large_norm_channels() -> None:
    x = _inputs(rank=128, outliers=4)
    norms = x.pow(2).sum(0).sqrt()
    w = torch.randn(64, 128)
    wanda = w * keep_per_row(wanda_scores(w, norms), 0.5)
    assert ((wanda == 0).sum(1) == 64).all()
    magnitude = w * magnitude_mask(w, 0.5)
    assert _output_error(x, w, wanda) < 0.5 * _output_error(x, w, magnitude)


class _Batches:
    """The two Task calls calibration needs, over fixed random inputs of a Linear stack."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[torch.Tensor]:
        return list(self.x.split(128))[:n]

    def inputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (batch,)


def _stack() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(),
                         nn.Linear(64, 32))


@pytest.mark.parametrize("method", ["prune.wanda", "prune.sparsegpt"])
@pytest.mark.parametrize("options", [{"sparsity": 0.6}, {"n": 2, "m": 4}])
def test_linear_stack_counts_patterns_and_record(method, options) -> None:
    model = _stack()
    task = _Batches(_inputs(rows=512, outliers=3))
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [
        {"method": method, "calibration_batches": 3, **options}]})
    info = slimkit.compress_(model, plan, slimkit.Context(task=task))[0].info
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, layer in linears.items():
        w = layer.weight
        if "n" in options:
            assert (_groups_of(w, 4) == 2).all()
        elif method == "prune.wanda":
            assert ((w == 0).sum(1) == int(0.6 * w.shape[1])).all()
        else:
            assert int((w == 0).sum()) == int(0.6 * w.numel())
        assert is_masked(layer)
        assert info["layers"][name]["sparsity"] == pytest.approx(float((w == 0).float().mean()),
                                                                 abs=1e-4)
        assert ("error" in info["layers"][name]) == (method == "prune.sparsegpt")
    assert info["calibration"] == {"asked": 3, "batches": 3, "rows": 384, "elements": 384 * 128}
    assert info["unseen"] == [] and info["target"] == pytest.approx(0.5 if "n" in options else 0.6)


@pytest.mark.parametrize("bad", [{"n": 2}, {"n": 4, "m": 4}, {"sparsity": 1.0},
                                 {"calibration_batches": 0}])
def test_bad_options_are_refused(bad) -> None:
    for cls in (slimkit.methods.Wanda, slimkit.methods.SparseGPT):
        with pytest.raises(slimkit.ConfigError):
            cls(**bad)
    with pytest.raises(slimkit.ConfigError):
        slimkit.methods.SparseGPT(n=2, m=4, block_size=30)


def test_widths_not_divisible_by_m_are_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 4))
    config = slimkit.methods.Wanda(n=2, m=4)
    with pytest.raises(slimkit.SlimkitError, match="multiples of 4"):
        slimkit.compress_(model, slimkit.Plan(steps=(config,)),
                          slimkit.Context(task=_Batches(torch.randn(8, 6))))


def test_zeros_survive_save_load_and_finetuning(tmp_path, make_model, tiny_task) -> None:
    model = make_model()
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.methods.SparseGPT(
        sparsity=0.5, calibration_batches=2),)), slimkit.Context(task=tiny_task))
    zeros = {n: m.weight == 0 for n, m in model.named_modules() if is_masked(m)}
    assert zeros
    loaded = slimkit.load(slimkit.save(model, tmp_path / "art")).model
    for name, zero in zeros.items():
        assert torch.equal(loaded.get_submodule(name).weight == 0, zero)
    slimkit.compress_(loaded, slimkit.Plan(steps=(slimkit.Finetune(epochs=0.2, lr=1e-2),)),
                      slimkit.Context(task=tiny_task))
    for name, zero in zeros.items():
        assert (loaded.get_submodule(name).weight[zero] == 0).all()


# --- end to end on the tiny Llama of lm_fixtures -------------------------------------------

@pytest.fixture(scope="module")
def lm_task(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from lm_fixtures import write_text, write_tiny_lm

    from slimkit.tasks.registry import make_task

    root = tmp_path_factory.mktemp("lm")
    text = write_text(root / "text.txt")
    return make_task("causal-lm", model_path=str(write_tiny_lm(root / "model", text)),
                     text_file=str(text), seq_len=32, eval_chunks=4, eval_batch=2,
                     calibration_rows=2)


def _kl(task, model, step: dict) -> tuple[float, dict]:
    out = copy.deepcopy(model)
    plan = slimkit.Plan.from_dict({"version": 1, "steps": [step]})
    info = slimkit.compress_(out, plan, slimkit.Context(task=task))[0].info
    return task.evaluate(out)["kl"], info


def test_tiny_llama_kl_below_magnitude(lm_task) -> None:
    model = lm_task.build_model()
    magnitude, _ = _kl(lm_task, model, {"method": "prune.magnitude", "sparsity": 0.5})
    sparsegpt, info = _kl(lm_task, model, {"method": "prune.sparsegpt", "sparsity": 0.5})
    wanda, _ = _kl(lm_task, model, {"method": "prune.wanda", "sparsity": 0.5})
    assert sparsegpt < magnitude and wanda < magnitude, (sparsegpt, wanda, magnitude)
    assert info["blocks"] == "model.layers" and info["unseen"] == []
    assert info["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert len(info["layers"]) == 14  # 7 Linear layers a block; the tied head is left out
