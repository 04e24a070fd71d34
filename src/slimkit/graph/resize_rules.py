"""Resize rules: per module type, the size attributes a module needs once structured pruning has
sliced its tensors. Torch layers' rules are registered here; users register their own blocks'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from torch import nn

from ..core.errors import SlimkitError


class ResizeRuleError(SlimkitError):
    """A resize rule failed or returned something unusable; the group it was cutting is refused."""


@dataclasses.dataclass(frozen=True)
class Resize:
    """What a cut did to one module, as its resize rule sees it.

    `shapes` and `old_shapes` hold the tensors of the module and its submodules that were cut,
    named relative to the module ("weight", "q.weight"). `sizes` maps the old size of every
    dimension cut where the module takes part (its tensors, or operations its forward runs) to
    its new size; a size two such dimensions shared before but not after is left out.
    """

    path: str
    shapes: dict[str, tuple[int, ...]]
    old_shapes: dict[str, tuple[int, ...]]
    sizes: dict[int, int]
    ambiguous: frozenset[int] = frozenset()

    def new_size(self, old: int) -> int:
        """`old`'s new size (`old` itself if no cut dimension had that size); an error if two
        cut dimensions of size `old` now differ, since guessing would corrupt the module."""
        if old in self.ambiguous:
            raise ValueError(f"size {old} is ambiguous in {self.path or 'the model'}: several "
                             "dimensions of that size were cut differently")
        return self.sizes.get(old, old)


M = TypeVar("M", bound=nn.Module)
R = TypeVar("R", bound=Callable[..., Mapping[str, Any] | None])
ResizeRule = Callable[[Any, Resize], Mapping[str, Any] | None]
_RULES: dict[type, ResizeRule] = {}


@overload
def register_resize_rule(cls: type[M], rule: None = None) -> Callable[[R], R]: ...
@overload
def register_resize_rule(cls: type[M], rule: R) -> R: ...


def register_resize_rule(cls: type[M], rule: R | None = None) -> Any:
    """Register `rule(module, resize) -> {attribute: value}` for modules of type `cls`.

    Structured pruning calls it after slicing the tensors, for every module a cut reaches (one
    whose tensors or submodules' tensors were cut, or whose forward handles a cut dimension),
    children before parents, so a block's rule can read its layers' updated attributes. It
    returns the values the module needs for its new shapes (or sets them and returns None); they
    are logged in the resize edit so `load` restores them, so they must be JSON data (numbers,
    strings, lists). Raising refuses the cut of that group. For its type, a rule replaces the
    probe that guesses size attributes by name. Lookup is by exact type, then along the MRO; a
    subclass found through the MRO still has its other attributes probed. Usable as a decorator:

        @register_resize_rule(MyAttention)
        def _(module, resize):  # q: Linear(dim, n_heads * head_dim)
            return {"n_heads": module.q.out_features // module.head_dim}

    or `register_resize_rule(MySplit, lambda m, r: {"parts": r.new_size(m.parts)})`.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SlimkitError(f"register_resize_rule: {cls!r} is not an nn.Module subclass")

    def add(fn: R) -> R:
        if not callable(fn):
            raise SlimkitError(f"register_resize_rule: the rule for {cls.__name__} must be "
                               f"callable as rule(module, resize), not {fn!r}")
        _RULES[cls] = fn
        return fn

    return add if rule is None else add(rule)


def find_rule(cls: type) -> tuple[type, ResizeRule] | None:
    """The rule for `cls` and the type it was registered for: exact type, then along the MRO."""
    for base in cls.__mro__:
        if base in _RULES:
            return base, _RULES[base]
        named = _BY_NAME.get(f"{base.__module__}.{base.__qualname__}")
        if named is not None:
            return base, named
    return None


def apply_rule(module: nn.Module, resize: Resize) -> dict[str, Any]:
    """Run `module`'s rule, if any; returns the attribute values it gives (not yet set)."""
    found = find_rule(type(module))
    if found is None:
        return {}
    before = {k: v for k, v in vars(module).items() if _is_data(v)}
    try:
        values = found[1](module, resize)
    except Exception as exc:  # a user's rule may raise anything: re-raised, naming the module
        raise ResizeRuleError(f"resize rule for {type(module).__name__} at "
                           f"{resize.path or 'the model'!r} failed ({type(exc).__name__}: "
                           f"{exc})") from exc
    if values is None:
        # The rule set the attributes itself: log what it changed.
        values = {k: v for k, v in vars(module).items()
                  if _is_data(v) and (k not in before or before[k] != v)}
    if not isinstance(values, Mapping) or not all(
            isinstance(k, str) and _is_data(v) for k, v in values.items()):
        raise ResizeRuleError(f"resize rule for {type(module).__name__} must return a dict of "
                           f"attribute name -> JSON data (logged for load), not {values!r}")
    return dict(values)


def _is_data(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    return isinstance(value, (bool, int, float, str))


# slimkit's own rules, registered as a user's are: torch layers, whose size attributes
# follow from their weights' shapes.

@register_resize_rule(nn.Linear)
def _linear(module: nn.Module, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight
    return {"in_features": w.shape[1], "out_features": w.shape[0]}


@register_resize_rule(nn.modules.conv._ConvNd)
def _conv(module: nn.modules.conv._ConvNd, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight
    depthwise = module.groups > 1 and module.groups == module.in_channels
    out = w.shape[1] * module.groups if module.transposed else w.shape[0]
    groups = out if depthwise else module.groups
    cin = w.shape[0] if module.transposed else w.shape[1] * groups
    return {"in_channels": cin, "out_channels": out, "groups": groups}


@register_resize_rule(nn.modules.batchnorm._NormBase)
def _norm(module: nn.Module, resize: Resize) -> dict[str, Any]:
    ref: Any = module.weight if module.weight is not None else module.running_mean
    return {} if ref is None else {"num_features": ref.shape[0]}


@register_resize_rule(nn.LayerNorm)
def _layer_norm(module: nn.Module, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight
    return {} if w is None else {"normalized_shape": list(w.shape)}


@register_resize_rule(nn.GroupNorm)
def _group_norm(module: nn.Module, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight
    return {} if w is None else {"num_channels": w.shape[0]}


@register_resize_rule(nn.Embedding)
@register_resize_rule(nn.EmbeddingBag)
def _embedding(module: nn.Module, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight
    return {"embedding_dim": w.shape[1], "num_embeddings": w.shape[0]}


def _conv1d(module: nn.Module, resize: Resize) -> dict[str, Any]:
    w: Any = module.weight  # [in, out]: a Linear stored transposed (GPT-2's Conv1D)
    return {"nx": w.shape[0], "nf": w.shape[1]}


# Third-party layers whose sizes follow from their weights, matched by qualified name so their
# package is never imported here.
_BY_NAME: dict[str, ResizeRule] = {"transformers.pytorch_utils.Conv1D": _conv1d}
