"""Static INT8: layers close to float on real int8 kernels, both backends agree, quantized tensors
passed between layers change nothing, exact save/load and deepcopy, config validation."""

from __future__ import annotations

import copy

import pytest
import torch
from int8_error_model import predicted_conv_error, predicted_linear_error
from torch import nn

import slimkit
from slimkit.core.cpu import cpu_features
from slimkit.core.errors import ConfigError
from slimkit.methods.quantize.observers import Histogram, activation_qparams
from slimkit.methods.quantize.static_int8 import StaticInt8
from slimkit.nn.static_modules import StaticInt8Conv2d, StaticInt8Linear


def _calibrated(module: nn.Module, float_layer: nn.Module, x: torch.Tensor,
                relu: bool) -> nn.Module:
    ref = float_layer(x)
    ref = torch.relu(ref) if relu else ref
    h_in, h_out = Histogram(), Histogram()
    h_in.update(x)
    h_out.update(ref)
    module.set_weight(float_layer.weight, float_layer.bias)
    module.set_qparams(activation_qparams(h_in, "minmax"), activation_qparams(h_out, "minmax"))
    return module


# The rounding-noise model (tests/int8_error_model.py) predicts these errors within a few percent
# (ReLU only removes error); 25% slack covers sampling, and a saturating kernel is ~10x off.
SLACK = 1.25


@pytest.mark.parametrize("weight_max", [64, 127])
@pytest.mark.parametrize("relu", [False, True])
def test_static_linear_close_to_float_on_both_backends(relu: bool, weight_max: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 50, 64)  # leading dims are flattened and restored
    ref = linear(x)
    ref = torch.relu(ref) if relu else ref
    outs = {}
    for backend in ("torch", "onnxruntime"):
        q = _calibrated(StaticInt8Linear(64, 48, relu=relu, backend=backend,
                                         weight_max=weight_max), linear, x, relu)
        outs[backend] = q(x)
        assert outs[backend].shape == ref.shape
        bound = predicted_linear_error(x, q.dequantized_weight(), float(q.input_scale),
                                       q.weight_scale, float(q.output_scale))
        if backend == "torch" and weight_max == 127:  # re-packed to 7 bits on a CPU w/o VNNI
            bound *= 2
        assert (outs[backend] - ref).norm() <= SLACK * bound
        assert (outs[backend] - ref).norm() / ref.norm() < 0.02
    # fbgemm and the ORT emulation differ at most by one output quantization step (unless the
    # torch kernel runs re-packed weights: a CPU without VNNI and full-range codes).
    step = float(q.output_scale)
    if weight_max == 64 or not cpu_features().fbgemm_saturates:
        assert (outs["torch"] - outs["onnxruntime"]).abs().max() <= step * 1.01
    state = q.state_dict()
    assert state["weight"].dtype == torch.int8 and state["input_scale"].dim() == 0


def test_static_conv_close_to_float() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 16, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 12, 12)
    q = StaticInt8Conv2d(6, 16, [3, 3], [2, 2], [1, 1], [1, 1], relu=True)
    q = _calibrated(q, conv, x, relu=True)
    ref = torch.relu(conv(x))
    bound = predicted_conv_error(x, q.dequantized_weight(), float(q.input_scale), q.weight_scale,
                                 float(q.output_scale), q.conv_args())
    assert (q(x) - ref).norm() <= SLACK * bound
    assert (q(x) - ref).norm() / ref.norm() < 0.03


def _static(make_model, task, **kwargs) -> tuple[nn.Module, dict]:
    model = make_model()
    ctx = slimkit.Context(task=task)
    slimkit.compress_(model, slimkit.Plan(steps=(StaticInt8(**kwargs),)), ctx)
    return model, ctx.info


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_static_ctr_model_round_trips_exactly(make_model, tiny_task, tmp_path,
                                             backend: str) -> None:
    model, info = _static(make_model, tiny_task, backend=backend, calibration_batches=4)
    assert info["backend"] == backend and len(info["quantized"]) == 3  # the tower; head stays
    assert info["fused_relu"] == 3
    x = tiny_task.example_inputs(32)
    with torch.inference_mode():
        out = model(*x)
        ref = make_model()(*x)
    assert torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 0.05
    restored = slimkit.load(slimkit.save(model, tmp_path / "m")).model
    with torch.inference_mode():
        assert torch.equal(restored(*x), out)
        assert torch.equal(copy.deepcopy(model)(*x), out)


def test_passing_quantized_tensors_between_layers_changes_nothing(make_model, tiny_task) -> None:
    chained, info = _static(make_model, tiny_task, backend="torch", calibration_batches=4)
    per_layer, info2 = _static(make_model, tiny_task, backend="torch", calibration_batches=4,
                               keep_quantized=False)
    assert info["chained"] == ["tower.0.0", "tower.1.0"] and info2["chained"] == []
    x = tiny_task.example_inputs(64)
    with torch.inference_mode():
        assert torch.equal(chained(*x), per_layer(*x))


def test_static_int8_validates_its_config() -> None:
    with pytest.raises(ConfigError, match="percentile"):
        StaticInt8(percentile=40.0)
    with pytest.raises(ConfigError, match="observer"):
        StaticInt8.from_dict({"method": "quantize.static_int8", "observer": "median"})
    with pytest.raises(ConfigError, match="calibration_batches"):
        StaticInt8(calibration_batches=0)


class ImageTask:
    """The two task methods calibration needs, over random images."""

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[dict]:
        g = torch.Generator().manual_seed(0)
        return [{"x": torch.randn(8, 3, 12, 12, generator=g)} for _ in range(n)]

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return (batch["x"],)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 6 * 6, 10)).eval()


def test_static_int8_quantizes_and_chains_convolutions() -> None:
    model, ref = small_cnn(), small_cnn()
    ctx = slimkit.Context(task=ImageTask())
    slimkit.compress_(model, slimkit.Plan(steps=(StaticInt8(calibration_batches=4),)), ctx)
    assert ctx.info["quantized"] == ["0", "2"] and ctx.info["chained"] == ["0"]
    assert ctx.info["skipped"] == ["5"]  # 10 outputs: below min_features
    assert isinstance(model[0], StaticInt8Conv2d) and isinstance(model[1], nn.Identity)
    x = torch.randn(4, 3, 12, 12)
    with torch.inference_mode():
        assert (model(x) - ref(x)).norm() / ref(x).norm() < 0.05
