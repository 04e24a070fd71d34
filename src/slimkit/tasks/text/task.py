"""The text-encoder task adapter: sentence embeddings (mean pooling over the mask, L2 norm) from
any BERT-like encoder, scored on the Lee benchmark and the clothing reviews (see data.py)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ...core.errors import SlimkitError
from ...core.task import Batch
from ...models.hf import first_tensor
from ...models.minilm import mean_pool
from ..batching import calibration_order, epoch_order
from . import metrics
from .data import (
    EVAL_POOL,
    SPLIT_SEED,
    clothing_reviews,
    domain_corpus,
    lee_documents,
    lee_similarity,
    movie_polarity,
    review_departments,
    review_split,
    wiki_general,
    wiki_heldout,
)
from .defaults import ENCODER_SPACE_YAML, MINILM_PLAN_YAML

log = logging.getLogger(__name__)

MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length: the Lee figures of DATA.md need it
LATENCY_LENGTH = 128  # example_inputs are padded to this, as in issue 5's latency figures
BUCKET = 50  # train batches are length-sorted within buckets of BUCKET batches


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> Batch:
    """{"input_ids", "attention_mask"} LongTensors padded on the right to the longest sequence
    (dynamic padding) or to `length`."""
    width = length or max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def hidden_states(output: Any) -> torch.Tensor:
    """[batch, seq, dim] from a model output: `last_hidden_state` when present (a BertModel's
    output also holds a pooler output), else the main tensor."""
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, torch.Tensor) else first_tensor(output)


def embed_ids(model: nn.Module, ids: Sequence[Sequence[int]], pad_id: int,
              batch_size: int) -> torch.Tensor:
    """Sentence embeddings [len(ids), dim] in input order, float32 on the CPU: texts are run
    longest first in batches padded to their longest (little padding, and the first batch
    shows an out-of-memory early), in eval mode under inference_mode; the mode is restored."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = pad_batch([ids[i] for i in order[start:start + batch_size]], pad_id)
                mask = batch["attention_mask"].to(device)
                hidden = hidden_states(model(batch["input_ids"].to(device), mask))
                if hidden.dim() == 2:  # already pooled (an exported encoder's embedding)
                    chunks.append(torch.nn.functional.normalize(hidden.float(), dim=-1).cpu())
                else:
                    chunks.append(mean_pool(hidden.float(), mask).cpu())
    finally:
        model.train(was_training)
    emb = torch.cat(chunks)
    out = torch.empty_like(emb)
    out[torch.tensor(order)] = emb
    return out


