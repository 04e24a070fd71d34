"""Weight-only low-bit quantization of Linear layers: round-to-nearest, GPTQ (Frantar et al. 2022)
or AWQ (Lin et al. 2023), stored packed as WeightOnlyLinear (8/4/3/2 bits, group-wise scales).

GPTQ and AWQ quantize layers in execution order; each layer's inputs are captured on the task's
calibration batches with the earlier layers already quantized, so later layers correct for the
error upstream (as the GPTQ paper does). In a model with repeated blocks (a transformer's
layers) this runs block by block on cached block inputs (methods/layerwise.py), elsewhere by
cut-short passes of the whole model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import torch
from torch import nn

from ...core import Context, MethodConfig, Targets, check_range, register
from ...core.config import DATA, NOTHING
from ...core.errors import ConfigError, SlimkitError
from ...core.task import Task, batches_used
from ...graph import swap_module
from ...nn.double_quant import PARAM_BITS, DoubleQuant, quantize_groups_dq
from ...nn.groupwise import BITS, quantize_groups
from ...nn.lowbit_embedding import WeightOnlyEmbedding
from ...nn.lowbit_linear import SCALE_DTYPES, WeightOnlyLinear
from ...nn.runtime_memory import CACHED, PACKED
from ..layerwise import HessianAccumulator, InputGroup, calibrate_in_order
from .awq import ActivationStats, apply_clip, search_clip, search_scales
from .bit_allocation import allocate_bits
from .gptq import gptq_quantize, gptq_quantize_dq, hessian_error
from .tied_embedding import quantize_embedding, quantize_tied_embedding, table_targets

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
    memory); off by default, so a layer holds only its packed codes and scales.
    `embedding_bits` (0: leave them as they are) quantizes the embedding tables the targets' names
    match too, group-wise along the embedding width in groups of `embedding_group_size` (0: as
    `group_size`), into WeightOnlyEmbedding. A table tied to an output head (a language model's
    `lm_head`) stays one table: the head reads the same codes (TiedLowBitHead), and with
    algorithm "gptq" the shared codes come from GPTQ on the head's inputs, the table's larger
    use (every position reads all of it); otherwise tables are rounded to nearest.
    `param_bits` 6 or 8 stores the group scales and offsets themselves as that many bits per
    group on a per-row fp16 grid (double quantization, nn/double_quant.py; 0: fp16/fp32 as
    `scale_dtype`), for Linears and tables alike; RTN, GPTQ and AWQ round against the stored
    parameters.
    `target_bits` > 0: each Linear (and table, with `embedding_bits`) takes its own width from
    `bit_choices` so that the whole model stores at most that many bits per weight, chosen by
    each layer's estimated KL divergence (bit_allocation.py: diagonal Fisher on
    `allocation_batches` calibration batches, one backward pass per row); `bits` and
    `embedding_bits` then only say which layers take part."""

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
    embedding_bits: int = 0
    embedding_group_size: int = 0
    param_bits: int = 0
    target_bits: float = 0.0
    bit_choices: tuple[int, ...] = (2, 3, 4, 8)
    allocation_batches: int = 2
    targets: Targets = Targets()

    def requires(self) -> frozenset[str]:
        return DATA if self.algorithm != "rtn" or self.target_bits else NOTHING

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
        if self.embedding_bits not in (0, *BITS):
            raise ConfigError("embedding_bits", self.embedding_bits,
                              "0 (keep them) or one of 8, 4, 3, 2")
        if self.embedding_group_size != -1:
            check_range("embedding_group_size", self.embedding_group_size, 0, 1 << 20)
        if self.param_bits not in (0, *PARAM_BITS):
            raise ConfigError("param_bits", self.param_bits, "0 (float group parameters), 6 or 8")
        if self.target_bits:
            check_range("target_bits", self.target_bits, 1.0, 32.0)
        if not self.bit_choices or len(set(self.bit_choices)) != len(self.bit_choices) or any(
                b not in BITS for b in self.bit_choices):
            raise ConfigError("bit_choices", list(self.bit_choices),
                              "a list without repeats of 8, 4, 3, 2")
        check_range("allocation_batches", self.allocation_batches, 1, 1 << 16)


def _gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, config: WeightOnly, bits: int,
                group_size: int) -> tuple[torch.Tensor, torch.Tensor | DoubleQuant,
                                          torch.Tensor | None]:
    """GPTQ codes and group parameters (a DoubleQuant, offset None, when config.param_bits)."""
    o = config.gptq
    common: dict[str, Any] = dict(
        bits=bits, group_size=group_size, symmetric=config.symmetric,
        damp_percent=o.damp_percent, block_size=o.block_size, act_order=o.act_order,
        dtype=SCALE_DTYPES[config.scale_dtype])
    if config.param_bits:
        codes, dq = gptq_quantize_dq(weight, hessian, param_bits=config.param_bits, **common)
        return codes, dq, None
    return gptq_quantize(weight, hessian, **common)


