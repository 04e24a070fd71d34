"""The two-tower model (Covington et al. 2016; Yi et al. 2019): a user tower over the user's id
and features plus the mean of recently watched items, an item tower over the movie id and its
genres, each an MLP ending in an L2-normalised `dim`-vector.

`forward(user, history, item, genres)` returns the in-batch score matrix [B, B] (user i against
item j) divided by the temperature, so the task's loss is a softmax over the batch and logit
distillation matches the teacher's in-batch distribution. Each tower is a plain Sequential of
Linear+ReLU blocks, which structured pruning, INT8 and the other methods rewrite."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...core.module_types import register_module_type

_EMBED_STD = 0.05


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for width in hidden:
        blocks.append(nn.Sequential(nn.Linear(in_dim, width), nn.ReLU()))
        in_dim = width
    blocks.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*blocks)


def _table(rows: int, width: int, bag: bool = False) -> nn.Module:
    table: nn.Embedding | nn.EmbeddingBag
    if bag:
        table = nn.EmbeddingBag(rows, width, mode="mean", padding_idx=0)
    else:
        table = nn.Embedding(rows, width, padding_idx=0)
    nn.init.normal_(table.weight, std=_EMBED_STD)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


@register_module_type
class TwoTower(nn.Module):
    """User tower: id and feature tables [+ mean of the history's item vectors]; item tower: id
    table + mean genre vector. Both: MLP -> `dim`, L2-normalised."""

    def __init__(self, user_field_dims: Sequence[int], n_items: int, n_genres: int, *,
                 dim: int = 64, embed_dim: int = 32, hidden: Sequence[int] = (128,),
                 history: bool = True, temperature: float = 0.05) -> None:
        super().__init__()
        for name, value, ok in [("user_field_dims", user_field_dims,
                                 len(user_field_dims) > 0 and min(user_field_dims) >= 1),
                                ("n_items", n_items, n_items >= 1),
                                ("n_genres", n_genres, n_genres >= 1), ("dim", dim, dim >= 1),
                                ("embed_dim", embed_dim, embed_dim >= 1),
                                ("temperature", temperature, temperature > 0)]:
            if not ok:
                raise ValueError(f"{name}: out of range, got {value!r}")
        self.slimkit_spec = {"builder": f"{__name__}:TwoTower", "kwargs": {
            "user_field_dims": [int(d) for d in user_field_dims], "n_items": int(n_items),
            "n_genres": int(n_genres), "dim": int(dim), "embed_dim": int(embed_dim),
            "hidden": [int(h) for h in hidden], "history": bool(history),
            "temperature": float(temperature)}}
        self.temperature = float(temperature)
        self.user_tables = nn.ModuleList(_table(d, embed_dim) for d in user_field_dims)
        # The history's own item table: the user tower runs without the item tower's weights.
        self.history_table = _table(n_items + 1, embed_dim, bag=True) if history else None
        user_in = embed_dim * (len(user_field_dims) + int(history))
        self.user_tower = _mlp(user_in, hidden, dim)
        self.item_table = _table(n_items + 1, embed_dim)
        self.genre_table = _table(n_genres, embed_dim, bag=True)
        self.item_tower = _mlp(2 * embed_dim, hidden, dim)

    def encode_users(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, F] feature ids (column 0 the user id) and [B, H] previous items -> [B, dim]."""
        parts = [table(user[:, i]) for i, table in enumerate(self.user_tables)]
        if self.history_table is not None:
            parts.append(self.history_table(history))
        return F.normalize(self.user_tower(torch.cat(parts, dim=1)), dim=-1)

    def encode_items(self, item: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        """[B] item ids and [B, G] genre bags -> [B, dim]."""
        x = torch.cat([self.item_table(item), self.genre_table(genres)], dim=1)
        return F.normalize(self.item_tower(x), dim=-1)

    def forward(self, user: torch.Tensor, history: torch.Tensor, item: torch.Tensor,
                genres: torch.Tensor) -> torch.Tensor:
        u, v = self.encode_users(user, history), self.encode_items(item, genres)
        return u @ v.T / self.temperature
