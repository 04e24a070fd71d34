"""Tensor encodings inside an artifact: dense, or bitmap-sparse (a bit per element plus the
non-zero values) whenever that is smaller, so pruning's zeros really reduce bytes on disk."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..core.errors import ArtifactError


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.int32)
    return (flat << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((bits.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:numel].bool()


def digest(t: torch.Tensor) -> str:
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(raw).hexdigest()


def encode(name: str, tensor: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Stored parts for one state-dict tensor, and its manifest entry (shape, dtype, checksums)."""
    t = tensor.detach().cpu().contiguous()
    meta: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    nonzero = t != 0
    nnz = int(nonzero.sum())
    sparse_bytes = nnz * t.element_size() + (t.numel() + 7) // 8
    if t.numel() >= 64 and sparse_bytes < t.numel() * t.element_size():
        parts = {f"{name}::values": t.reshape(-1)[nonzero.reshape(-1)].clone(),
                 f"{name}::bitmap": pack_bits(nonzero)}
        meta["encoding"] = "bitmap"
    else:
        parts = {name: t.clone()}
        meta["encoding"] = "dense"
    meta["sha256"] = {k: digest(v) for k, v in parts.items()}
    return parts, meta


def decode(name: str, meta: dict[str, Any], stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one tensor, verifying each part's checksum first."""
    for part, expected in meta["sha256"].items():
        if part not in stored:
            raise ArtifactError(f"artifact: tensor part {part!r} is missing")
        if digest(stored[part]) != expected:
            raise ArtifactError(
                f"artifact: tensor {part!r} fails its checksum (corrupted or tampered)")
    shape = tuple(meta["shape"])
    if meta["encoding"] == "dense":
        out = stored[name]
    elif meta["encoding"] == "bitmap":
        values = stored[f"{name}::values"]
        numel = 1
        for d in shape:
            numel *= d
        mask = unpack_bits(stored[f"{name}::bitmap"], numel)
        out = torch.zeros(numel, dtype=values.dtype)
        out[mask] = values
    else:
        raise ArtifactError(f"artifact: tensor {name!r} has unknown encoding {meta['encoding']!r}")
    return out.reshape(shape)
