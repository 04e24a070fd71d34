"""LSQ (Esser et al. 2019): STE, gradient scaling, init, and conversion equal to the fake quant."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.quantize.lsq import init_step, lsq, qrange, round_ste, scale_grad
from slimkit.methods.quantize.qat import QAT, LsqLinear


def test_round_ste_and_scale_grad() -> None:
    x = torch.tensor([0.2, 1.7], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(2))
    y = torch.tensor(2.0, requires_grad=True)
    out = scale_grad(y, 0.25)
    out.backward()
    assert float(out.detach()) == 2.0 and float(y.grad) == pytest.approx(0.25)


def test_lsq_forward_and_step_gradient_follow_the_paper() -> None:
    qn, qp = qrange(4, signed=True)
    assert (qn, qp) == (7, 7)
    x = torch.tensor([0.26, -3.0, 0.9, 10.0])
    step = torch.tensor(0.5, requires_grad=True)
    out = lsq(x, step, qn, qp)
    assert torch.allclose(out, torch.tensor([0.5, -3.0, 1.0, 3.5]))
    out.sum().backward()
    # d v_hat / d s = round(v/s) - v/s inside the range, -Qn or Qp outside; times g.
    v = x / 0.5
    inner = torch.where((v > -qn) & (v < qp), v.round() - v, torch.where(v <= -qn, -qn, qp))
    g = 1 / math.sqrt(4 * qp)
    assert float(step.grad) == pytest.approx(float(inner.sum()) * g, rel=1e-5)


def test_init_step_is_two_mean_abs_over_sqrt_qp() -> None:
    w = torch.randn(4, 16)
    assert torch.allclose(init_step(w, 127, dim=1),
                          2 * w.abs().mean(1, keepdim=True) / math.sqrt(127))


def test_converted_layer_stores_exactly_the_trained_fake_quant() -> None:
    torch.manual_seed(0)
    wrapper = LsqLinear(nn.Linear(32, 24), weight_bits=8, activation_bits=0)
    with torch.no_grad():
        wrapper.weight_step.mul_(1.3)  # as if training had moved it
    fake = lsq(wrapper.linear.weight, wrapper.weight_step, *wrapper.wq)
    deployed = wrapper.to_dynamic_int8(relu=False)
    assert torch.allclose(deployed.dequantized_weight(), fake.detach(), atol=1e-6)


def test_qat_plan_trains_converts_and_round_trips(tmp_path, tiny_task, make_model) -> None:
    model = make_model()
    slimkit.compress_(model, slimkit.Plan(steps=(QAT(epochs=0.3, batch_size=256),)),
                      slimkit.Context(task=tiny_task))
    assert not any(isinstance(m, (nn.Linear, LsqLinear)) for m in model.tower.modules())
    x = tiny_task.example_inputs(16)
    loaded = slimkit.load(slimkit.save(model, tmp_path / "qat")).model
    with torch.inference_mode():
        assert torch.equal(loaded(*x), model(*x))
