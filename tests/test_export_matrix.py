"""Every quantization method's result exports to ONNX and matches torch in ONNX Runtime."""

from __future__ import annotations

import pytest

import slimkit

pytest.importorskip("onnxruntime")
from slimkit.export.onnx import check_parity, export_onnx  # noqa: E402

QUICK = {"epochs": 0.25, "batch_size": 256}
QUANTIZERS = {
    "quantize.dynamic_int8": slimkit.DynamicInt8(),
    "quantize.static_int8": slimkit.StaticInt8(calibration_batches=4),
    "quantize.embedding.int4": slimkit.EmbeddingQuant(bits=4),
    "quantize.embedding.int2": slimkit.EmbeddingQuant(bits=2),
    "quantize.embedding_budget": slimkit.EmbeddingBudget(budget=0.3),
    "quantize.qat": slimkit.QAT(**QUICK),
    "quantize.cluster": slimkit.Cluster(**QUICK),
    "quantize.weight_only.rtn4": slimkit.WeightOnly(bits=4, group_size=16),
    "quantize.weight_only.gptq3": slimkit.WeightOnly(bits=3, group_size=32, algorithm="gptq",
                                                     calibration_batches=2),
    "quantize.binary": slimkit.BinaryWeights(kind="ternary"),
    "quantize.mixed": slimkit.MixedPrecision(budget=0.3),
    "quantize.embedding_frequency": slimkit.EmbeddingFrequency(budget=0.15),
    # Table rebuilders (truncate.*), listed here because they too swap in layers ONNX must run.
    "truncate.embedding_hash": slimkit.EmbeddingHash(budget=0.3, min_rows=32),
    "truncate.embedding_qr": slimkit.EmbeddingQR(budget=0.4, min_rows=32),
    "truncate.embedding_tt": slimkit.EmbeddingTT(budget=0.3, min_rows=32),
    "truncate.embedding_mixed_dim": slimkit.EmbeddingMixedDim(budget=0.3, min_rows=32),
}


def test_every_packaged_quantizer_is_in_the_matrix() -> None:
    packaged = {getattr(slimkit.methods, n).method for n in slimkit.methods.__all__}
    covered = {c.method for c in QUANTIZERS.values()}
    assert {m for m in packaged if m.startswith("quantize.")} <= covered


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantized_model_exports_with_parity(name, make_model, tiny_task, tmp_path) -> None:
    model = make_model()
    slimkit.compress_(model, slimkit.Plan(steps=(QUANTIZERS[name],)),
                      slimkit.Context(task=tiny_task))
    path = export_onnx(model, tiny_task.example_inputs(8), tmp_path / "m.onnx")
    for batch in (1, 64):
        # fbgemm's activation quantization (7-bit with reduce_range) differs slightly from
        # ORT's 8-bit: compare the logits by cosine and a loose absolute bound.
        parity = check_parity(model, path, tiny_task.example_inputs(batch), min_cosine=0.999,
                              atol=0.05)
        assert parity.passed, (name, parity)
