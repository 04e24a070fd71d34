"""Row-wise INT8/INT4/INT2 quantization of embedding tables (Embedding and EmbeddingBag)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.errors import SlimkitError
from ...graph import swap_module
from ...nn.quantized_embedding import QuantizedEmbedding


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingQuant(MethodConfig):
    """Quantize tables row-wise to `bits`. Tables narrower than `min_dim` stay fp32: with a 4-byte
    scale+offset per row, quantizing a 1-wide table (an FM first-order term) would grow it."""

    method = "quantize.embedding"
    bits: Literal[8, 4, 2] = 4
    min_dim: int = 4
    targets: Targets = Targets()

    def validate(self) -> None:
        check_range("min_dim", self.min_dim, 1, 1 << 20)


@register(EmbeddingQuant)
def apply_embedding_quant(model: nn.Module, config: EmbeddingQuant, ctx: Context) -> nn.Module:
    chosen = config.targets.select(model, ("Embedding", "EmbeddingBag"))
    if not chosen:
        raise SlimkitError("quantize.embedding: targets match no Embedding/EmbeddingBag module")
    done, skipped = [], []
    for name, table in chosen:
        if table.embedding_dim < config.min_dim:
            skipped.append(name)
            continue
        new = QuantizedEmbedding.from_float(table, config.bits)
        swap_module(model, name, new, new.spec())
        done.append(name)
    ctx.info["quantized"] = done
    ctx.info["skipped_narrow"] = skipped
    return model
