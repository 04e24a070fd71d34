"""Magnitude pruning math: exact sparsity, global vs per-layer, cubic schedule, masks held."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.prune.masks import cubic_sparsity, global_masks, magnitude_mask
from slimkit.train import fit


def test_exact_sparsity_even_with_ties() -> None:
    w = torch.zeros(10, 10)
    w[:, :3] = torch.randn(10, 3)  # 70% already zero: a threshold would over- or under-prune
    for s in (0.25, 0.5, 0.8, 0.95):
        mask = magnitude_mask(w, s)
        assert int((mask == 0).sum()) == int(s * 100)


def test_pruned_entries_are_the_smallest() -> None:
    w = torch.randn(64, 64)
    mask = magnitude_mask(w, 0.6)
    assert mask.dtype == torch.bool
    assert w[~mask].abs().max() <= w[mask].abs().min()


def test_global_allocates_by_magnitude_across_layers() -> None:
    # Every big weight outweighs every small one (unseeded randn let a few big ones fall below
    # the small ones' largest now and then).
    signs = torch.randint(0, 2, (2, 100)) * 2 - 1
    big, small = signs[0] * (1 + torch.rand(100)) * 10, signs[1] * torch.rand(100) * 0.01
    m_big, m_small = global_masks([big, small], 0.5)
    assert int((m_small == 0).sum()) == 100 and int((m_big == 0).sum()) == 0


def test_cubic_schedule_matches_zhu_gupta() -> None:
    assert cubic_sparsity(0, 100, 0.8) == 0.0
    assert cubic_sparsity(100, 100, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(50, 100, 0.8, 0.1) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)
    assert cubic_sparsity(500, 100, 0.8) == pytest.approx(0.8)


def test_per_layer_sparsity_and_masks_survive_training(tiny_task, make_model) -> None:
    model = make_model()
    ctx = slimkit.Context(task=tiny_task)
    plan = slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.7, targets=slimkit.Targets(
        names=("tower.*", "head"))),))
    record = slimkit.compress_(model, plan, ctx)[0]
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in layers:  # exactly floor(s * n) zeros in every layer
        assert int((layer.weight == 0).sum()) == int(0.7 * layer.weight.numel())
    # After the step no mask is held (inference needs none); training re-derives them.
    assert not any("weight_mask" in m._buffers for m in model.modules())
    seen: list[torch.dtype] = []

    def on_step(_step: int, _total: int) -> None:
        seen.extend(m.weight_mask.dtype for m in layers if "weight_mask" in m._buffers)

    fit(model, tiny_task, ctx, epochs=0.5, lr=1e-2, batch_size=256, on_step=on_step)
    assert seen and set(seen) == {torch.bool}  # a byte a weight, not an fp32 copy
    for layer in layers:
        assert int((layer.weight == 0).sum()) >= int(0.7 * layer.weight.numel())
    assert not any("weight_mask" in m._buffers for m in model.modules())
    assert record.info["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_gradual_schedule_reaches_target(tiny_task, make_model, monkeypatch) -> None:
    import slimkit.methods.prune.magnitude as magnitude

    seen: list[float] = []
    real = magnitude._set_masks
    monkeypatch.setattr(magnitude, "_set_masks",
                        lambda layers, s, scope: (seen.append(s), real(layers, s, scope)))
    model = make_model()
    config = slimkit.Magnitude(sparsity=0.6, schedule="gradual", epochs=1.0, update_every=2,
                               scope="global", targets=slimkit.Targets(names=("tower.*",)))
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=tiny_task))
    # The ramp follows the cubic schedule: rising, fast at first, ending at the target.
    assert seen[0] == 0.0 and seen[-1] == 0.6 and len(seen) > 3
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False))
    assert seen[1] - seen[0] > seen[-1] - seen[-3]
    weights = [m.weight for n, m in model.named_modules() if n.startswith("tower.")
               and isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == int(0.6 * sum(w.numel() for w in weights))
