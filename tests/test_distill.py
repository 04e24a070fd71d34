"""KD losses equal their formulas (Hinton et al. 2015)."""

from __future__ import annotations

import math

import torch

from slimkit.methods.distill.losses import binary_kd, is_binary, softmax_kd


def test_softmax_kd_equals_formula() -> None:
    s, t, T = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p_t = torch.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(softmax_kd(s, t, T), expected, atol=1e-6)


def test_binary_kd_equals_bernoulli_kl_and_two_class_softmax() -> None:
    s, t, T = torch.randn(16), torch.randn(16), 2.0
    p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    assert torch.allclose(binary_kd(s, t, T), kl.mean() * T * T, atol=1e-5)
    # A single logit z is the two-class softmax over [0, z].
    two = lambda z: torch.stack([torch.zeros_like(z), z], -1)  # noqa: E731
    assert torch.allclose(binary_kd(s, t, T), softmax_kd(two(s), two(t), T), atol=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    z = torch.randn(8)
    assert binary_kd(z, z, 1.0).abs() < 1e-6
    assert binary_kd(z + 1, z, 1.0) > 0
    assert math.isclose(float(softmax_kd(torch.ones(2, 3), torch.ones(2, 3), 4.0)), 0.0,
                        abs_tol=1e-6)
    assert is_binary(torch.zeros(3)) and is_binary(torch.zeros(3, 1))
    assert not is_binary(torch.zeros(3, 2))


def test_default_teacher_is_the_model_before_the_plan_and_does_not_leak(tiny_task,
                                                                        make_model) -> None:
    import slimkit

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = slimkit.Context(task=tiny_task)
    seen = []
    original = slimkit.methods.distill.logits.distill_loss_fn

    def spy(teacher, *args, **kwargs):
        seen.append({k: v.clone() for k, v in teacher.state_dict().items()})
        return original(teacher, *args, **kwargs)

    slimkit.methods.distill.logits.distill_loss_fn = spy
    try:
        plan = slimkit.Plan(steps=(slimkit.Finetune(epochs=0.2, lr=1e-2),
                                   slimkit.LogitsKD(epochs=0.2, batch_size=256)))
        slimkit.compress_(model, plan, ctx)
    finally:
        slimkit.methods.distill.logits.distill_loss_fn = original
    assert all(torch.equal(seen[0][k], before[k]) for k in before)  # not the fine-tuned model
    assert ctx.teacher is None  # a teacher made by compress_ lives only for that call


def test_alpha_mixes_kd_and_label_loss(tiny_task, make_model) -> None:
    from slimkit.methods.distill.logits import distill_loss_fn

    student, teacher = make_model(seed=1), make_model(seed=2)
    batch = tiny_task.calibration_batches(1)[0]
    kd_only = distill_loss_fn(teacher, tiny_task, temperature=2.0, alpha=1.0)(student, batch)
    label_only = distill_loss_fn(teacher, tiny_task, temperature=2.0, alpha=0.0)(student, batch)
    mixed = distill_loss_fn(teacher, tiny_task, temperature=2.0, alpha=0.3)(student, batch)
    assert torch.allclose(mixed, 0.3 * kd_only + 0.7 * label_only, atol=1e-6)
