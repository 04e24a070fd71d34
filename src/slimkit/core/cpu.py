"""What the CPU running this process offers to int8 kernels, and whether their u8 x s8 products
can overflow: x86 kernels without VNNI (vpmaddubsw) add each pair of products in 16 bits and
saturate, so int8 numerics that are right on one machine can be wrong on another."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from pathlib import Path

import torch

# |w| <= 64 keeps every pair sum within int16 for any u8 input: 2 * 255 * 64 = 32640 <= 32767.
PORTABLE_WEIGHT_MAX = 64
FULL_WEIGHT_MAX = 127
INT16_MAX = 32767

# fbgemm reads this variable to run a lower ISA than the CPU has (names from fbgemm's Utils.cc).
FBGEMM_ISA_ENV = "FBGEMM_ENABLE_INSTRUCTIONS"
_FBGEMM_VNNI_ISAS = {"AVX512_E1", "AVX512_E1_256"}


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """x86 extensions relevant to int8 GEMM (all False on other architectures)."""

    machine: str
    avx2: bool
    avx512: bool
    avx512_vnni: bool
    avx_vnni: bool
    amx_int8: bool
    fbgemm_isa: str | None  # forced through FBGEMM_ENABLE_INSTRUCTIONS, else None

    @property
    def x86(self) -> bool:
        return self.machine in ("x86_64", "amd64", "i386", "i686")

    @property
    def fbgemm_saturates(self) -> bool:
        """True when torch's x86/fbgemm int8 kernels add u8 x s8 pairs in 16 bits here."""
        if not self.x86:
            return False
        vnni = self.avx512_vnni or self.amx_int8
        if self.fbgemm_isa is not None:  # fbgemm only ever lowers the ISA it was told to use
            return not (vnni and self.fbgemm_isa.upper() in _FBGEMM_VNNI_ISAS)
        return not vnni

    @property
    def onnxruntime_saturates(self) -> bool:
        """True when ONNX Runtime's MLAS U8S8 kernels add pairs in 16 bits here (MLAS also runs
        the 256-bit AVX-VNNI of newer AVX2 CPUs)."""
        return self.x86 and not (self.avx512_vnni or self.avx_vnni or self.amx_int8)

    def describe(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "fbgemm_saturates": self.fbgemm_saturates,
                "onnxruntime_saturates": self.onnxruntime_saturates}


def _cpuinfo_flags() -> set[str] | None:
    path = Path("/proc/cpuinfo")
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """Detected once per process: /proc/cpuinfo where there is one, else torch's cpuinfo."""
    machine = platform.machine().lower()
    flags = _cpuinfo_flags()
    if flags is not None:
        avx2, avx512 = "avx2" in flags, "avx512f" in flags and "avx512bw" in flags
        vnni, avx_vnni, amx = "avx512_vnni" in flags, "avx_vnni" in flags, "amx_int8" in flags
    else:
        cpu = torch.cpu
        avx2, avx512 = cpu._is_avx2_supported(), cpu._is_avx512_supported()
        vnni, avx_vnni, amx = cpu._is_vnni_supported(), False, cpu._is_amx_tile_supported()
    forced = os.environ.get(FBGEMM_ISA_ENV) or None
    return CpuFeatures(machine, avx2, avx512, vnni, avx_vnni, amx, forced)


def code_max(codes: torch.Tensor) -> int:
    """Largest |code| of int8 codes (0 when empty); widened first, as |-128| overflows int8."""
    return int(codes.int().abs().max()) if codes.numel() else 0


def requantize_to_portable(codes: torch.Tensor,
                           scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes (per output channel, |q| <= 127) and their scales -> codes with |q| <= 64 and
    new scales for the same real weights: what a full-range artifact becomes on a CPU whose
    kernels would saturate. Costs at most half a 7-bit step of extra rounding per weight."""
    flat = codes.reshape(codes.shape[0], -1).float()
    amax = flat.abs().amax(dim=1)
    factor = torch.where(amax > PORTABLE_WEIGHT_MAX, amax / PORTABLE_WEIGHT_MAX,
                         torch.ones_like(amax))
    shape = (-1,) + (1,) * (codes.dim() - 1)
    q = torch.round(codes.float() / factor.view(shape)).clamp(
        -PORTABLE_WEIGHT_MAX, PORTABLE_WEIGHT_MAX).to(torch.int8)
    return q, (scale * factor).contiguous()
