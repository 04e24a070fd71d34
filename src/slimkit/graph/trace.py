"""Trace a model into an ATen graph (torch.export) for dependency analysis.

Non-strict export runs the model's Python as written, so data-independent control flow, Hugging
Face outputs and caches are fine; what comes back is a flat graph of ATen operations with shapes
and, for every operation, the module that issued it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.errors import SlimkitError


class TraceError(SlimkitError):
    """The model could not be traced; nothing was changed."""


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors inside a model output (tensor, tuple, list, dict or Hugging Face output)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in tensors_of(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in tensors_of(v)]
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return [t for f in dataclasses.fields(output) for t in tensors_of(getattr(output, f.name))]
    to_tuple = getattr(output, "to_tuple", None)
    return tensors_of(to_tuple()) if callable(to_tuple) else []


def eval_outputs(model: nn.Module, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """The model's output tensors (as float) on `inputs` in eval mode without gradients; the
    model's training mode is restored."""
    was_training = model.training
    try:
        with torch.no_grad():
            return [t.detach().float() for t in tensors_of(model.eval()(*inputs))]
    finally:
        model.train(was_training)


class _Flat(nn.Module):
    """Calls the model and returns its output tensors, so export never sees cache objects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(tensors_of(self.m(*args, **kwargs)))


@dataclasses.dataclass
class Traced:
    graph: torch.fx.Graph
    params: dict[str, str]  # placeholder name -> parameter or buffer name in the model
    inputs: list[str]  # placeholder names of the user inputs
    module_types: dict[str, str]  # module path -> class name
    transient: set[str]  # non-persistent buffers: not saved, so their sizes must stay


def trace(model: nn.Module, example_inputs: Sequence[Any],
          example_kwargs: dict[str, Any] | None = None) -> Traced:
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(_Flat(model), tuple(example_inputs),
                                          example_kwargs or {}, strict=False)
    except Exception as exc:  # export raises many exception types for unsupported code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"cannot trace {type(model).__name__}: {first[:200]}") from None
    finally:
        model.train(was_training)
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    if not outputs:
        raise TraceError(f"cannot trace {type(model).__name__}: its output holds no tensor "
                         "slimkit can see (return tensors, tuples, dicts or dataclasses)")
    sig = program.graph_signature
    params = {k: _strip(v) for k, v in {**sig.inputs_to_parameters,
                                         **sig.inputs_to_buffers}.items()}
    module_types = {name: type(m).__name__ for name, m in model.named_modules()}
    transient = {f"{path}.{b}" if path else b for path, m in model.named_modules()
                 for b in m._non_persistent_buffers_set}
    return Traced(program.graph, params, list(sig.user_inputs), module_types, transient)


def captured_inputs(model: nn.Module, inputs: Sequence[Any]
                    ) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) each submodule receives on its first call in one eager forward."""
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen.setdefault(name, (args, kwargs))
        return fn

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True)
               for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _strip(name: str) -> str:
    return name[2:] if name.startswith("m.") else name


def issuing_module(node: torch.fx.Node) -> str:
    """Path (in the user's model) of the innermost module that issued `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    return _strip(path) if path != "m" else ""
