"""Int8 numerics that are right on every x86 CPU: portable weights cannot overflow the 16-bit pair
sums of kernels without VNNI, and the same model gives the same outputs when fbgemm is forced to
its AVX2 kernels (FBGEMM_ENABLE_INSTRUCTIONS), as on a CPU without VNNI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from int8_error_model import predicted_conv_error, predicted_linear_error, saturating_int8_matmul
from safetensors.torch import load_file

from slimkit.core.cpu import (
    FBGEMM_ISA_ENV,
    PORTABLE_WEIGHT_MAX,
    CpuFeatures,
    cpu_features,
    requantize_to_portable,
)
from slimkit.nn.int8_linear import quantize_weight_int8

X86 = cpu_features().x86 and "fbgemm" in torch.backends.quantized.supported_engines


def _worst_case_inputs(w: torch.Tensor) -> torch.Tensor:
    """The u8 activations that maximise every pair sum of row 0 (255 where w > 0)."""
    return torch.where(w[:1] > 0, 255, 0).to(torch.uint8)


def test_portable_codes_never_saturate_and_full_codes_can() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    for qmax, saturates in ((PORTABLE_WEIGHT_MAX, False), (127, True)):
        q, _ = quantize_weight_int8(w, per_channel=True, qmax=qmax)
        x = torch.cat([_worst_case_inputs(q), torch.randint(0, 256, (31, 64), dtype=torch.uint8)])
        exact = x.long() @ q.long().t()
        assert torch.equal(saturating_int8_matmul(x, q), exact) is not saturates
    # The bound behind it: the largest pair sum of portable codes fits in int16.
    assert 2 * 255 * PORTABLE_WEIGHT_MAX <= 32767 < 2 * 255 * 127


def test_requantized_full_codes_are_portable_and_within_half_a_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 40) * torch.rand(32, 1) * 3
    q, scale = quantize_weight_int8(w, per_channel=True, qmax=127)
    q7, scale7 = requantize_to_portable(q, scale)
    assert int(q7.int().abs().max()) <= PORTABLE_WEIGHT_MAX
    # Half a 7-bit step of re-rounding on top of the 8-bit code's own half step.
    err = (q7.float() * scale7[:, None] - q.float() * scale[:, None]).abs()
    assert (err <= scale7[:, None] / 2 + 1e-6).all()


def test_which_kernels_saturate() -> None:
    def cpu(vnni: bool, avx_vnni: bool = False, forced: str | None = None,
            machine: str = "x86_64") -> CpuFeatures:
        return CpuFeatures(machine, True, vnni, vnni, avx_vnni, False, forced)

    assert cpu(False).fbgemm_saturates and cpu(False).onnxruntime_saturates
    assert not cpu(True).fbgemm_saturates and not cpu(True).onnxruntime_saturates
    assert cpu(True, forced="AVX2").fbgemm_saturates
    assert not cpu(True, forced="AVX512_E1").fbgemm_saturates
    assert cpu(False, forced="AVX512_E1").fbgemm_saturates  # fbgemm cannot raise the ISA
    assert cpu(False, avx_vnni=True).fbgemm_saturates  # fbgemm has no AVX-VNNI kernels
    assert not cpu(False, avx_vnni=True).onnxruntime_saturates  # MLAS has
    assert not cpu(False, machine="aarch64").fbgemm_saturates


_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import torch
    from torch import nn
    from safetensors.torch import save_file
    from slimkit.core.cpu import cpu_features
    from slimkit.nn.int8_linear import DynamicInt8Linear, quantize_weight_int8
    from slimkit.methods.quantize.observers import Histogram, activation_qparams
    from slimkit.nn.static_modules import StaticInt8Conv2d, StaticInt8Linear

    warnings.simplefilter("ignore")
    # On a VNNI CPU torch's default "x86" engine sends convolutions to oneDNN; a CPU without
    # VNNI runs them in fbgemm, so fbgemm it is, on both paths of the test.
    torch.backends.quantized.engine = "fbgemm"
    torch.manual_seed(0)
    lin, conv = nn.Linear(64, 48), nn.Conv2d(6, 16, 3, stride=2, padding=1)
    x, img = torch.randn(150, 64), torch.randn(2, 6, 12, 12)

    def calibrated(module, layer, inp):
        h_in, h_out = Histogram(), Histogram()
        h_in.update(inp)
        h_out.update(layer(inp))
        module.set_weight(layer.weight, layer.bias)
        module.set_qparams(activation_qparams(h_in, "minmax"),
                           activation_qparams(h_out, "minmax"))
        return module

    out = {}
    with torch.inference_mode():
        for wmax in (64, 127):
            static = calibrated(StaticInt8Linear(64, 48, weight_max=wmax), lin, x)
            out[f"static_linear_{wmax}"] = static(x)
            static_conv = calibrated(
                StaticInt8Conv2d(6, 16, [3, 3], [2, 2], [1, 1], [1, 1], weight_max=wmax),
                conv, img)
            out[f"static_conv_{wmax}"] = static_conv(img)
            dyn = DynamicInt8Linear.from_linear(lin, int8_range={64: "portable", 127: "full"}[wmax])
            out[f"dynamic_{wmax}"] = dyn(x)
        # The raw kernel on full-range codes, bypassing slimkit's re-pack: what saturation does.
        q, scale = quantize_weight_int8(lin.weight, True, 127)
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                      torch.zeros(48, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qw, lin.bias)
        out["raw_full_dynamic"] = torch.ops.quantized.linear_dynamic(x, packed, False)
        qc, cscale = quantize_weight_int8(conv.weight.flatten(1), True, 127)
        qcw = torch._make_per_channel_quantized_tensor(qc.view_as(conv.weight), cscale.double(),
                                                       torch.zeros(16, dtype=torch.long), 0)
        packed_conv = torch.ops.quantized.conv2d_prepack(qcw, conv.bias, [2, 2], [1, 1],
                                                         [1, 1], 1)
        s_in, zp_in, s_out, zp_out = static_conv.qparams()
        xq = torch.quantize_per_tensor(img, s_in, zp_in, torch.quint8)
        out["raw_full_conv"] = torch.ops.quantized.conv2d(xq, packed_conv, s_out,
                                                          zp_out).dequantize()
        out["conv_weight"] = conv.weight
        out["conv_q"] = torch.tensor([s_in, s_out])
        out["float_linear"], out["float_conv"] = lin(x), conv(img)
        out["x"], out["weight"], out["img"] = x, lin.weight, img
        out["s_in"], out["s_out"] = static.input_scale, static.output_scale
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1] + "/out.safetensors")
    with open(sys.argv[1] + "/cpu.json", "w") as fh:
        json.dump(cpu_features().describe(), fh)
""")


