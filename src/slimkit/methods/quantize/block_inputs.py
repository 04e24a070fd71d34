"""Calibration block by block (GPTQ's "true sequential" order with each block's inputs cached):
the inputs of a model's first repeated block are captured once per calibration batch, then each
block runs on its cached inputs, its layers are quantized group by group inside it, and its
outputs (from the quantized block) become the next block's inputs. Nothing re-runs the model's
prefix, so a 30-block model costs a few block passes per block instead of a prefix per layer,
and memory holds one block's inputs per batch (the hidden states), not every layer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Call = tuple[tuple[Any, ...], dict[str, Any]]


class StopForward(Exception):
    """Raised by a capture hook: nothing after the captured input is needed."""


def find_blocks(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of at least two children of one class holding the most of `names` (the
    decoder layers of a transformer), or None when no such list holds any."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        inside = sum(1 for n in names if n.startswith(f"{path}."))
        if inside and (best is None or inside > best[0]):
            best = (inside, path, module)
    return None if best is None else (best[1], best[2])


def capture_first_block(model: nn.Module, block: nn.Module,
                        passes: list[Callable[[], Any]]) -> list[Call]:
    """The (args, kwargs) `block` is called with in each of `passes` (whole-model forwards),
    cut short as soon as the block is reached."""
    calls: list[Call] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((tuple(_detach(a) for a in args),
                      {k: _detach(v) for k, v in kwargs.items()}))
        raise StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for run in passes:
                try:
                    run()
                except StopForward:
                    pass
    finally:
        handle.remove()
    return calls


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def block_passes(block: nn.Module, calls: list[Call]) -> list[Callable[[], Any]]:
    return [lambda a=args, k=kwargs: block(*a, **k) for args, kwargs in calls]


def next_calls(block: nn.Module, calls: list[Call]) -> list[Call]:
    """The next block's calls: the same arguments with the hidden state replaced by this block's
    output (its first tensor when it returns a tuple)."""
    out: list[Call] = []
    with torch.no_grad():
        for args, kwargs in calls:
            result = block(*args, **kwargs)
            hidden = result[0] if isinstance(result, (tuple, list)) else result
            if args:
                out.append(((hidden, *args[1:]), kwargs))
            else:
                out.append(((), {**kwargs, "hidden_states": hidden}))
    return out
