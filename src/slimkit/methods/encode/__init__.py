"""Entropy coding of quantized and sparse weights (pure numpy; no torch needed)."""

from .huffman import (
    best_max_gap,
    canonical_codes,
    code_lengths,
    entropy_bits,
    gap_streams,
    pack_stream,
    positions_from_gaps,
    unpack_stream,
)

__all__ = ["best_max_gap", "canonical_codes", "code_lengths", "entropy_bits", "gap_streams",
           "pack_stream", "positions_from_gaps", "unpack_stream"]
