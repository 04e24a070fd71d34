"""Weight-only low-bit quantization of Linear layers: round-to-nearest, GPTQ (Frantar et al. 2022)
or AWQ (Lin et al. 2023), stored packed as WeightOnlyLinear (8/4/3/2 bits, group-wise scales).

GPTQ and AWQ quantize layers in execution order; each layer's inputs are captured on the task's
calibration batches with the earlier layers already quantized, so later layers correct for the
error upstream (as the GPTQ paper does). In a model with repeated blocks (a transformer's layers)
this runs block by block on cached block inputs (block_inputs.py), elsewhere by cut-short passes
of the whole model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.config import DATA, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...core.task import Batch, Task, batches_used
from ...graph import swap_module
from ...nn.groupwise import BITS, quantize_groups
from ...nn.lowbit_linear import SCALE_DTYPES, WeightOnlyLinear
from ...nn.runtime_memory import CACHED, PACKED
from .awq import ActivationStats, apply_clip, search_clip, search_scales
from .block_inputs import StopForward, block_passes, capture_first_block, find_blocks, next_calls
from .gptq import HessianAccumulator, gptq_quantize, hessian_error

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTQOptions:
    """`damp_percent` of mean(diag H) is added to H; `block_size` columns per lazy update."""

    damp_percent: float = 0.01
    block_size: int = 128
    # On by default: on SmolLM2-135M at w4 g64, GPTQ lost +69.4% perplexity without it and
    # +40.0% with it (quantizing columns by descending Hessian diagonal, Frantar et al. 2022).
    act_order: bool = True

    def __post_init__(self) -> None:
        check_range("damp_percent", self.damp_percent, 0.0, 1.0, lo_open=True)
        check_range("block_size", self.block_size, 1, 1 << 20)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AWQOptions:
    """`grid` values of alpha in [0, 1); `clip` adds AWQ's clipping search; `max_rows` input rows
    per layer are kept to measure the output error during the searches."""

    grid: int = 20
    clip: bool = False
    max_rows: int = 4096

    def __post_init__(self) -> None:
        check_range("grid", self.grid, 1, 1000)
        check_range("max_rows", self.max_rows, 1, 1 << 24)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightOnly(MethodConfig):
    """Quantize Linear weights to `bits` with one scale (and offset unless `symmetric`) per
    `group_size` inputs (-1: one per output channel; a shorter last group when the width is not a
    multiple). Activations stay float. `sequential` captures each layer's inputs after the earlier
    layers are quantized (one cut-short calibration pass per group of layers sharing an input);
    False captures every layer in one pass of the float model (faster, less accurate).
    `cache`: keep each layer's de-quantized fp32 weight in memory (faster forwards, fp32 run-time
    memory); off by default, so a layer holds only its packed codes and scales."""

    method = "quantize.weight_only"
    bits: Literal[8, 4, 3, 2] = 4
    group_size: int = 128
    symmetric: bool = False
    algorithm: Literal["rtn", "gptq", "awq"] = "rtn"
    gptq: GPTQOptions = GPTQOptions()
    awq: AWQOptions = AWQOptions()
    calibration_batches: int = 8
    sequential: bool = True
    scale_dtype: Literal["float16", "float32"] = "float16"
    cache: bool = False
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA if self.algorithm != "rtn" else NOTHING

    def validate(self) -> None:
        if self.bits not in BITS:
            raise ConfigError("bits", self.bits, "one of 8, 4, 3, 2")
        if self.group_size != -1:
            check_range("group_size", self.group_size, 1, 1 << 20)
        if self.algorithm not in ("rtn", "gptq", "awq"):
            raise ConfigError("algorithm", self.algorithm, "one of 'rtn', 'gptq', 'awq'")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError("scale_dtype", self.scale_dtype, "one of 'float16', 'float32'")
        check_range("calibration_batches", self.calibration_batches, 1, 1 << 16)


class _Group:
    """Inputs of the next layers to quantize: the first pending layer the forward reaches, plus
    the pending layers fed that very same tensor (q, k, v of an attention block), which share
    one set of statistics. The forward is cut short right after, so one pass costs only the
    model's (or block's) prefix up to those layers."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        self.make = make
        self.stats: Any = None
        self.members: list[str] = []

    def capture(self, pending: dict[str, nn.Module],
                passes: list[Callable[[], Any]]) -> list[str]:
        first_pass = True
        current: dict[str, Any] = {}

        def hook_for(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0]
                if "input" not in current:
                    if not first_pass and name != self.members[0]:
                        raise StopForward
                    current["input"] = x
                    if self.stats is None:
                        self.stats = self.make(x.shape[-1])
                    self.stats.add(x.detach().float())
                elif x is not current["input"]:
                    raise StopForward
                if first_pass:
                    self.members.append(name)
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending.items()]
        try:
            with torch.no_grad():
                for run in passes:
                    current.clear()
                    try:
                        run()
                    except StopForward:
                        pass
                    if first_pass and not self.members:
                        break  # no pending layer runs on this data
                    first_pass = False
        finally:
            for handle in handles:
                handle.remove()
        return self.members