# Rows of a table quantized at once: GPTQ's copies of a 49152-row table are 113 MB each.
TABLE_ROWS = 8192


def _gptq_codes_by_rows(weight: torch.Tensor, hessian: torch.Tensor, config: WeightOnly,
                        bits: int, group_size: int, rows: int = TABLE_ROWS
                        ) -> tuple[torch.Tensor, torch.Tensor | DoubleQuant, torch.Tensor | None]:
    """`_gptq_codes` a block of rows at a time, with the same result: GPTQ treats rows
    independently given the Hessian (act-order's permutation depends on the Hessian alone), so
    only the temporaries shrink."""
    parts = [_gptq_codes(weight[start:start + rows], hessian, config, bits, group_size)
             for start in range(0, weight.shape[0], rows)]
    codes = torch.cat([p[0] for p in parts])
    first = parts[0][1]
    if isinstance(first, DoubleQuant):
        blocks = [p[1] for p in parts]
        joined = {f.name: (torch.cat([getattr(b, f.name) for b in blocks])
                           if isinstance(getattr(first, f.name), torch.Tensor)
                           else getattr(first, f.name))
                  for f in dataclasses.fields(first)}
        return codes, DoubleQuant(**joined), None
    offsets = [p[2] for p in parts]
    return (codes, torch.cat([p[1] for p in parts]),  # type: ignore[misc]
            None if offsets[0] is None else torch.cat(offsets))  # type: ignore[arg-type]


def _gptq(linear: nn.Linear, hessian: torch.Tensor, config: WeightOnly, bits: int,
          report: dict[str, float]) -> WeightOnlyLinear:
    weight = linear.weight.detach().float()
    codes, scale, offset = _gptq_codes(weight, hessian, config, bits, config.group_size)
    new = WeightOnlyLinear.from_codes(linear, codes, scale, offset, bits=bits,
                                      group_size=config.group_size, cache=config.cache)
    report["error"] = hessian_error(weight, new.dequantized_weight(), hessian)
    return new


def _awq(linear: nn.Linear, stats: ActivationStats, config: WeightOnly, bits: int,
         report: dict[str, float]) -> WeightOnlyLinear:
    group, sym = config.group_size, config.symmetric
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
    if config.param_bits:
        # The searches above weigh plain group parameters; the stored ones are rounded to
        # param_bits on each row's grid, and the codes are rounded against those.
        codes, dq = quantize_groups_dq(scaled, bits, group, sym, config.param_bits, dtype)
        scale, offset = dq, None
    else:
        codes, scale, offset = quantize_groups(scaled, bits, group, sym, dtype)
    report.update(alpha=alpha, error=min(losses) / max(losses[0], 1e-30))
    return WeightOnlyLinear.from_codes(linear, codes, scale, offset, bits=bits, group_size=group,
                                       input_scale=s, cache=config.cache)


