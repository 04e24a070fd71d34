"""Int8 item vectors scored against the float query (asymmetric: only the items are quantized).

`per="dim"`: each dimension's [min, max] over the items mapped onto the 256 codes, as
sentence-transformers' `quantize_embeddings(precision="int8")` does with calibration ranges;
the dequantized score q . (lo + (c + 128) step) is computed as (q * step) . c plus a per-query
constant (the scales fold into the query; the codes are cast to float only for the product).
`per="vector"`: a symmetric scale per item (its largest |x| / 127), score (q . c) * scale."""

from __future__ import annotations

from typing import Any, Literal

import torch

from .base import as_matrix, check_exclude, tensor_bytes, top_k

Per = Literal["dim", "vector"]


class Int8Index:
    kind = "int8"

    def __init__(self, codes: torch.Tensor, *, per: Per, lo: torch.Tensor | None = None,
                 step: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
        if per not in ("dim", "vector"):
            raise ValueError(f"per: expected 'dim' or 'vector', got {per!r}")
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"codes: expected int8 [items, dim], got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        want = {"dim": {"lo": (codes.shape[1],), "step": (codes.shape[1],)},
                "vector": {"scale": (codes.shape[0],)}}[per]
        given = {"lo": lo, "step": step, "scale": scale}
        for name, shape in want.items():
            t = given[name]
            if t is None or tuple(t.shape) != shape or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: expected finite {list(shape)} for per={per!r}")
        self.codes, self.per = codes.contiguous(), per
        self.lo = lo.float() if lo is not None else None
        self.step = step.float() if step is not None else None
        self.scale = scale.float() if scale is not None else None

    @classmethod
    def build(cls, vectors: torch.Tensor, *, per: Per = "dim",
              calibration: torch.Tensor | None = None) -> Int8Index:
        """Quantize `vectors`; per-dimension ranges come from `calibration` (default: the
        vectors themselves), and values outside them are clipped."""
        x = as_matrix(vectors, "vectors")
        if per == "vector":
            scale = x.abs().amax(1).clamp_min(1e-12) / 127.0
            codes = torch.round(x / scale[:, None]).clamp(-127, 127).to(torch.int8)
            return cls(codes, per=per, scale=scale)
        ref = x if calibration is None else as_matrix(calibration, "calibration", x.shape[1])
        lo, hi = ref.amin(0), ref.amax(0)
        step = ((hi - lo) / 255.0).clamp_min(1e-12)
        codes = (torch.round((x - lo) / step).clamp(0, 255) - 128).to(torch.int8)
        return cls(codes, per=per, lo=lo, step=step)

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.codes, self.lo, self.step, self.scale)

    def reconstruct(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The float vectors the codes stand for (all, or rows `ids` of any shape)."""
        codes = (self.codes if ids is None else self.codes[ids]).float()
        if self.per == "vector":
            assert self.scale is not None
            scale = self.scale if ids is None else self.scale[ids]
            return codes * scale[..., None]
        assert self.lo is not None and self.step is not None
        return self.lo + (codes + 128.0) * self.step

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        q = as_matrix(queries, "queries", self.dim)
        codes = self.codes.float()
        if self.per == "vector":
            assert self.scale is not None
            return (q @ codes.T) * self.scale
        assert self.lo is not None and self.step is not None
        qs = q * self.step
        return qs @ codes.T + (q @ self.lo + 128.0 * qs.sum(1))[:, None]

    def search(self, queries: torch.Tensor, k: int, *,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        exclude = check_exclude(exclude, len(queries), len(self))
        return top_k(self.scores(queries), k, exclude)

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"codes": self.codes, "lo": self.lo, "step": self.step, "scale": self.scale}
        return {k: v for k, v in named.items() if v is not None}

    def config(self) -> dict[str, Any]:
        return {"per": self.per}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Int8Index:
        return cls(tensors["codes"], per=config.get("per"), lo=tensors.get("lo"),  # type: ignore[arg-type]
                   step=tensors.get("step"), scale=tensors.get("scale"))
