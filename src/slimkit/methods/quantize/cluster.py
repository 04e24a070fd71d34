"""Weight sharing by k-means with centroid fine-tuning: the quantization stage of Deep Compression
(Han, Mao and Dally, "Deep Compression", ICLR 2016). Pruned zeros stay exactly zero."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, check_training, register
from ...core.config import DATA, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...graph import swap_module
from ...nn.clustered_layer import ClusteredLayer
from ...nn.huffman import choose_form, encode_form
from ...nn.runtime_memory import CACHED, PACKED
from ...train import fit

DEFAULT_TYPES = ("Linear", "Conv2d")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cluster(MethodConfig):
    """Replace Linear/Conv2d weights by `bits`-bit indices into a per-layer codebook of
    2**bits - 1 centroids (index 0 is the pruned zero). The paper used 8 bits for conv and 5 for
    fully connected layers. `bits` maps name globs to per-layer overrides (first match wins).
    The centroids are then fine-tuned for `epochs` with the task loss, assignments fixed.
    Indices are held packed at their bit width; `cache` also keeps each layer's gathered fp32
    weight in memory (speed over memory, off by default)."""

    method = "quantize.cluster"
    conv_bits: int = 8
    linear_bits: int = 5
    bits: dict[str, int] = dataclasses.field(default_factory=dict)
    iters: int = 100
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 128
    cache: bool = False
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA if self.epochs > 0 else NOTHING

    def validate(self) -> None:
        check_range("conv_bits", self.conv_bits, 1, 8)
        check_range("linear_bits", self.linear_bits, 1, 8)
        for pattern, value in self.bits.items():
            if not isinstance(value, int) or not 1 <= value <= 8:
                raise ConfigError(f"bits.{pattern}", value, "an integer in [1, 8]")
        check_range("iters", self.iters, 1, 100_000)
        check_training(self, allow_zero_epochs=True)

    def bits_for(self, name: str, module: nn.Module) -> int:
        for pattern, value in self.bits.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return self.conv_bits if isinstance(module, nn.Conv2d) else self.linear_bits


def stream_report(indices: torch.Tensor) -> dict[str, Any]:
    """How the artifact encoder stores one layer's indices (the same `choose_form` and streams):
    Huffman-coded non-zero indices plus relative positions, every index Huffman-coded, or plain
    bytes when coding would not pay (payload and entropy bits are then 0)."""
    codes = indices.reshape(-1).numpy()
    form, max_gap, _ = choose_form(codes)
    blob, meta = encode_form(codes, form, max_gap)
    report = {"numel": len(codes), "nonzeros": int(np.count_nonzero(codes)), "form": "dense",
              "stored_bits": 8 * len(codes), "payload_bits": 0, "entropy_bits": 0.0,
              "bits_per_weight": 8.0, "entropy_gap_pct": 0.0}
    if len(blob) < len(codes):
        streams = meta["streams"].values()
        report.update(form=form, stored_bits=8 * len(blob),
                      payload_bits=sum(s["payload_bits"] for s in streams),
                      entropy_bits=round(sum(s["entropy_bits"] for s in streams), 1),
                      bits_per_weight=meta["bits_per_weight"],
                      entropy_gap_pct=meta["entropy_gap_pct"])
    return report


@register(Cluster)
def apply_cluster(model: nn.Module, config: Cluster, ctx: Context) -> nn.Module:
    chosen = [(n, m) for n, m in config.targets.select(model, DEFAULT_TYPES)
              if getattr(m, "padding_mode", "zeros") == "zeros"]
    if not chosen:
        raise SlimkitError("quantize.cluster: targets match no Linear/Conv2d module")
    layers: dict[str, ClusteredLayer] = {}
    for name, module in chosen:
        new = ClusteredLayer.from_module(module, config.bits_for(name, module), config.iters,
                                         config.cache)
        swap_module(model, name, new, new.spec())
        layers[name] = new
    if config.epochs > 0:
        for layer in layers.values():
            layer.set_trainable(True)
        try:
            fit(model, ctx.require_task(config.method), ctx, epochs=config.epochs, lr=config.lr,
                batch_size=config.batch_size, desc="cluster: fine-tune centroids")
        finally:
            for layer in layers.values():
                layer.set_trainable(False)
    # The artifact stores each layer's indices a byte each (see ClusteredLayer), as reported.
    reports = {name: {"bits": layer.bits, **stream_report(layer.codes())}
               for name, layer in layers.items()}
    numel = sum(r["numel"] for r in reports.values())
    payload = sum(r["payload_bits"] for r in reports.values())
    entropy = sum(r["entropy_bits"] for r in reports.values())
    ctx.info["layers"] = reports
    ctx.info["bits_per_weight"] = round(sum(r["stored_bits"] for r in reports.values())
                                        / max(numel, 1), 4)
    ctx.info["entropy_bits_per_weight"] = round(entropy / max(numel, 1), 4)
    ctx.info["entropy_gap_pct"] = round(100 * (payload / entropy - 1), 3) if entropy else 0.0
    ctx.info["memory_mode"] = CACHED if config.cache else PACKED
    return model


@torch.no_grad()
def codebook_usage(model: nn.Module) -> dict[str, int]:
    """Distinct non-zero indices used per clustered layer (at most 2**bits - 1)."""
    usage = {}
    for name, module in model.named_modules():
        if isinstance(module, ClusteredLayer):
            codes = module.codes()
            usage[name] = int(torch.unique(codes[codes > 0]).numel())
    return usage