def _calibrated(model: nn.Module, names: list[str], config: WeightOnly,
                widths: dict[str, int], task: Task, ctx: Context
                ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Quantize the Linears `names` in execution order (layerwise.calibrate_in_order); returns
    per-layer reports and the layers that never ran on the calibration data (rounded to
    nearest)."""
    batches = task.calibration_batches(config.calibration_batches)
    ctx.info["calibration"] = batches_used(task, batches, config.calibration_batches)
    reports: dict[str, dict[str, float]] = {}
    progress = iter(ctx.progress(range(len(names)), total=len(names), desc=config.method))

    def make(features: int) -> Any:
        if config.algorithm == "gptq":
            return HessianAccumulator(features)
        return ActivationStats(features, config.awq.max_rows, len(batches))

    def quantize(name: str, linear: nn.Module, stats: Any) -> None:
        report: dict[str, float] = {}
        bits = widths.get(name, config.bits)
        if config.algorithm == "gptq":
            new = _gptq(linear, stats.hessian, config, bits, report)
        else:
            new = _awq(linear, stats, config, bits, report)
        swap_module(model, name, new, new.spec())
        reports[name] = {k: round(float(v), 6) for k, v in report.items()}
        next(progress, None)

    pending = {name: model.get_submodule(name) for name in names}  # consumed as layers go
    unseen = calibrate_in_order(model, pending, [lambda b=b: model(*task.inputs(b))
                                                      for b in batches],
                                make=make, handle=quantize, sequential=config.sequential,
                                info=ctx.info)
    for name in unseen:
        log.warning("%s: %s never ran on calibration data; rounding to nearest", config.method,
                    name)
        _rtn(model, name, model.get_submodule(name), config, widths.get(name, config.bits))
    return reports, unseen


def _rtn_linear(linear: nn.Linear, config: WeightOnly, bits: int) -> WeightOnlyLinear:
    return WeightOnlyLinear.from_linear(linear, bits=bits, group_size=config.group_size,
                                        symmetric=config.symmetric, scale_dtype=config.scale_dtype,
                                        cache=config.cache, param_bits=config.param_bits)


def _rtn(model: nn.Module, name: str, linear: nn.Linear, config: WeightOnly, bits: int) -> None:
    new = _rtn_linear(linear, config, bits)
    swap_module(model, name, new, new.spec())


def _table_options(config: WeightOnly, bits: int) -> dict[str, Any]:
    return {"bits": bits, "symmetric": config.symmetric,
            "group_size": config.embedding_group_size or config.group_size,
            "scale_dtype": config.scale_dtype, "param_bits": config.param_bits}


def _quantize_tables(model: nn.Module, config: WeightOnly, widths: dict[str, int],
                     task: Task | None, ctx: Context) -> list[str]:
    """The embedding tables (see WeightOnly's docstring); returns the names quantized."""
    pairs, tables = table_targets(model, config.targets)
    done = []
    for name in tables:
        quantize_embedding(model, name,
                           **_table_options(config, widths.get(name, config.embedding_bits)))
        done.append(name)
    for table_name, head_name in pairs:
        head = model.get_submodule(head_name)
        hessian = None
        if config.algorithm == "gptq" and task is not None:
            batches = task.calibration_batches(config.calibration_batches)
            group = InputGroup(HessianAccumulator)
            found = group.capture({head_name: head},
                                  [lambda b=b: model(*task.inputs(b)) for b in batches])
            hessian = group.stats.hessian if found else None
        weight = head.weight.detach().float()
        options = _table_options(config, widths.get(table_name, config.embedding_bits))
        table, _ = quantize_tied_embedding(model, table_name, head_name, **options)
        if hessian is not None:
            codes, scale, offset = _gptq_codes_by_rows(weight, hessian, config, table.bits,
                                                       table.group_size)
            table.set_codes(codes, scale, offset)
            ctx.info.setdefault("layers", {})[head_name] = {
                "error": round(hessian_error(weight, table.dequantized_weight(), hessian), 6)}
        done += [table_name, head_name]
    return done


def _allocate(model: nn.Module, names: list[str], config: WeightOnly,
              ctx: Context) -> dict[str, int]:
    """Per-layer widths for `target_bits` (bit_allocation.py); {} when it is off."""
    if not config.target_bits:
        return {}
    weights: dict[str, nn.Parameter] = {}
    builders: dict[str, Any] = {}
    leave_out: set[str] = set()
    extra: dict[str, int] = {}
    for name in names:
        linear = model.get_submodule(name)
        weights[name] = linear.weight
        if config.algorithm == "awq":  # its fp32 input scale, at every width
            extra[name] = 4 * linear.in_features
        builders[name] = lambda bits, linear=linear: _rtn_linear(linear, config, bits)
        leave_out |= {f"{name}.weight", f"{name}.bias"}
    if config.embedding_bits:
        pairs, tables = table_targets(model, config.targets)
        for name in tables + [table for table, _ in pairs]:
            embedding = model.get_submodule(name)
            weights[name] = embedding.weight
            builders[name] = lambda bits, e=embedding: WeightOnlyEmbedding.from_embedding(
                e, **_table_options(config, bits))
            leave_out.add(f"{name}.weight")
        leave_out |= {f"{head}.weight" for _, head in pairs}
    task = ctx.require_task(config.method)
    batches = task.calibration_batches(config.allocation_batches)
    widths, report = allocate_bits(model, task, batches, weights=weights, builders=builders,
                                   leave_out=frozenset(leave_out), choices=config.bit_choices,
                                   target_bits=config.target_bits, extra_bytes=extra)
    ctx.info["allocation"] = {**report, "widths": widths}
    return widths


@register(WeightOnly)
def apply_weight_only(model: nn.Module, config: WeightOnly, ctx: Context) -> nn.Module:
    # Names, not modules: nothing here should keep a replaced Linear alive.
    names = [n for n, m in config.targets.select(model, ("Linear",)) if isinstance(m, nn.Linear)]
    if not names:
        raise SlimkitError("quantize.weight_only: targets match no Linear module")
    was_training = model.training
    model.eval()  # calibration must not see dropout
    try:
        widths = _allocate(model, names, config, ctx)
        if config.algorithm == "rtn":
            for name in names:
                _rtn(model, name, model.get_submodule(name), config, widths.get(name, config.bits))
        else:
            task = ctx.require_task(config.method)
            reports, unseen = _calibrated(model, names, config, widths, task, ctx)
            ctx.info["layers"] = reports
            ctx.info["unseen"] = unseen
        tables = _quantize_tables(model, config, widths,
                                  ctx.task if config.algorithm == "gptq" else None,
                                  ctx) if config.embedding_bits else []
    finally:
        model.train(was_training)
    ctx.info["quantized"] = names + tables
    ctx.info["bits"] = config.bits
    ctx.info["algorithm"] = config.algorithm
    ctx.info["memory_mode"] = CACHED if config.cache else PACKED
    return model