class TextEncoderTask:
    """Unsupervised sentence encoding; batches are {"input_ids", "attention_mask"} padded to the
    longest text in the batch; the model's forward(input_ids, attention_mask) must return a
    tensor [batch, seq, dim] or an object with `last_hidden_state`. No labels: compress with
    distillation steps. Metrics: Lee Spearman (primary) and Pearson, Lee nDCG@10, linear-probe
    AUC on the reviews' Recommended label and, after `set_reference`, agreement with a
    reference model ("cosine" when the widths agree, "top10_overlap") on the review corpus.
    Beside them, checks on what compression never sees: a topic probe (the reviews'
    department, "topic_acc"), a sentiment probe on movie-review sentences, out of the review
    domain (5-fold cross-validated accuracy, "polarity_acc"), and held-out Wikipedia: their
    titles as short queries for their own paragraphs ("wiki_title_p1", "wiki_title_r10") and,
    with a reference, agreement on the paragraphs ("wiki_cosine", "wiki_top10_overlap")."""

    name = "text-encoder"
    primary_metric = "lee_spearman"
    higher_is_better = True

    def __init__(self, *, tokenizer: Any = None, max_length: int = MAX_LENGTH,
                 latency_length: int = LATENCY_LENGTH, corpus_size: int = EVAL_POOL,
                 probe_train: int | None = None, probe_test: int | None = None,
                 queries: int = 2000, train_size: int | None = None,
                 general_text: bool = False,
                 eval_batch: int = 64) -> None:
        if tokenizer is None:
            from ...models import minilm_tokenizer

            tokenizer = minilm_tokenizer()
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.max_length, self.latency_length = max_length, latency_length
        self.eval_batch = eval_batch
        self.texts, self.labels = clothing_reviews()
        self.split = review_split()
        if not 1 <= corpus_size <= len(self.split.corpus):
            raise SlimkitError(f"corpus_size: expected 1..{len(self.split.corpus)}, "
                               f"got {corpus_size!r}")
        self.corpus = self.split.corpus[:corpus_size]
        self.probes = {k: (tr[:probe_train], te[:probe_test])
                       for k, (tr, te) in self.split.probes.items()}
        self.queries = torch.arange(min(queries, corpus_size))
        # general_text adds the even Wikipedia articles' paragraphs to the training text, so
        # distillation also sees text outside the review domain (evaluation reads the odd ones).
        self.train_texts = domain_corpus(train_size) + (wiki_general() if general_text else [])
        self._ids: dict[int, list[int]] = {}  # review row -> token ids (tokenized once)
        self._lee = self._tokenize(lee_documents())
        self.departments = review_departments()[1]
        polarity, self.polarity_labels = movie_polarity()  # folds i % 5: 20 of each class
        self._polarity = self._tokenize(polarity)
        titles, paragraphs, self.wiki_owner = wiki_heldout()
        self._wiki_titles, self._wiki = self._tokenize(titles), self._tokenize(paragraphs)
        self._train_ids: list[list[int]] | None = None
        self.reference: torch.Tensor | None = None  # corpus embeddings of the reference model
        self.reference_wiki: torch.Tensor | None = None  # and its held-out Wikipedia paragraphs
        self.spec: dict[str, Any] | None = None  # set by tasks.registry.make_task

    # -- tokens -------------------------------------------------------------------------------
    def _tokenize(self, texts: Sequence[str], length: int | None = None) -> list[list[int]]:
        out = self.tokenizer(list(texts), truncation=True, max_length=length or self.max_length)
        return [list(ids) for ids in out["input_ids"]]

    def _review_ids(self, rows: torch.Tensor) -> list[list[int]]:
        missing = [r for r in dict.fromkeys(rows.tolist()) if r not in self._ids]
        if missing:
            self._ids.update(zip(missing, self._tokenize([self.texts[r] for r in missing]),
                                 strict=True))
        return [self._ids[r] for r in rows.tolist()]

    def _train(self) -> list[list[int]]:
        if self._train_ids is None:
            self._train_ids = self._tokenize(self.train_texts)
        return self._train_ids

    # -- batches ------------------------------------------------------------------------------
    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[Batch]:
        """One shuffled epoch of the training text. Within buckets of BUCKET batches the texts
        are sorted by length (little padding); the batches are then visited in shuffled order.
        The last batch of the last bucket may be short."""
        ids = self._train()
        batches = []
        for bucket in torch.cat(list(epoch_order(len(ids), batch_size, seed))).split(
                batch_size * BUCKET):
            rows = sorted(bucket.tolist(), key=lambda r: len(ids[r]))
            batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + 1))
        for i in order.tolist():
            yield pad_batch([ids[r] for r in batches[i]], self.pad_id)

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.train_texts) / batch_size)

    def calibration_batches(self, n: int, batch_size: int = 256) -> list[Batch]:
        """`n` fixed batches of training texts (a fixed shuffle, wrapping round if needed)."""
        ids = self._train()
        return [pad_batch([ids[r] for r in chunk.tolist()], self.pad_id)
                for chunk in calibration_order(len(ids), n, batch_size)]

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return batch["input_ids"], batch["attention_mask"]

    def loss(self, outputs: Any, batch: Batch) -> torch.Tensor:
        raise SlimkitError("text-encoder: no labels; use a distillation step")

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Training reviews (tiled when needed) truncated and padded to `latency_length`."""
        texts = [self.train_texts[i % len(self.train_texts)] for i in range(batch_size)]
        ids = self._tokenize(texts, self.latency_length)
        return self.inputs(pad_batch(ids, self.pad_id, length=self.latency_length))

    # -- embeddings and metrics ---------------------------------------------------------------
    def embed(self, model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings [len(texts), dim] (float32, CPU)."""
        return embed_ids(model, self._tokenize(texts), self.pad_id, self.eval_batch)

    def _embed_rows(self, model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return embed_ids(model, self._review_ids(rows), self.pad_id, self.eval_batch)

    def set_reference(self, model: nn.Module | None) -> None:
        """Embed the corpus with `model` (say the uncompressed encoder) once; evaluate then adds
        agreement with it. None clears it."""
        self.reference = None if model is None else self._embed_rows(model, self.corpus)
        self.reference_wiki = None if model is None else embed_ids(
            model, self._wiki, self.pad_id, self.eval_batch)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Lee metrics (the benchmark has no held-out part: both splits use all 1225 pairs),
        probe AUC on the split's own reviews, and on "test" with a reference set, agreement."""
        if split not in self.probes:
            raise SlimkitError(f"split: expected one of {sorted(self.probes)}, got {split!r}")
        start = time.perf_counter()
        lee = embed_ids(model, self._lee, self.pad_id, self.eval_batch)
        result = metrics.lee_scores(lee, lee_similarity())
        tr, te = self.probes[split]
        agree = split == "test" and self.reference is not None
        # Each review is embedded once: the probe rows are looked up in the corpus if there.
        rows = torch.cat([self.corpus, tr, te]) if agree else torch.cat([tr, te])
        unique, inverse = torch.unique(rows, return_inverse=True)
        emb = self._embed_rows(model, unique)[inverse]
        n = len(rows) - len(tr) - len(te)
        result["probe_auc"] = metrics.probe_auc(emb[n:n + len(tr)], self.labels[tr],
                                                emb[n + len(tr):], self.labels[te])
        dept_tr, dept_te = self.departments[tr] >= 0, self.departments[te] >= 0
        result["topic_acc"] = metrics.probe_accuracy(
            emb[n:n + len(tr)][dept_tr], self.departments[tr][dept_tr],
            emb[n + len(tr):][dept_te], self.departments[te][dept_te])
        polarity = embed_ids(model, self._polarity, self.pad_id, self.eval_batch)
        result["polarity_acc"] = metrics.cv_probe_accuracy(polarity, self.polarity_labels)
        result.update(self._wiki_checks(model, split))
        if agree and (ref := self.reference) is not None:
            if ref.shape[1] == emb.shape[1]:  # a narrower student has neighbours, no cosine
                result["cosine"] = metrics.mean_cosine(emb[:n], ref)
            result["top10_overlap"] = metrics.neighbour_overlap(emb[:n], ref, self.queries)
        log.info("text-encoder evaluate (%s, %d reviews): %.1f s", split, len(unique),
                 time.perf_counter() - start)
        return result

    def general_text_ids(self) -> list[list[int]]:
        """Word pieces of the held-out Wikipedia paragraphs, special tokens left out: general
        English that no compression step reads (truncate.vocab reports how it spells them)."""
        special = set(self.tokenizer.all_special_ids)
        return [[i for i in ids if i not in special] for ids in self._wiki]

    def _wiki_checks(self, model: nn.Module, split: str) -> dict[str, float]:
        wiki = embed_ids(model, self._wiki, self.pad_id, self.eval_batch)
        titles = embed_ids(model, self._wiki_titles, self.pad_id, self.eval_batch)
        found = metrics.title_retrieval(titles, wiki, self.wiki_owner)
        out = {"wiki_title_p1": found["p1"], "wiki_title_r10": found["r10"]}
        if split == "test" and (ref := self.reference_wiki) is not None:
            if ref.shape[1] == wiki.shape[1]:
                out["wiki_cosine"] = metrics.mean_cosine(wiki, ref)
            out["wiki_top10_overlap"] = metrics.neighbour_overlap(
                wiki, ref, torch.arange(len(wiki)))
        return out

    model_kinds = ("minilm", "tiny-bert")

    def teacher_recipe(self, kind: str | None) -> None:
        """None: the encoder is pretrained (MiniLM) and compressed as built; there are no
        labels to train one on."""
        del kind

    def default_plan(self) -> str:
        return MINILM_PLAN_YAML

    def search_space(self) -> str:
        return ENCODER_SPACE_YAML

    def build_model(self, kind: str = "minilm", **kwargs: Any) -> nn.Module:
        """"minilm": the real all-MiniLM-L6-v2; "tiny-bert": a small random BertModel with the
        tokenizer's vocabulary (kwargs override its config), for tests."""
        from ...models import load_minilm, tiny_model

        if kind == "minilm":
            return load_minilm(**kwargs)
        if kind == "tiny-bert":
            config = {"vocab_size": len(self.tokenizer), "hidden_size": 32,
                      "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 64, "max_position_embeddings": 512,
                      "pad_token_id": self.pad_id, **kwargs}
            return tiny_model("bert", **config)
        raise SlimkitError(f"kind: expected one of ['minilm', 'tiny-bert'], got {kind!r}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lee_documents": len(self._lee),
                "review_split": {"seed": SPLIT_SEED, "eval_pool": len(self.split.corpus)},
                "probe_rows": {k: [len(tr), len(te)] for k, (tr, te) in self.probes.items()},
                "corpus": len(self.corpus), "queries": len(self.queries),
                "train_texts": len(self.train_texts), "max_length": self.max_length,
                "latency_length": self.latency_length, "reference": self.reference is not None,
                "wiki_heldout": {"articles": len(self._wiki_titles),
                                 "paragraphs": len(self._wiki)}}
