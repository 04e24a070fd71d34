"""Row-wise packing of unsigned codes of any width from 1 to 8 bits into bytes (cluster indices of
5, 6 or 7 bits included): a row's codes become one little-endian bit stream, low bit first.

For 1, 2, 4 and 8 bits the layout equals `rowwise.pack` (codes never straddle a byte).
"""

from __future__ import annotations

import torch


def packed_row_bytes(cols: int, bits: int) -> int:
    return -(-cols * bits // 8)


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits: expected 1..8, got {bits!r}")


def pack_bits_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, cols] (each < 2**bits) -> uint8 [rows, ceil(cols * bits / 8)]."""
    _check(bits)
    rows, cols = codes.shape
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1).reshape(rows, cols * bits)
    pad = packed_row_bytes(cols, bits) * 8 - cols * bits
    if pad:
        stream = torch.cat([stream, stream.new_zeros(rows, pad)], dim=1)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=codes.device))
    return (stream.view(rows, -1, 8).to(torch.int32) * weights).sum(dim=-1).to(torch.uint8)


def unpack_bits_rows(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_bits_rows`: [rows, packed width] bytes -> uint8 codes [rows, cols]."""
    _check(bits)
    if bits == 8:
        return packed[:, :cols]
    rows = packed.shape[0]
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(rows, -1)[:, :cols * bits]
    place = (1 << torch.arange(bits, dtype=torch.uint8, device=packed.device))
    return (stream.view(rows, cols, bits) * place).sum(dim=-1, dtype=torch.uint8)
