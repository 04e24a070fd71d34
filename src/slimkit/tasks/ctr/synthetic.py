"""Synthetic CTR data at any scale: Zipf-distributed ids, labels from a fixed hidden model.

Stands in for Criteo/Avazu-sized tables (no such data set ships offline). Hidden embeddings are
a hash of (seed, field, id), so they never need a dense table of `cardinality` rows.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import CTRData, time_split

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (Steele et al.'s SplitMix64 finalizer); uint64 math wraps."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def _hashed_normal(ids: np.ndarray, key: int, dim: int) -> np.ndarray:
    """Deterministic pseudo-random [len(ids), dim] values with mean 0 and variance 1 per id."""
    base = ids.astype(np.uint64)[:, None] * np.uint64(dim) + np.arange(dim, dtype=np.uint64)
    h = _splitmix64(base ^ _splitmix64(np.full(1, key, dtype=np.uint64)))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    return ((u - 0.5) * np.sqrt(12.0)).astype(np.float32)  # uniform, variance 1


def zipf_ranks(rng: np.random.Generator, n: int, cardinality: int, a: float) -> np.ndarray:
    """Ranks in [0, cardinality) with P(rank k) ~ (k + 1) ** -a, via a truncated inverse CDF.

    Inverts the continuous power law on [1, cardinality + 1) and floors, so it costs O(n) for any
    cardinality (no per-rank probability table) and stays close to the discrete Zipf law.
    """
    u = rng.random(n)
    top = float(cardinality + 1)
    if abs(a - 1.0) < 1e-9:
        x = top ** u
    else:
        x = (1.0 - u * (1.0 - top ** (1.0 - a))) ** (1.0 / (1.0 - a))
    return np.minimum(np.floor(x).astype(np.int64) - 1, cardinality - 1)


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, a: float) -> np.ndarray:
    """Ids in 1..cardinality (0 stays free for padding); popularity rank is shuffled over ids."""
    ranks = zipf_ranks(rng, n, cardinality, a)
    perm = rng.permutation(cardinality)
    return perm[ranks].astype(np.int64) + 1


def make_synthetic(n_rows: int, cardinalities: list[int], bag_cardinality: int, bag_len: int,
                   embed_dim: int = 8, zipf_a: float = 1.2, seed: int = 0) -> CTRData:
    """Rows split 80/10/10 in generation order (all i.i.d.), in the MovieLens tensor format.

    Hidden model: a per-id bias, FM pairwise dot products between field embeddings and a fixed
    random tanh layer over the concatenated embeddings, each scaled to unit variance, plus
    logistic noise. `extra["logit"]` keeps the hidden logit of every row (train, valid, test
    order) so a test can compare a model with the Bayes AUC (about 0.8 with the defaults).
    """
    if n_rows < 10:
        raise ValueError(f"n_rows: expected at least 10, got {n_rows!r}")
    if not cardinalities or min(cardinalities) < 1:
        raise ValueError(f"cardinalities: expected positive ints, got {cardinalities!r}")
    if bag_cardinality < 1 or bag_len < 1:
        raise ValueError(f"bag_cardinality, bag_len: expected >= 1, got "
                         f"{bag_cardinality!r}, {bag_len!r}")
    rng = np.random.default_rng(seed)
    n_fields = len(cardinalities)
    sparse = np.stack([_zipf_ids(rng, n_rows, c, zipf_a) for c in cardinalities], axis=1)

    # Bag: 1..bag_len Zipf ids per row, padded with 0 at the end (duplicates allowed).
    lengths = rng.integers(1, bag_len + 1, size=n_rows)
    bag = _zipf_ids(rng, n_rows * bag_len, bag_cardinality, zipf_a).reshape(n_rows, bag_len)
    bag = np.where(np.arange(bag_len)[None, :] < lengths[:, None], bag, 0)

    # Hidden vectors, computed once per distinct id and keyed by (seed, field).
    vectors, biases = [], np.zeros(n_rows, dtype=np.float64)
    for f in range(n_fields):
        uniq, inv = np.unique(sparse[:, f], return_inverse=True)
        emb = _hashed_normal(uniq, seed * 1000 + 2 * f, embed_dim)
        vectors.append(emb[inv])
        biases += _hashed_normal(uniq, seed * 1000 + 2 * f + 1, 1)[inv, 0]
    uniq, inv = np.unique(bag, return_inverse=True)
    bag_emb = _hashed_normal(uniq, seed * 1000 + 999, embed_dim)
    bag_emb[uniq == 0] = 0.0
    bag_sum = bag_emb[inv.reshape(bag.shape)].sum(axis=1)
    vectors.append(bag_sum / np.sqrt(lengths)[:, None])  # keeps unit variance per coordinate

    v = np.stack(vectors, axis=1).astype(np.float64)  # [N, F + 1, D]
    linear = biases / np.sqrt(n_fields)
    # Sum of pairwise dot products from the FM identity; each dot has variance D.
    pairs = 0.5 * ((v.sum(1) ** 2).sum(-1) - (v ** 2).sum((1, 2)))
    n_pairs = (n_fields + 1) * n_fields / 2
    pairwise = pairs / np.sqrt(n_pairs * embed_dim)
    weights = np.random.default_rng([seed, 7]).standard_normal((v.shape[1] * embed_dim, 16))
    hidden = np.tanh(v.reshape(n_rows, -1) @ weights / np.sqrt(weights.shape[0]))
    out = np.random.default_rng([seed, 8]).standard_normal(16)
    nonlinear = hidden @ out / np.sqrt(16 * 0.4)  # tanh of a unit normal has variance ~0.4
    logit = linear + pairwise + nonlinear
    noise = rng.logistic(size=n_rows)
    label = (logit + noise > 0).astype(np.float32)

    tensors = {"sparse": torch.from_numpy(sparse), "bag": torch.from_numpy(bag.astype(np.int64)),
               "label": torch.from_numpy(label)}
    slices = time_split(n_rows)
    splits = {name: {k: t[s] for k, t in tensors.items()}
              for name, s in zip(("train", "valid", "test"), slices, strict=True)}
    names = tuple(f"f{i}" for i in range(n_fields))
    return CTRData(splits=splits, field_dims=[c + 1 for c in cardinalities],
                   bag_dim=bag_cardinality + 1, field_names=names,
                   extra={"logit": torch.from_numpy(logit.astype(np.float32))})
