"""Deploying a StaticEncoder (distill.static): as a sentence-transformers folder, a
StaticEmbedding module (its table and tokenizer.json in the folder root, as sentence-transformers
saves one) and Normalize, which `sentence_transformers.SentenceTransformer(path)` loads offline;
and as ONNX (Gather + masked sum) for ONNX Runtime.

StaticEmbedding tokenizes without special tokens and averages the rows (nn.EmbeddingBag "mean");
our encoder sums rows over [CLS] ... [SEP] with zero rows for every special token. Both point the
same way, so after Normalize the vectors agree. The tokenizer truncates to `max_length` - 2
tokens, which is what the task's `max_length` (counting [CLS] and [SEP]) leaves for the text.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..core.errors import SlimkitError
from ..nn.static_encoder import StaticEncoder
from .artifact import swap_dir

log = logging.getLogger(__name__)

_NORMALIZE = "1_Normalize"
# The spellings every sentence-transformers release since StaticEmbedding (3.2) resolves.
_MODULES = [{"idx": 0, "name": "0", "path": "",
             "type": "sentence_transformers.models.StaticEmbedding"},
            {"idx": 1, "name": "1", "path": _NORMALIZE,
             "type": "sentence_transformers.models.Normalize"}]


def static_table(model: nn.Module) -> torch.Tensor:
    """The fp32 [vocab, dim] table of a StaticEncoder; a quantized bag is de-quantized."""
    if not isinstance(model, StaticEncoder):
        raise SlimkitError(f"static export: expected a StaticEncoder (distill.static), got "
                           f"{type(model).__name__}")
    bag = model.bag
    if isinstance(bag, nn.EmbeddingBag):
        table = bag.weight.detach().clone()
    elif callable(dequantize := getattr(bag, "dequantized_weight", None)):
        table = dequantize().detach().float()
    else:
        raise SlimkitError(f"static export: cannot read a table from a {type(bag).__name__}")
    table[model.pad_id] = 0.0  # skipped by our bags; StaticEmbedding has no padding row
    return table.contiguous()


def write_static_embedding_folder(model: nn.Module, tokenizer: Any, path: str | Path, *,
                                  max_length: int | None = 256,
                                  overwrite: bool = False) -> Path:
    """Write `model` (a StaticEncoder) and `tokenizer` (a fast transformers tokenizer, the one
    the model was distilled with) as a sentence-transformers folder at `path`, atomically (a
    temp dir renamed into place). An existing non-empty `path` is refused unless `overwrite`.
    `max_length` None: no truncation."""
    table = static_table(model)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SlimkitError("static export: the tokenizer must be a fast (Rust) tokenizer; "
                           "StaticEmbedding reads tokenizer.json")
    if len(tokenizer) != table.shape[0]:
        raise SlimkitError(f"static export: the tokenizer has {len(tokenizer)} ids but the "
                           f"table {table.shape[0]} rows")
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise SlimkitError(f"static export: {str(path)!r} exists and is not empty; pass "
                           "overwrite=True to replace it")
    spec = json.loads(backend.to_str())
    spec["padding"] = None  # StaticEmbedding turns padding off itself; keep the file honest
    spec["truncation"] = None if max_length is None else {
        "direction": "Right", "max_length": max(1, max_length - 2), "strategy": "LongestFirst",
        "stride": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        safetensors.torch.save_file({"embedding.weight": table}, str(tmp / "model.safetensors"))
        (tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False),
                                            encoding="utf-8")
        (tmp / "modules.json").write_text(json.dumps(_MODULES, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
             "similarity_fn_name": "cosine"}, indent=2))
        (tmp / _NORMALIZE).mkdir()
        (tmp / _NORMALIZE / "config.json").write_text(json.dumps(
            {"module_input_name": "sentence_embedding",
             "module_output_name": "sentence_embedding"}, indent=2))
        _make_readable(tmp)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved static sentence-transformers folder %s", path)
    return path


def _make_readable(folder: Path) -> None:
    # mkdtemp creates 0700; a serving process running as another user must read the folder.
    umask = os.umask(0)
    os.umask(umask)
    for item in [folder, *folder.rglob("*")]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def export_static_onnx(model: nn.Module, path: str | Path, *, opset: int = 17) -> Path:
    """Write `model` (a StaticEncoder, fp32 or with a quantize.embedding table) to the ONNX file
    `path`, atomically: inputs input_ids, attention_mask [batch, sequence] (both axes dynamic),
    output embedding [batch, dim], the sum of rows before L2 normalisation (as the torch model)."""
    if not isinstance(model, StaticEncoder):
        raise SlimkitError(f"static export: expected a StaticEncoder (distill.static), got "
                           f"{type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2307, 102, 0]]).clamp(
        max=model.vocab_size - 1)
    mask = (ids != 0).long()
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}}
    tmp = path.with_name(f".{path.name}.tmp")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings on every call
            torch.onnx.export(model, (ids, mask), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"],
                              output_names=["embedding"], dynamic_axes=axes,
                              do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        tmp.unlink(missing_ok=True)
    return path
