"""Deploying a compressed BERT sentence encoder: back to a plain transformers BertModel (a pruned
vocabulary becomes a smaller table plus a tokenizer whose ids are its rows), saved as a folder
that sentence-transformers loads. ONNX export lives in encoder_onnx.py.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import SlimkitError
from ..nn.remapped_embedding import RemappedEmbedding
from .artifact import swap_dir

log = logging.getLogger(__name__)

WORD_EMBEDDINGS = "embeddings.word_embeddings"
# Files of a sentence-transformers folder that describe the pipeline after the transformer.
_POOLING = "1_Pooling"
_NORMALIZE = "2_Normalize"


def plain_encoder(model: nn.Module) -> tuple[nn.Module, torch.Tensor | None]:
    """A deep copy of a (compressed) BertModel rebuilt as a stock BertModel whose config
    describes its tensors, and the kept original token ids (row order) if the vocabulary was
    pruned to them, else None (a vocabulary that spells dropped tokens from kept pieces comes
    back whole). Raises SlimkitError for what a BertConfig cannot express."""
    from ..models.hf import _transformers, attach_spec

    if type(model).__name__ != "BertModel":
        raise SlimkitError(f"encoder export: expected a transformers BertModel, got "
                           f"{type(model).__name__}")
    work = copy.deepcopy(model).eval()
    table = work.get_submodule(WORD_EMBEDDINGS)
    kept: torch.Tensor | None = None
    if isinstance(table, RemappedEmbedding) and table.compose:
        # Dropped tokens spelled from kept pieces have no row of their own: a BertModel holds
        # every original id's row (exact, with the original tokenizer, but not smaller).
        plain = nn.Embedding(table.vocab_size, table.embedding_dim)
        with torch.no_grad():
            plain.weight.copy_(table.full_table())
        work.embeddings.word_embeddings = plain
    elif isinstance(table, RemappedEmbedding):
        kept = table.kept_ids.clone()
        plain = nn.Embedding(len(kept), table.embedding_dim, padding_idx=table.padding_idx)
        with torch.no_grad():
            plain.weight.copy_(table.weight)
        work.embeddings.word_embeddings = plain
    elif not isinstance(table, nn.Embedding):
        raise SlimkitError(f"encoder export: {WORD_EMBEDDINGS} is a {type(table).__name__}; "
                           "a BertConfig describes only an nn.Embedding there")
    config = copy.deepcopy(work.config)
    _describe(work, config)
    cls = _transformers().BertModel
    with torch.random.fork_rng(devices=[]):  # initialisation is overwritten; keep the RNG as is
        rebuilt = cls._from_config(config, attn_implementation=config._attn_implementation)
    try:
        rebuilt.load_state_dict(work.state_dict(), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SlimkitError(f"encoder export: the model's tensors do not fit a BertModel built "
                           f"from its config ({first}); a quantized or otherwise rewritten "
                           "module cannot be saved as a plain BertModel") from None
    return attach_spec(rebuilt.eval()), kept


def _describe(model: nn.Module, config: Any) -> None:
    """Set the config sizes from the actual tensors (a narrower hidden width, as truncate.hidden
    leaves, becomes hidden_size and num_attention_heads); refuse per-layer differences."""
    layers = list(model.encoder.layer)
    hidden = int(model.embeddings.word_embeddings.embedding_dim)
    norm = tuple(model.embeddings.LayerNorm.normalized_shape)
    inputs = {int(layer.attention.self.query.in_features) for layer in layers}
    if norm != (hidden,) or inputs - {hidden}:
        raise SlimkitError(f"encoder export: word embeddings are {hidden} wide but the "
                           f"embedding LayerNorm is {list(norm)} and the layers read "
                           f"{sorted(inputs)}; a BertConfig cannot express a factorised or "
                           "narrower embedding")
    heads = {int(layer.attention.self.query.out_features) for layer in layers}
    if heads - {hidden}:
        raise SlimkitError(f"encoder export: attention projections of width {sorted(heads)} "
                           f"in a {hidden}-wide model (pruned attention heads); a BertConfig "
                           "describes only full-width attention with the same heads per layer")
    head_sizes = {int(layer.attention.self.attention_head_size) for layer in layers}
    if len(head_sizes) > 1 or any(hidden % size for size in head_sizes):
        raise SlimkitError(f"encoder export: attention head sizes {sorted(head_sizes)} in a "
                           f"{hidden}-wide model; a BertConfig has one head size dividing "
                           "hidden_size")
    widths = [int(layer.intermediate.dense.out_features) for layer in layers]
    if len(set(widths)) > 1:
        raise SlimkitError(f"encoder export: FFN widths differ per layer ({widths}); a "
                           "BertConfig has one intermediate_size for all layers")
    if head_sizes:
        config.num_attention_heads = hidden // head_sizes.pop()
    elif hidden % int(config.num_attention_heads):
        config.num_attention_heads = 1  # no layer: any count that divides the width
    config.hidden_size = hidden
    config.num_hidden_layers = len(layers)
    config.vocab_size = int(model.embeddings.word_embeddings.num_embeddings)
    if widths:
        config.intermediate_size = widths[0]
    pad = model.embeddings.word_embeddings.padding_idx
    config.pad_token_id = pad if pad is not None else config.pad_token_id


def remap_tokenizer(tokenizer: Any, kept_ids: torch.Tensor, folder: Path, *,
                    exact: bool = True) -> Any:
    """Write to `folder` a tokenizer whose ids are rows of the pruned table (vocab.txt lists the
    kept tokens in row order; tokenizer.json is regenerated) and return it loaded from there.

    exact=True keeps every original word piece in tokenizer.json, a dropped piece mapping to the
    [UNK] row: ids equal remap[original ids] for any text, so the deployed model computes what
    was evaluated. exact=False keeps only the kept pieces: the same ids for text whose pieces
    were all kept (WordPiece takes the longest match, and a subset has no longer one), but a
    word with a dropped piece becomes a single [UNK], which on out-of-domain text changes the
    embeddings a lot (Lee news vs a review vocabulary: cosine 0.68 to the evaluated model).
    """
    from ..models.hf import _transformers

    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in kept_ids])
    rows = {tok: row for row, tok in enumerate(tokens)}
    missing = [t for t in [*tokenizer.all_special_tokens, tokenizer.unk_token] if t not in rows]
    if missing:
        raise SlimkitError(f"encoder export: the pruned vocabulary dropped the special tokens "
                           f"{missing}; keep them (truncate.vocab keeps the tokenizer's)")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "WordPiece":
        raise SlimkitError(f"encoder export: vocabulary remapping supports WordPiece "
                           f"tokenizers, got {spec['model'].get('type')!r}")
    unk_row = rows[tokenizer.unk_token]
    # Many pieces to one row is fine for encoding; decoding finds [UNK] first (an added token).
    spec["model"]["vocab"] = ({t: rows.get(t, unk_row) for t in spec["model"]["vocab"]}
                              if exact else rows)
    spec["added_tokens"] = [{**t, "id": rows[t["content"]]} for t in spec.get("added_tokens", [])
                            if t["content"] in rows]
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [rows[t] for t in special["tokens"]]
    # The packaged tokenizer.json pads and truncates to 128 by itself; callers choose instead.
    spec["padding"], spec["truncation"] = None, None
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    remapped = _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if remapped.convert_tokens_to_ids(tokens) != list(range(len(tokens))):
        raise SlimkitError("encoder export: the remapped tokenizer does not give the kept "
                           "tokens their rows")
    return remapped


def save_sentence_transformers(model: nn.Module, tokenizer: Any, path: str | Path, *,
                               max_seq_length: int = 256, exact_vocab: bool = True) -> Path:
    """Write `model` (a BertModel, possibly truncated and vocabulary-pruned) with mean pooling
    and L2 normalisation (the all-MiniLM-L6-v2 recipe, Reimers and Gurevych 2019) as a folder
    that `sentence_transformers.SentenceTransformer(path)` loads; written atomically.
    `exact_vocab`: see remap_tokenizer (used when the vocabulary was pruned)."""
    plain, kept = plain_encoder(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if kept is not None:
            remap_tokenizer(tokenizer, kept, tmp, exact=exact_vocab)
        else:
            tokenizer.save_pretrained(str(tmp))
        plain.save_pretrained(str(tmp), safe_serialization=True)
        write_st_config(tmp, int(plain.config.hidden_size), max_seq_length)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved sentence-transformers folder %s", path)
    return path


def write_st_config(folder: Path, hidden: int, max_seq_length: int) -> None:
    """modules.json and the per-module configs: Transformer -> mean Pooling -> Normalize."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": _POOLING,
                "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": _NORMALIZE,
                "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))
    (folder / _POOLING).mkdir(exist_ok=True)
    (folder / _POOLING / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / _NORMALIZE).mkdir(exist_ok=True)