def _run(tmp_path, name: str, env: dict[str, str]) -> tuple[dict, dict]:
    folder = tmp_path / name
    folder.mkdir()
    full_env = {k: v for k, v in os.environ.items() if k != FBGEMM_ISA_ENV} | env
    subprocess.run([sys.executable, "-c", _SCRIPT, str(folder)], check=True, env=full_env,
                   timeout=120)
    return load_file(folder / "out.safetensors"), json.loads((folder / "cpu.json").read_text())


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm())


@pytest.mark.skipif(not X86, reason="fbgemm's x86 int8 kernels")
def test_same_outputs_on_the_avx2_kernels_as_on_this_cpu(tmp_path) -> None:
    native, native_cpu = _run(tmp_path, "native", {})
    avx2, avx2_cpu = _run(tmp_path, "avx2", {FBGEMM_ISA_ENV: "AVX2"})
    assert avx2_cpu["fbgemm_saturates"]
    # Portable codes: the integer arithmetic cannot overflow, so both kernels agree exactly.
    for key in ("static_linear_64", "static_conv_64", "dynamic_64"):
        assert torch.equal(native[key], avx2[key]), key
    # The forced path really saturates on full-range codes (so this test can fail) ...
    float_linear, float_conv = native["float_linear"], native["float_conv"]
    assert _rel(avx2["raw_full_dynamic"], float_linear) > 0.05
    assert _rel(avx2["raw_full_conv"], float_conv) > 0.05
    # ... and slimkit re-packs full-range layers there: the error is that of rounding twice
    # (8-bit code, then 7-bit code), by the rounding-noise model of tests/int8_error_model.py.
    # It predicts these errors within a few percent; the norm of ~7000 independent errors
    # varies by ~1%, so 25% slack is loose yet far below a saturating kernel's 10x.
    def twice(w: torch.Tensor) -> torch.Tensor:
        amax = w.flatten(1).abs().amax(1)
        return ((amax / 127) ** 2 + (amax / PORTABLE_WEIGHT_MAX) ** 2).sqrt()

    x, w, cw = native["x"], native["weight"], native["conv_weight"]
    bound = predicted_linear_error(x, w, float(native["s_in"]), twice(w), float(native["s_out"]))
    assert float((avx2["static_linear_127"] - float_linear).norm()) <= 1.25 * bound
    s_conv_in, s_conv_out = native["conv_q"].tolist()
    conv_bound = predicted_conv_error(native["img"], cw, s_conv_in, twice(cw), s_conv_out,
                                      ([2, 2], [1, 1], [1, 1], 1))
    assert float((avx2["static_conv_127"] - float_conv).norm()) <= 1.25 * conv_bound
    # Dynamic: activations quantized per batch over [min(x, 0), max(x, 0)], output in fp32.
    s_dyn = float(x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
    dyn_bound = predicted_linear_error(x, w, s_dyn, twice(w), None)
    assert float((avx2["dynamic_127"] - float_linear).norm()) <= 1.25 * dyn_bound
    if native_cpu["fbgemm_saturates"]:  # this CPU is itself one without VNNI
        assert torch.equal(native["static_linear_127"], avx2["static_linear_127"])


def test_onnx_graphs_record_their_int8_range_and_sessions_warn(tmp_path, monkeypatch,
                                                               caplog) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from slimkit.export import runtime
    from slimkit.export.encoder_onnx import quantize_dynamic_int8
    from slimkit.export.onnx import export_onnx
    from slimkit.nn.int8_linear import DynamicInt8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 24)
    x = (torch.randn(4, 32),)
    full = export_onnx(DynamicInt8Linear.from_linear(linear, int8_range="full"), x,
                       tmp_path / "full.onnx")
    fp32 = export_onnx(linear, x, tmp_path / "fp32.onnx")
    ort_int8 = quantize_dynamic_int8(fp32, tmp_path / "ort.onnx")
    codes = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(ort_int8)).graph.initializer
             if t.data_type == onnx.TensorProto.INT8]
    assert codes and max(int(abs(c.astype("int32")).max()) for c in codes) <= PORTABLE_WEIGHT_MAX
    no_vnni = CpuFeatures("x86_64", True, False, False, False, False, None)
    monkeypatch.setattr(runtime, "cpu_features", lambda: no_vnni)
    with caplog.at_level("WARNING", logger="slimkit.export.runtime"):
        runtime.OrtSession(ort_int8)
        assert not [r for r in caplog.records if r.name == runtime.log.name]
        runtime.OrtSession(full)
    assert [r for r in caplog.records if r.name == runtime.log.name and "saturate" in r.message]
