"""Pure math of row-wise asymmetric quantization and sub-byte packing for embedding tables.

Each row keeps an fp16 scale and offset (as TorchRec's fused tables do); INT4 packs two values a
byte (low nibble first), INT2 four.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def quantize_rows(weight: torch.Tensor,
                  bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (codes uint8 [rows, dim], scale fp16 [rows], offset fp16 [rows]).

    Scale and offset are rounded to fp16 *before* the codes are computed, so dequantization with
    the stored values is within half a step of every original weight.
    """
    w = weight.detach().float()
    levels = (1 << bits) - 1
    lo = w.amin(dim=1)
    hi = w.amax(dim=1)
    offset = lo.half()
    # Round the scale up in fp16 so (hi - offset) / scale never exceeds the top code.
    span = (hi - offset.float()).clamp(min=0)
    scale = (span / levels).half()
    too_small = scale.float() * levels < span
    scale = torch.where(too_small, torch.nextafter(scale, torch.full_like(scale, 65504.0)), scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w - offset.float()[:, None]) / scale.float()[:, None])
    return codes.clamp(0, levels).to(torch.uint8), scale, offset


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)


# Codes packed per block of rows: packing forms int32/int64 temporaries 13x the codes' bytes
# (370 MB at once for a 49152 x 576 table, the peak of quantizing SmolLM2's).
PACK_ELEMENTS = 1 << 20


def in_row_blocks(pack_block: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor,
                  width: int) -> torch.Tensor:
    """[rows, width] bytes from `pack_block` applied to blocks of rows of `codes`."""
    rows, dim = codes.shape
    out = torch.empty(rows, width, dtype=torch.uint8, device=codes.device)
    step = max(1, PACK_ELEMENTS // max(dim, 1))
    for start in range(0, rows, step):
        out[start:start + step] = pack_block(codes[start:start + step])
    return out


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes [rows, dim] into [rows, ceil(dim * bits / 8)] bytes."""
    if bits == 8:
        return codes.contiguous()
    per_byte = 8 // bits
    dim = codes.shape[1]
    width = -(-dim // per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits

    def block(rows: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros(rows.shape[0], width * per_byte, dtype=torch.uint8)
        padded[:, :dim] = rows
        grouped = padded.view(rows.shape[0], width, per_byte).to(torch.int32)
        return (grouped << shifts).sum(dim=-1).to(torch.uint8)

    return in_row_blocks(block, codes, width)


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `pack` over any leading shape: [..., width] bytes -> [..., dim] codes."""
    if bits == 8:
        return packed
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    mask = (1 << bits) - 1
    codes = (packed.unsqueeze(-1) >> shifts) & mask
    return codes.flatten(-2)[..., :dim]
