"""Method configs and the registry that maps a method name to its config type and apply function.

A method is a frozen keyword-only dataclass (the data) plus one function
`(model, config, ctx) -> model` registered against it (the behaviour).
"""

from __future__ import annotations

import contextvars
import dataclasses
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .errors import ConfigError
from .fields import coerce, from_mapping, to_plain

if TYPE_CHECKING:
    from torch import nn

    from .context import Context


NOTHING: frozenset[str] = frozenset()
DATA = frozenset({"data"})
DATA_AND_TEACHER = frozenset({"data", "teacher"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config; subclasses set `method` and override `validate`."""

    method: ClassVar[str] = ""
    # Leaves int8 kernels without gradients in the model (read by check_plan: later training
    # is refused before any work instead of failing mid-run).
    leaves_int8_kernels: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # The same type and choice checks a YAML plan gets (fields.coerce), so that
        # Magnitude(scope="Global") fails here instead of silently running another scope;
        # normalised values (an int for a float, a list for a tuple) are stored as YAML would.
        for name, tp in _hints(type(self)).items():
            value = getattr(self, name)
            checked = coerce(value, tp, name)
            if checked is not value:
                object.__setattr__(self, name, checked)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and value when a value is out of range."""

    def requires(self) -> frozenset[str]:
        """What the step needs besides the model, as configured: "data" (the task's batches)
        and "teacher" (Context.teacher; compress_ makes one from the model as it was before
        the plan when none is given). compress_ reads it before any step runs."""
        return NOTHING

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **to_plain(self)}

    def summary(self) -> str:
        """One line a person reads in a report's table, the same for equal configs:
        `prune.magnitude 80% gradual 2 ep lr=0.0005 targets=tower.*,head`. The fields that
        differ from their defaults, plus the amount (sparsity, ratio, bits) even at its default,
        since a step without it says nothing about what it did."""
        parts = [self.method]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _HEADLINE or value != _default(f):
                parts.extend(_summary_parts(f.name, value, _default(f)))
        return " ".join(parts)

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> MethodConfig:
        body = {k: v for k, v in data.items() if k != "method"}
        config: MethodConfig = from_mapping(cls, body, prefix or cls.method)
        return config


# Fields shown even at their default, and choices whose value names itself ("gradual").
_HEADLINE = frozenset({"sparsity", "ratio", "bits"})
_BARE = frozenset({"schedule", "kind", "algorithm", "criterion", "observer", "scope"})
_PERCENT = {"sparsity": "", "ratio": "", "initial_sparsity": "from ", "head_ratio": "heads ",
            "budget": "budget "}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain_text(value: Any) -> str:
    """Compact scalar and list text: 0.0005, true, tower.*,head; dict keys sorted, so equal
    configs print the same; whitespace collapsed, so a summary stays one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(_plain_text(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join(f"{k}:{_plain_text(value[k])}" for k in sorted(value, key=str))
    else:
        text = str(value)
    return " ".join(text.split())


def _summary_parts(name: str, value: Any, default: Any) -> list[str]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Nested options (Targets, GPTQOptions): only their changed fields; a Targets' names
        # read as "targets=tower.*,head" rather than "targets.names=...".
        return [f"{name}={_plain_text(sub)}" if f.name == "names" else
                f"{name}.{f.name}={_plain_text(sub)}"
                for f in dataclasses.fields(value)
                for sub in [getattr(value, f.name)]
                if default is dataclasses.MISSING or sub != getattr(default, f.name)]
    if name in _PERCENT and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [f"{_PERCENT[name]}{round(value * 100, 2):g}%"]
    if name == "bits" and isinstance(value, int) and not isinstance(value, bool):
        return [f"{value}-bit"]
    if name == "epochs" and isinstance(value, (int, float)):
        return [f"{value:g} ep"]
    if name in _BARE and isinstance(value, str):
        return [value]
    return [f"{name}={_plain_text(value)}"]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[MethodConfig]) -> dict[str, Any]:
    """Annotations of the fields a config is built from (not ClassVars such as `method`)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS[cls]


ApplyFn = Callable[["nn.Module", Any, "Context"], "nn.Module"]
# field -> (lo, hi, lo_open, hi_open) of each check_range call while set (see core.describe).
RANGES: contextvars.ContextVar[dict[str, tuple[float, float, bool, bool]] | None] = \
    contextvars.ContextVar("RANGES", default=None)
C = TypeVar("C", bound=type[MethodConfig])
_REGISTRY: dict[str, tuple[type[MethodConfig], ApplyFn]] = {}


def register(config_cls: type[MethodConfig]) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: register `fn` as the apply function of `config_cls`."""

    def wrap(fn: ApplyFn) -> ApplyFn:
        name = config_cls.method
        if not name:
            raise TypeError(f"{config_cls.__name__} has no method name")
        if name in _REGISTRY and _REGISTRY[name][0] is not config_cls:
            raise TypeError(f"method {name!r} registered twice")
        _REGISTRY[name] = (config_cls, fn)
        return fn

    return wrap


def lookup(name: Any, field: str = "method") -> tuple[type[MethodConfig], ApplyFn]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(field, name, "a known method (" + ", ".join(method_names()) + ")")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def check_range(field: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> None:
    """Raise ConfigError unless lo <= value <= hi (with optional open ends)."""
    recorded = RANGES.get()
    if recorded is not None:  # core.describe collects the declared ranges this way
        recorded.setdefault(field, (lo, hi, lo_open, hi_open))
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(field, value, f"a value in {left}{lo}, {hi}{right}")


def check_training(config: Any, *, allow_zero_epochs: bool = False) -> None:
    """Shared range checks of the training knobs that several methods carry."""
    check_range("epochs", config.epochs, 0.0, 1000.0, lo_open=not allow_zero_epochs)
    check_range("lr", config.lr, 0.0, 10.0, lo_open=True)
    check_range("batch_size", config.batch_size, 1, 1 << 20)
    check_range("weight_decay", getattr(config, "weight_decay", 0.0), 0.0, 10.0)
