"""Models an artifact names as `transformers:Class`, rebuilt from their config alone: random
init, no weights read, no network, and nothing a config could make transformers run besides
the model class itself."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.errors import ArtifactError

_HF_KWARGS = {"config", "attn_implementation"}
_HF_ATTENTION = ("sdpa", "eager")  # built into transformers; other names fetch hub kernels
_HF_DTYPES = (None, "float32", "float16", "bfloat16")


def build_transformers(builder: str, kwargs: Any) -> nn.Module:
    """`transformers:Class` -> Class._from_config(config): random init, no weights read, no
    network. Only PreTrainedModel subclasses exported by the top-level package are accepted, and
    the config may not name a quantizer or a non-builtin attention kernel (both run extra code).
    """
    name = builder.partition(":")[2]
    try:
        import transformers
    except ImportError:
        raise ArtifactError(f"manifest: builder {builder!r} needs the transformers package "
                            "(pip install 'slimkit[encoders]')") from None
    try:
        cls = getattr(transformers, name, None) if name.isidentifier() else None
    except (ImportError, RuntimeError):  # the lazy module fails to import a submodule
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and getattr(cls, "config_class", None) is not None):  # not an abstract base
        raise ArtifactError(f"manifest: builder {builder!r} is not a transformers model class")
    config = kwargs.get("config") if isinstance(kwargs, dict) else None
    if not isinstance(config, dict) or set(kwargs) - _HF_KWARGS:
        raise ArtifactError(f"manifest: builder {builder!r} takes kwargs {sorted(_HF_KWARGS)} "
                            "with a config dict")
    attn = kwargs.get("attn_implementation", "sdpa")
    if attn not in _HF_ATTENTION or config.get("dtype") not in _HF_DTYPES \
            or "quantization_config" in config:
        raise ArtifactError(f"manifest: {builder!r} config asks for attention {attn!r}, dtype "
                            f"{config.get('dtype')!r} or a quantizer (only {_HF_ATTENTION}, "
                            f"{_HF_DTYPES[1:]}, none)")
    model_cls: Any = cls  # transformers' classmethods are untyped
    try:
        model: nn.Module = model_cls._from_config(model_cls.config_class.from_dict(config),
                                                  attn_implementation=attn)
    except Exception as exc:  # config validation raises many types; all mean a bad manifest
        raise ArtifactError(f"artifact: cannot build {builder!r} "
                            f"({type(exc).__name__}: {exc})") from None
    return model.eval()
