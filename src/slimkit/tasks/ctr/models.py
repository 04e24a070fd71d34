"""Reference CTR models: DeepFM (Guo et al. 2017) and DCN-v2 (Wang et al. 2021).

Both take (sparse [B, F] ids, bag [B, L] ids padded with 0) and return one logit per row, [B].
The deep tower is a Sequential of Linear+ReLU(+Dropout) blocks so block-dropping methods can
remove any block whose input width equals its output width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...core.module_types import register_module_type

# Small initial embeddings keep the FM pairwise term near zero at the start of training.
_EMBED_STD = 0.01


def _builder(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def make_tower(in_dim: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """Blocks of Sequential(Linear, ReLU[, Dropout]); a later method may drop square blocks."""
    blocks: list[nn.Module] = []
    for out_dim in hidden:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        in_dim = out_dim
    return nn.Sequential(*blocks)


def _check(field_dims: Sequence[int], bag_dim: int, embed_dim: int, dropout: float) -> None:
    if not field_dims or min(field_dims) < 1:
        raise ValueError(f"field_dims: expected a non-empty list of ints >= 1, got {field_dims!r}")
    if bag_dim < 1:
        raise ValueError(f"bag_dim: expected an int >= 1, got {bag_dim!r}")
    if embed_dim < 1:
        raise ValueError(f"embed_dim: expected an int >= 1, got {embed_dim!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a value in [0, 1), got {dropout!r}")


def field_tables(field_dims: Sequence[int], bag_dim: int,
                 embed_dim: int) -> tuple[nn.ModuleList, nn.EmbeddingBag]:
    """One table per sparse field plus a mean-pooled bag table; row 0 is padding / unknown."""
    tables = nn.ModuleList(nn.Embedding(d, embed_dim, padding_idx=0) for d in field_dims)
    bag = nn.EmbeddingBag(bag_dim, embed_dim, mode="mean", padding_idx=0)
    for table in [*tables, bag]:
        nn.init.normal_(table.weight, std=_EMBED_STD)
        with torch.no_grad():
            table.weight[0].zero_()
    return tables, bag


def field_vectors(tables: nn.ModuleList, bag_table: nn.Module, sparse: torch.Tensor,
                  bag: torch.Tensor) -> list[torch.Tensor]:
    """F + 1 tensors of [B, D]: the sparse fields' vectors, then the bag's mean vector."""
    vectors = [table(sparse[:, i]) for i, table in enumerate(tables)]
    vectors.append(bag_table(bag))
    return vectors


@register_module_type
class DeepFM(nn.Module):
    """DeepFM: first-order weights + FM pairwise interactions + an MLP over all field vectors."""

    def __init__(self, field_dims: Sequence[int], bag_dim: int, embed_dim: int = 16,
                 hidden: Sequence[int] = (400, 400, 400), dropout: float = 0.0) -> None:
        super().__init__()
        _check(field_dims, bag_dim, embed_dim, dropout)
        self.slimkit_spec = {"builder": _builder(DeepFM), "kwargs": {
            "field_dims": [int(d) for d in field_dims], "bag_dim": int(bag_dim),
            "embed_dim": int(embed_dim), "hidden": [int(h) for h in hidden],
            "dropout": float(dropout)}}
        self.embeddings, self.bag = field_tables(field_dims, bag_dim, embed_dim)
        self.linear = nn.ModuleList(nn.Embedding(d, 1, padding_idx=0) for d in field_dims)
        self.bag_linear = nn.EmbeddingBag(bag_dim, 1, mode="mean", padding_idx=0)
        for table in [*self.linear, self.bag_linear]:
            nn.init.zeros_(table.weight)
        self.bias = nn.Parameter(torch.zeros(1))
        in_dim = (len(field_dims) + 1) * embed_dim
        self.tower = make_tower(in_dim, hidden, dropout)
        self.head = nn.Linear(hidden[-1] if hidden else in_dim, 1)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        first = self.bias + self.bag_linear(bag).squeeze(-1)
        for i, table in enumerate(self.linear):
            first = first + table(sparse[:, i]).squeeze(-1)
        # [B, F + 1, D]
        v = torch.stack(field_vectors(self.embeddings, self.bag, sparse, bag), dim=1)
        # FM identity: sum over pairs <v_i, v_j> = ((sum v)^2 - sum v^2) / 2, O(F D) not O(F^2 D).
        second = 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1)).sum(dim=1)
        deep = self.head(self.tower(v.flatten(1))).squeeze(-1)
        return first + second + deep


class CrossLayer(nn.Module):
    """DCN-v2 full-rank cross: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        # Small W starts each layer near the identity map, which the residual carries.
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


@register_module_type
class DCNv2(nn.Module):
    """DCN-v2, stacked: cross layers on the concatenated field vectors, then the deep tower."""

    def __init__(self, field_dims: Sequence[int], bag_dim: int, embed_dim: int = 16,
                 cross_layers: int = 3, hidden: Sequence[int] = (400, 400, 400),
                 dropout: float = 0.0) -> None:
        super().__init__()
        _check(field_dims, bag_dim, embed_dim, dropout)
        if cross_layers < 0:
            raise ValueError(f"cross_layers: expected an int >= 0, got {cross_layers!r}")
        self.slimkit_spec = {"builder": _builder(DCNv2), "kwargs": {
            "field_dims": [int(d) for d in field_dims], "bag_dim": int(bag_dim),
            "embed_dim": int(embed_dim), "cross_layers": int(cross_layers),
            "hidden": [int(h) for h in hidden], "dropout": float(dropout)}}
        self.embeddings, self.bag = field_tables(field_dims, bag_dim, embed_dim)
        in_dim = (len(field_dims) + 1) * embed_dim
        self.cross = nn.ModuleList(CrossLayer(in_dim) for _ in range(cross_layers))
        self.tower = make_tower(in_dim, hidden, dropout)
        self.head = nn.Linear(hidden[-1] if hidden else in_dim, 1)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        # [B, (F + 1) * D]
        x0 = torch.cat(field_vectors(self.embeddings, self.bag, sparse, bag), dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.tower(x)).squeeze(-1)