def _capture_all(model: nn.Module, pending: dict[str, nn.Linear], task: Task,
                 batches: list[Batch], make: Callable[[int], Any]) -> dict[str, _Group]:
    """Every pending layer's inputs from one full pass per batch (no layer quantized yet)."""
    groups: dict[str, _Group] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            group = groups.setdefault(name, _Group(make))
            if group.stats is None:
                group.stats = make(args[0].shape[-1])
            group.stats.add(args[0].detach().float())
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(*task.inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    return {name: groups[name] for name in pending if name in groups}


def _gptq(linear: nn.Linear, hessian: torch.Tensor, config: WeightOnly,
          report: dict[str, float]) -> WeightOnlyLinear:
    o = config.gptq
    weight = linear.weight.detach().float()
    codes, scale, offset = gptq_quantize(
        weight, hessian, bits=config.bits, group_size=config.group_size,
        symmetric=config.symmetric, damp_percent=o.damp_percent, block_size=o.block_size,
        act_order=o.act_order, dtype=SCALE_DTYPES[config.scale_dtype])
    new = WeightOnlyLinear.from_codes(linear, codes, scale, offset, bits=config.bits,
                                      group_size=config.group_size, cache=config.cache)
    report["error"] = hessian_error(weight, new.dequantized_weight(), hessian)
    return new


def _awq(linear: nn.Linear, stats: ActivationStats, config: WeightOnly,
         report: dict[str, float]) -> WeightOnlyLinear:
    bits, group, sym = config.bits, config.group_size, config.symmetric
    dtype = SCALE_DTYPES[config.scale_dtype]
    weight = linear.weight.detach().float()
    x = stats.sample()
    s, alpha, losses = search_scales(weight, x, stats.mean_abs(), bits=bits, group_size=group,
                                     symmetric=sym, grid=config.awq.grid, dtype=dtype)
    scaled = weight * s
    if config.awq.clip:
        bounds = search_clip(scaled, x[:512] / s, bits=bits, group_size=group, symmetric=sym,
                             grid=config.awq.grid, dtype=dtype)
        scaled = apply_clip(scaled, bounds, group)
    codes, scale, offset = quantize_groups(scaled, bits, group, sym, dtype)
    report.update(alpha=alpha, error=min(losses) / max(losses[0], 1e-30))
    return WeightOnlyLinear.from_codes(linear, codes, scale, offset, bits=bits, group_size=group,
                                       input_scale=s, cache=config.cache)


def _calibrated(model: nn.Module, chosen: list[tuple[str, nn.Linear]], config: WeightOnly,
                task: Task, ctx: Context) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Quantize `chosen` group by group in execution order; returns per-layer reports and the
    layers that never ran on the calibration data (those are rounded to nearest).

    Sequentially, layers inside the model's repeated blocks (a transformer's decoder layers) are
    calibrated block by block on cached block inputs (block_inputs.py); the others, and every
    layer when the model has no such blocks, by cut-short passes of the whole model."""
    batches = task.calibration_batches(config.calibration_batches)
    ctx.info["calibration"] = batches_used(task, batches, config.calibration_batches)
    pending = dict(chosen)
    reports: dict[str, dict[str, float]] = {}
    progress = iter(ctx.progress(range(len(chosen)), total=len(chosen), desc=config.method))

    def make(features: int) -> Any:
        if config.algorithm == "gptq":
            return HessianAccumulator(features)
        return ActivationStats(features, config.awq.max_rows, len(batches))

    def quantize_found(found: dict[str, _Group]) -> None:
        for name, stats in found.items():
            linear = pending.pop(name)
            report: dict[str, float] = {}
            if config.algorithm == "gptq":
                new = _gptq(linear, stats.stats.hessian, config, report)
            else:
                new = _awq(linear, stats.stats, config, report)
            swap_module(model, name, new, new.spec())
            reports[name] = {k: round(float(v), 6) for k, v in report.items()}
            next(progress, None)

    def run_groups(scope: dict[str, nn.Module], passes: list[Callable[[], Any]]) -> None:
        while scope:
            group = _Group(make)
            found = {name: group for name in group.capture(scope, passes)}
            if not found:
                return
            quantize_found(found)
            for name in found:
                scope.pop(name)

    model_passes = [lambda b=b: model(*task.inputs(b)) for b in batches]
    blocks = find_blocks(model, list(pending)) if config.sequential else None
    if blocks is not None:
        path, layers = blocks
        ctx.info["blocks"] = path
        calls = capture_first_block(model, layers[0], model_passes)
        for index, block in enumerate(layers):
            prefix = f"{path}.{index}."
            run_groups({n: m for n, m in pending.items() if n.startswith(prefix)},
                       block_passes(block, calls))
            if index + 1 < len(layers):
                calls = next_calls(block, calls)
        del calls
    if config.sequential:
        run_groups(dict(pending), model_passes)
    elif pending:
        quantize_found(_capture_all(model, pending, task, batches, make))
    unseen = list(pending)
    for name, linear in pending.items():
        log.warning("%s: %s never ran on calibration data; rounding to nearest", config.method,
                    name)
        _rtn(model, name, linear, config)
    return reports, unseen


def _rtn(model: nn.Module, name: str, linear: nn.Linear, config: WeightOnly) -> None:
    new = WeightOnlyLinear.from_linear(linear, bits=config.bits, group_size=config.group_size,
                                       symmetric=config.symmetric, scale_dtype=config.scale_dtype,
                                       cache=config.cache)
    swap_module(model, name, new, new.spec())


@register(WeightOnly)
def apply_weight_only(model: nn.Module, config: WeightOnly, ctx: Context) -> nn.Module:
    chosen = [(n, m) for n, m in config.targets.select(model, ("Linear",))
              if isinstance(m, nn.Linear)]
    if not chosen:
        raise SlimkitError("quantize.weight_only: targets match no Linear module")
    if config.algorithm == "rtn":
        for name, linear in chosen:
            _rtn(model, name, linear, config)
    else:
        task = ctx.require_task(config.method)
        was_training = model.training
        model.eval()  # calibration must not see dropout
        try:
            reports, unseen = _calibrated(model, chosen, config, task, ctx)
        finally:
            model.train(was_training)
        ctx.info["layers"] = reports
        ctx.info["unseen"] = unseen
    ctx.info["quantized"] = [name for name, _ in chosen]
    ctx.info["bits"] = config.bits
    ctx.info["algorithm"] = config.algorithm
    ctx.info["memory_mode"] = CACHED if config.cache else PACKED
    return model
