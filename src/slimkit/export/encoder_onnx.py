"""ONNX export of a BERT sentence encoder that returns the pooled, L2-normalised embedding, with
optional ONNX Runtime dynamic INT8, a runner for texts, and the INT8 baselines users reach for
first (ONNX Runtime's and torch's quantize_dynamic) for benchmarks.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core.module_types import register_module_type
from ..nn.remapped_embedding import RemappedEmbedding
from .encoder import plain_encoder, remap_tokenizer

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ENCODER_JSON = "encoder.json"


@register_module_type
class PooledEncoder(nn.Module):
    """BertModel -> mean of the last hidden states over the mask -> L2 norm (sentence-BERT)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from ..models.pooling import mean_pool

        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


def _composes(model: nn.Module) -> bool:
    return any(isinstance(m, RemappedEmbedding) and m.compose for m in model.modules())


def export_encoder_onnx(model: nn.Module, path: str | Path, *, tokenizer: Any = None,
                        quantize: Literal["none", "dynamic_int8"] = "none",
                        max_length: int = 128, exact_vocab: bool = True) -> Path:
    """Write folder `path` with model.onnx (inputs input_ids, attention_mask [batch, sequence];
    output embedding [batch, hidden]), the tokenizer files and encoder.json; returns the .onnx.

    A pruned vocabulary (RemappedEmbedding) becomes a plain table and, with `tokenizer`, a
    remapped tokenizer whose ids are its rows; without one, or when dropped tokens are spelled
    from kept pieces, the graph keeps the id map and takes the original ids.
    `quantize="dynamic_int8"` applies ONNX Runtime's quantize_dynamic with
    per-channel INT8 weights (the word-embedding Gather included). `exact_vocab`: see
    slimkit.export.encoder.remap_tokenizer.
    """
    if quantize not in ("none", "dynamic_int8"):
        from ..core.errors import ConfigError

        raise ConfigError("quantize", quantize, "'none' or 'dynamic_int8'")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None and _composes(model):
        # The graph keeps the id map and the spelling of dropped tokens (a plain table would
        # need every original row) and takes the original tokenizer's ids.
        tokenizer.save_pretrained(str(folder))
        plain = copy.deepcopy(model).eval()
    elif tokenizer is not None:
        plain, kept = plain_encoder(model)
        if kept is not None:
            remap_tokenizer(tokenizer, kept, folder, exact=exact_vocab)
        else:
            tokenizer.save_pretrained(str(folder))
    else:
        plain = copy.deepcopy(model).eval()
    onnx_path = folder / ONNX_FILE
    _export_fp32(plain, onnx_path)
    if quantize == "dynamic_int8":
        quantize_dynamic_int8(onnx_path, onnx_path)
    (folder / ENCODER_JSON).write_text(json.dumps(
        {"max_length": max_length, "quantize": quantize,
         "hidden_size": int(plain.config.hidden_size)}, indent=2))
    log.info("exported encoder %s (%.1f MB)", onnx_path, onnx_path.stat().st_size / 1e6)
    return onnx_path


def _export_fp32(model: nn.Module, path: Path, opset: int = 17) -> None:
    """TorchScript export (dynamo=False; the dynamo exporter needs onnxscript) of an eager-
    attention copy: plain matmul + softmax traces the same on every transformers version."""
    work = copy.deepcopy(model).eval()
    switch = getattr(work, "set_attn_implementation", None)
    if callable(switch):
        switch("eager")
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2307, 102, 0]])
    ids = ids.clamp(max=int(work.config.vocab_size) - 1)
    mask = (ids != 0).long()
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}}
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings on every call
        torch.onnx.export(PooledEncoder(work), (ids, mask), str(tmp), dynamo=False,
                          opset_version=opset, input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes=axes,
                          do_constant_folding=True)
    os.replace(tmp, path)


def quantize_dynamic_int8(src: Path, dst: Path, int8_range: str = "portable") -> Path:
    """ONNX Runtime quantize_dynamic: INT8 weights per output channel (mean cosine 0.9925 on
    MiniLM vs 0.962 per tensor), activations quantized at run time. DefaultTensorType avoids
    "Unable to find data type" on graphs whose shapes ORT cannot infer. `int8_range`
    "portable" is ORT's reduce_range (7-bit weights): its u8 x s8 kernels on x86 CPUs without
    VNNI add pairs of products in 16 bits, which full-range weights can overflow."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx import record_int8_range

    if int8_range not in ("portable", "full"):
        from ..core.errors import ConfigError

        raise ConfigError("int8_range", int8_range, "'portable' or 'full'")
    tmp = dst.with_name(f".{dst.name}.q.tmp")
    quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8,
                     reduce_range=int8_range == "portable",
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    record_int8_range(tmp, 64 if int8_range == "portable" else 127)
    os.replace(tmp, dst)
    return dst


class OrtEncoder:
    """An exported encoder folder in ONNX Runtime: `enc(input_ids, attention_mask)` returns
    embeddings (so latency_interleaved can time it); `enc.embed(texts)` tokenizes first."""

    training = False

    def __init__(self, folder: str | Path, threads: int = 2, *, spin: bool = True) -> None:
        from .runtime import OrtSession

        folder = Path(folder)
        if folder.suffix == ".onnx":
            folder = folder.parent
        self.folder = folder
        # spin=False for sessions timed side by side (see OrtSession).
        self.session = OrtSession(folder / ONNX_FILE, threads=threads, spin=spin)
        meta = folder / ENCODER_JSON
        self.max_length = int(json.loads(meta.read_text())["max_length"]) if meta.is_file() \
            else 128
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from ..models.hf import _transformers

            self._tokenizer = _transformers().AutoTokenizer.from_pretrained(
                str(self.folder), local_files_only=True)
        return self._tokenizer

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.session(input_ids.long(), attention_mask.long())

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            out.append(self(batch["input_ids"], batch["attention_mask"]))
        return torch.cat(out) if out else torch.empty(0, 0)

    def eval(self) -> OrtEncoder:
        return self

    def train(self, mode: bool = True) -> OrtEncoder:
        if mode:
            raise ValueError("OrtEncoder: an ONNX Runtime session cannot train")
        return self

    def parameters(self) -> Any:
        return iter(())


def ort_dynamic_int8_baseline(model: nn.Module, folder: str | Path, *,
                              tokenizer: Any = None) -> tuple[Path, Path, float, float]:
    """What an ONNX Runtime user does with the fp32 model: export fp32 ONNX, then
    quantize_dynamic(per_channel=True). Returns (fp32 path, int8 path, fp32 MB, int8 MB)."""
    folder = Path(folder)
    fp32 = export_encoder_onnx(model, folder / "fp32", tokenizer=tokenizer)
    int8 = export_encoder_onnx(model, folder / "int8", tokenizer=tokenizer,
                               quantize="dynamic_int8")
    return fp32, int8, fp32.stat().st_size / 1e6, int8.stat().st_size / 1e6


def torch_dynamic_int8(model: nn.Module) -> tuple[nn.Module, float]:
    """torch.ao.quantization.quantize_dynamic of every nn.Linear with per-channel symmetric INT8
    weights (per_channel_dynamic_qconfig; activations quantized per tensor at run time) on a
    copy; the embedding tables stay fp32. Returns (model, MB of its torch.save state dict)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        quantized = quantize_dynamic(copy.deepcopy(model).eval(),
                                     {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    return quantized, buffer.tell() / 1e6
