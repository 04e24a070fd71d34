"""The module classes an artifact may rebuild by name: an explicit registry, never an import of
whatever a manifest names. slimkit's own layers register themselves here the same way a user's
class does; torch.nn's layers are registered below."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar, overload

from torch import nn

from .errors import ArtifactError, SlimkitError
from .refs import importable_ref

M = TypeVar("M", bound=type[nn.Module])
_TYPES: dict[str, type[nn.Module]] = {}
_OWN_PACKAGE = "slimkit."


def type_name(cls: type) -> str:
    """The name a manifest records for `cls`: `package.module:QualName`."""
    return f"{cls.__module__}:{cls.__qualname__}"


@overload
def register_module_type(cls: M, *, name: str | None = None) -> M: ...
@overload
def register_module_type(cls: None = None, *, name: str | None = None) -> Callable[[M], M]: ...


def register_module_type(cls: M | None = None, *,
                         name: str | None = None) -> M | Callable[[M], M]:
    """Allow `load` to build `cls` when an artifact names it (as its model or a swapped layer).

        slimkit.register_module_type(MyRanker)   # or @slimkit.register_module_type on the class

    Registration is per process: the caller who imports the class decides that artifacts may
    rebuild it. Registering the same class again is a no-op; another class under a taken name is
    refused."""
    if cls is None:
        return lambda c: register_module_type(c, name=name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SlimkitError(f"register_module_type: expected an nn.Module subclass, got {cls!r}")
    key = name or type_name(cls)
    known = _TYPES.get(key)
    if known is not None and known is not cls:
        raise SlimkitError(f"register_module_type: name {key!r} is already taken by another "
                           "class; pass name='...' to register this one")
    _TYPES[key] = cls
    return cls


def needs_instance(spec: dict[str, object]) -> bool:
    """Whether an artifact's model (its manifest's "model" spec) is loaded into an instance the
    caller builds: a model saved without a `slimkit_spec` (any class, torch.nn's included, whose
    constructor arguments slimkit never saw) or a class from outside slimkit, torch and
    transformers."""
    builder = str(spec.get("builder", ""))
    return spec.get("instance") is True or \
        not builder.startswith((_OWN_PACKAGE, "torch.", "transformers:"))


def caller_types() -> list[str]:
    """Registered names of classes from outside slimkit and torch that a fresh process can
    import by name (for a child process that must load the same artifacts)."""
    return sorted(k for k, c in _TYPES.items()
                  if not c.__module__.startswith((_OWN_PACKAGE, "torch."))
                  and k == importable_ref(c))


def allow_caller_types(names: list[str]) -> None:
    """In a child process: register the classes its parent had registered (see caller_types)."""
    for ref in names:
        module_name, _, qualname = ref.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue  # recorded: a load that needs it is refused, naming the class
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            register_module_type(obj)


def module_type(ref: str) -> type[nn.Module]:
    """The registered class named `ref`; ArtifactError saying how to allow it otherwise.

    A name inside slimkit may be registered by a module not imported yet (a task's models load
    with their task); only then, and only slimkit's own module, is imported to look again."""
    cls = _TYPES.get(ref)
    module_name, _, attr = ref.partition(":")
    if cls is None and module_name.startswith(_OWN_PACKAGE) and attr:
        try:
            importlib.import_module(module_name)
        except ImportError:
            pass  # recorded: refused below as not registered
        cls = _TYPES.get(ref)
    if cls is None and module_name.startswith(_OWN_PACKAGE):
        raise ArtifactError(f"manifest: {ref!r} is not a module type of slimkit")
    if cls is None:
        shown = attr or ref
        raise ArtifactError(
            f"manifest: class {ref!r} is not a registered module type; if you trust it, call "
            f"slimkit.register_module_type({shown}) before loading, or pass "
            f"slimkit.load(path, model={shown}(...)) (CLI: --model package.module:factory)")
    return cls


def _register_torch_layers() -> None:
    for attr in nn.modules.__all__:
        obj = getattr(nn.modules, attr)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            register_module_type(obj)
            _TYPES[f"torch.nn:{attr}"] = obj  # the public spelling, as specs write it


_register_torch_layers()
