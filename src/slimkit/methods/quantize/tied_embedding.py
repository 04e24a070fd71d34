"""Weight-only quantization of a tied input embedding and output head (a language model's
`embed_tokens` and `lm_head` sharing one weight): one packed table, held by a
WeightOnlyEmbedding and a TiedLowBitHead as the same buffer objects, stored once in the artifact
and tied again by `load`. Round-to-nearest, group-wise along the embedding dimension.

Not a registered method on its own: the weight-only method calls `quantize_tied_embedding` for the
pairs `tied_pairs` finds (core.targets leaves tied modules out of the ordinary targets).
"""

from __future__ import annotations

from torch import nn

from ...core.errors import ConfigError, SlimkitError
from ...core.targets import Targets, _matches
from ...graph import get_submodule, swap_module
from ...nn.groupwise import BITS
from ...nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding
from ...nn.lowbit_linear import SCALE_DTYPES


def tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(embedding name, head name) for each nn.Embedding and nn.Linear whose `weight` is the same
    Parameter object (not merely equal values), in definition order."""
    tables: dict[int, str] = {}
    heads: list[tuple[int, str]] = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if name else None
        if weight is None:
            continue
        if isinstance(module, nn.Embedding):
            tables.setdefault(id(weight), name)
        elif isinstance(module, nn.Linear):
            heads.append((id(weight), name))
    return [(tables[key], name) for key, name in heads if key in tables]


def quantize_tied_embedding(model: nn.Module, embedding_name: str, head_name: str, *,
                            bits: int = 4, group_size: int = 128, symmetric: bool = False,
                            scale_dtype: str = "float16", param_bits: int = 0
                            ) -> tuple[WeightOnlyEmbedding, TiedLowBitHead]:
    """Swap the tied pair for a WeightOnlyEmbedding and a TiedLowBitHead over one packed table
    (round to nearest); both swaps are logged, so `slimkit.save` / `load` rebuild the pair and
    the tie."""
    if bits not in BITS:
        raise ConfigError("bits", bits, f"one of {BITS}")
    if scale_dtype not in SCALE_DTYPES:
        raise ConfigError("scale_dtype", scale_dtype, f"one of {list(SCALE_DTYPES)}")
    if group_size == 0 or group_size < -1:
        raise ConfigError("group_size", group_size, "a positive group size, or -1 (per row)")
    embedding = get_submodule(model, embedding_name)
    head = get_submodule(model, head_name)
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear):
        raise SlimkitError(f"quantize_tied_embedding: {embedding_name!r} must be an "
                           f"nn.Embedding and {head_name!r} an nn.Linear (got "
                           f"{type(embedding).__name__} and {type(head).__name__})")
    if head.weight is not embedding.weight:
        raise SlimkitError(f"quantize_tied_embedding: {head_name!r} does not share its weight "
                           f"Parameter with {embedding_name!r} (not tied)")
    if head.bias is not None:
        raise SlimkitError(f"quantize_tied_embedding: {head_name!r} has a bias; a tied low-bit "
                           "head has none")
    table = WeightOnlyEmbedding.from_embedding(embedding, bits=bits, group_size=group_size,
                                               symmetric=symmetric, scale_dtype=scale_dtype,
                                               param_bits=param_bits)
    table.train(embedding.training)
    projection = TiedLowBitHead.tied_to(table)
    projection.train(head.training)
    swap_module(model, embedding_name, table, table.spec())
    swap_module(model, head_name, projection, projection.spec())
    return table, projection


def table_targets(model: nn.Module, targets: Targets) -> tuple[list[tuple[str, str]], list[str]]:
    """What a weight-only step quantizes besides Linears, for `targets`' names and excludes
    (its types are for the Linears): the tied (embedding, head) pairs, and the untied
    nn.Embedding tables."""
    def wanted(name: str) -> bool:
        return _matches(name, targets.names) and not _matches(name, targets.exclude)

    pairs = [(e, h) for e, h in tied_pairs(model) if wanted(e) and wanted(h)]
    paired = {e for e, _ in tied_pairs(model)}
    tables = [n for n, m in model.named_modules()
              if n and isinstance(m, nn.Embedding) and n not in paired and wanted(n)]
    return pairs, tables


def quantize_embedding(model: nn.Module, name: str, *, bits: int, group_size: int,
                       symmetric: bool, scale_dtype: str,
                       param_bits: int = 0) -> WeightOnlyEmbedding:
    """Swap an untied nn.Embedding for a WeightOnlyEmbedding (round to nearest)."""
    embedding = get_submodule(model, name)
    table = WeightOnlyEmbedding.from_embedding(embedding, bits=bits, group_size=group_size,
                                               symmetric=symmetric, scale_dtype=scale_dtype,
                                               param_bits=param_bits)
    table.train(embedding.training)
    swap_module(model, name, table, table.spec())
    return table
