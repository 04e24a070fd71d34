"""ONNX export: ORT matches torch for float and every slimkit-quantized module, int8 patterns reach
ORT's int8 kernels, batch size stays dynamic, and export never touches the user's model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.quantize.static_int8 import StaticInt8
from slimkit.nn.int8_linear import DynamicInt8Linear
from slimkit.nn.quantized_embedding import QuantizedEmbedding

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from slimkit.export.onnx import check_parity, export_onnx  # noqa: E402
from slimkit.export.runtime import OrtSession  # noqa: E402


def _ops(path, optimized: bool = False) -> set[str]:
    if optimized:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path) + ".opt"
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        path = options.optimized_model_filepath
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_float_ctr_model_parity_and_dynamic_batch(make_model, tiny_task, model_kind,
                                                  tmp_path) -> None:
    model = make_model(model_kind)
    path = export_onnx(model, tiny_task.example_inputs(8), tmp_path / "m.onnx")
    for batch in (1, 100):
        parity = check_parity(model, path, tiny_task.example_inputs(batch), atol=1e-5)
        assert parity.passed and parity.max_abs_diff < 1e-5


def test_dynamic_int8_linear_exports_to_ort_int8_matmul(tmp_path) -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(32, 24), nn.Linear(24, 8)
    model = nn.Sequential(DynamicInt8Linear.from_linear(first, relu=True),
                          DynamicInt8Linear.from_linear(second)).eval()
    x = torch.randn(16, 32)
    path = export_onnx(model, (x,), tmp_path / "d.onnx")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(path)
    assert "DynamicQuantizeMatMul" in _ops(path, optimized=True)
    # Portable codes: both runtimes multiply 8-bit activations by the same 7-bit codes without
    # overflow on any CPU. They may pick an activation zero point one level apart, so an output
    # may move by one activation step times the row's |w|, through both layers.
    x = torch.randn(5, 32)
    w1, w2 = (m.dequantized_weight() for m in model)
    with torch.no_grad():
        h = torch.relu(first(x))
    step1 = float(x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
    step2 = float(h.max()) / 255
    bound = float((step1 * w1.abs().sum(1)).max() * w2.abs().sum(1).max()
                  + step2 * w2.abs().sum(1).max())
    parity = check_parity(model, path, (x,), min_cosine=0.999)
    assert parity.passed and parity.max_abs_diff <= bound
    assert onnx.load(str(path)).metadata_props[0].value == "64"


@pytest.mark.parametrize(("bits", "mode"), [(8, "none"), (4, "none"), (8, "mean"), (4, "sum"),
                                            (4, "mean")])
def test_quantized_embedding_exports_packed_gather(bits: int, mode: str, tmp_path) -> None:
    torch.manual_seed(0)
    table = nn.Embedding(40, 10, padding_idx=0) if mode == "none" else \
        nn.EmbeddingBag(40, 10, mode=mode, padding_idx=0)
    q = QuantizedEmbedding.from_float(table, bits)
    index = torch.randint(0, 40, (6, 3))
    index[1] = 0  # an all-padding bag
    path = export_onnx(q, (index,), tmp_path / "e.onnx")
    graph = onnx.load(str(path)).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant"
                                         for a in n.attribute if a.name == "value"]
    codes = [t for t in tensors if t.data_type == onnx.TensorProto.UINT8]
    # One uint8 code per value in the ONNX file: ORT gathers whole bytes fast, not nibbles.
    assert codes and list(codes[0].dims) == [40, 10]
    assert not [t for t in tensors if t.data_type == onnx.TensorProto.FLOAT
                and list(t.dims) == [40, 10]]  # no fp32 copy of the table
    parity = check_parity(q, path, (torch.randint(0, 40, (9, 3)),), atol=1e-6)
    assert parity.passed


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_static_int8_exports_qdq_run_by_ort_int8_gemm(make_model, tiny_task, backend: str,
                                                      tmp_path) -> None:
    model = make_model()
    config = StaticInt8(backend=backend, calibration_batches=4)
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=tiny_task))
    path = export_onnx(model, tiny_task.example_inputs(8), tmp_path / "s.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Gemm"} <= _ops(path)
    assert "QGemm" in _ops(path, optimized=True)
    x = tiny_task.example_inputs(200)
    if backend == "onnxruntime":  # the torch emulation is ORT's arithmetic
        assert check_parity(model, path, x, atol=1e-5).passed
    else:  # fbgemm's requantization may round a value to the neighbouring level
        parity = check_parity(model, path, x, min_cosine=0.9999)
        assert parity.passed and parity.max_abs_diff < 0.02


def _auc_flip_bound(labels: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """How far AUC can move when scores move from `a` to `b`: only (positive, negative) pairs
    whose gap is within the largest change can swap order (ties count half, so count them)."""
    d = float((a - b).abs().max())
    pos, neg = a[labels > 0.5].double(), a[labels <= 0.5].double()
    close = ((pos[:, None] - neg[None, :]).abs() <= 2 * d).sum()
    return float(close) / (len(pos) * len(neg))


def test_ort_session_evaluates_like_the_model(make_model, tiny_task, tmp_path) -> None:
    model = make_model()
    session = OrtSession(export_onnx(model, tiny_task.example_inputs(4), tmp_path / "m.onnx"))
    torch_scores, ort_scores = tiny_task.predict(model, "test"), tiny_task.predict(session, "test")
    # fp32 kernels differ by CPU in summation order: scores agree to fp32 rounding, and AUC
    # within what pairs that close can change.
    torch.testing.assert_close(ort_scores, torch_scores, atol=1e-5, rtol=1e-4)
    bound = _auc_flip_bound(tiny_task.split("test")["label"], torch_scores, ort_scores)
    assert abs(tiny_task.evaluate(session)["auc"] - tiny_task.evaluate(model)["auc"]) <= bound
    with pytest.raises(ValueError, match="expected 2 inputs"):
        session(tiny_task.example_inputs(4)[0])


def test_export_never_modifies_the_users_model(make_model, tiny_task, tmp_path) -> None:
    model = make_model()
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.EmbeddingQuant(bits=4),
                                                 slimkit.DynamicInt8())),
                      slimkit.Context(task=tiny_task))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(n, type(m)) for n, m in model.named_modules()]
    edits = list(slimkit.core.edit_log(model))
    export_onnx(model, tiny_task.example_inputs(8), tmp_path / "m.onnx")
    assert model.training
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert isinstance(model.bag_linear, nn.EmbeddingBag)  # not swapped for MeanBag
    assert slimkit.core.edit_log(model) == edits
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


class ImageTask:
    def calibration_batches(self, n: int, batch_size: int = 256) -> list[dict]:
        return [{"x": torch.randn(8, 3, 12, 12)} for _ in range(n)]

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return (batch["x"],)


def test_static_int8_conv_exports_to_qlinearconv(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, stride=2, padding=1)).eval()
    slimkit.compress_(model, slimkit.Plan(steps=(StaticInt8(calibration_batches=2,
                                                            backend="onnxruntime"),)),
                      slimkit.Context(task=ImageTask()))
    x = torch.randn(3, 3, 12, 12)
    path = export_onnx(model, (x,), tmp_path / "c.onnx")
    assert "QLinearConv" in _ops(path, optimized=True)
    assert check_parity(model, path, (x,), atol=1e-5).passed
