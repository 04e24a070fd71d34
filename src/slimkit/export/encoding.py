"""Tensor encodings inside an artifact: dense; bitmap-sparse (a bit per element plus the non-zero
values); and for integer codes (cluster indices, INT8 weights) canonical Huffman, either of every
code or, as in Deep Compression (Han et al. 2016), of the non-zero codes plus the gaps between
them. Each tensor takes whichever is smallest; every stored part is a plain tensor with a sha256.
A name that shares another's tensor (tied weights) stores no part: its entry is an alias.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..core.errors import ArtifactError
from ..nn.huffman import choose_form, decode_form, encode_form

CODED = {"uint8": torch.uint8, "int8": torch.int8}
MIN_NUMEL = 64


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
    meta: dict[str, Any] = {"shape": list(t.shape), "dtype": dtype_name(t)}
    nonzero = t != 0
    nnz = int(nonzero.sum())
    sizes: dict[str, tuple[int, int | None]] = {"dense": (t.numel() * t.element_size(), None)}
    if t.numel() >= MIN_NUMEL:
        sizes["bitmap"] = (nnz * t.element_size() + (t.numel() + 7) // 8, None)
        if meta["dtype"] in CODED:
            symbols = t.reshape(-1).view(torch.uint8).numpy()
            coded, max_gap, size = choose_form(symbols)
            sizes[coded] = (size, max_gap)
    form = min(sizes, key=lambda k: sizes[k][0])  # ties keep the simpler, earlier form
    if form == "dense":
        parts = {name: t.clone()}
    elif form == "bitmap":
        parts = {f"{name}::values": t.reshape(-1)[nonzero.reshape(-1)].clone(),
                 f"{name}::bitmap": pack_bits(nonzero)}
    else:
        blob, coded_meta = encode_form(symbols, form, sizes[form][1])
        parts = {f"{name}::coded": torch.from_numpy(blob.copy())}
        meta.update(coded_meta)
    meta["encoding"] = form
    meta["sha256"] = {k: digest(v) for k, v in parts.items()}
    return parts, meta


ALIAS = "same_as"


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def alias_meta(tensor: torch.Tensor, first: str) -> dict[str, Any]:
    """The manifest entry of a name that shares the tensor stored under `first` (tied weights):
    no part of its own, its shape and dtype kept so a tampered alias is caught."""
    return {ALIAS: first, "shape": list(tensor.shape), "dtype": dtype_name(tensor)}


def resolve_alias(name: str, meta: dict[str, Any],
                  decoded: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor `name` shares: the one decoded under its `same_as` name, which must be stored
    (not itself an alias) with the shape and dtype the entry records."""
    first = meta[ALIAS]
    tensor = decoded.get(first) if isinstance(first, str) else None
    if tensor is None:
        raise ArtifactError(f"artifact: tensor {name!r} is recorded as the same as {first!r}, "
                            "which the artifact does not store")
    if list(tensor.shape) != meta.get("shape") or dtype_name(tensor) != meta.get("dtype"):
        raise ArtifactError(f"artifact: tensor {name!r} is recorded as the same as {first!r} "
                            f"with shape {meta.get('shape')} {meta.get('dtype')}, but that is "
                            f"{list(tensor.shape)} {dtype_name(tensor)} (tampered)")
    return tensor


def _decode_coded(meta: dict[str, Any], blob: torch.Tensor, numel: int) -> torch.Tensor:
    flat = decode_form(blob.numpy(), meta["encoding"], meta, numel)
    if len(flat) and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("decoded symbols do not fit in a byte")
    return torch.from_numpy(flat.astype(np.uint8, copy=False)).view(CODED[meta["dtype"]])


def decode(name: str, meta: dict[str, Any], stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild one tensor, verifying each part's checksum first."""
    for part, expected in meta["sha256"].items():
        if part not in stored:
            raise ArtifactError(f"artifact: tensor part {part!r} is missing")
        if digest(stored[part]) != expected:
            raise ArtifactError(
                f"artifact: tensor {part!r} fails its checksum (corrupted or tampered)")
    shape = tuple(meta["shape"])
    numel = 1
    for d in shape:
        numel *= d
    if meta["encoding"] == "dense":
        out = stored[name]
    elif meta["encoding"] == "bitmap":
        values = stored[f"{name}::values"]
        mask = unpack_bits(stored[f"{name}::bitmap"], numel)
        out = torch.zeros(numel, dtype=values.dtype)
        out[mask] = values
    elif meta["encoding"] in ("huffman", "huffman_sparse") and meta.get("dtype") in CODED:
        try:
            out = _decode_coded(meta, stored[f"{name}::coded"], numel)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ArtifactError(f"artifact: tensor {name!r}: coded stream does not decode "
                                f"({exc})") from None
    else:
        raise ArtifactError(f"artifact: tensor {name!r} has unknown encoding {meta['encoding']!r}")
    return out.reshape(shape)
