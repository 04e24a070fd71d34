"""Hugging Face transformers models as slimkit models: tiny seeded builders, the artifact spec,
example inputs and the main output tensor. transformers is imported lazily (an optional extra).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.module_types import register_module_type

# Uniform knob names (those of BertConfig / LlamaConfig) for every arch; GPT-2 spells them
# differently and is translated in tiny_config. Sizes: hidden 256, 8 heads of 32, FFN 1024 --
# hidden, head count and head_dim all distinct so a pruning bug that mixes them up shows.
_COMMON: dict[str, Any] = {"vocab_size": 1000, "hidden_size": 256, "num_hidden_layers": 4,
                           "num_attention_heads": 8, "intermediate_size": 1024,
                           "max_position_embeddings": 256, "use_cache": False,
                           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "BertModel", {}),
    "gpt2": ("GPT2Config", "GPT2Model", {}),
    # Multi-head attention (key/value heads default to the query heads); tied lm_head like
    # SmolLM2, so tied weights are exercised by save/load.
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    # Grouped-query attention: 8 query heads share 2 key/value heads; untied lm_head.
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              {"num_key_value_heads": 2, "tie_word_embeddings": False}),
}
_GPT2_NAMES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
               "num_attention_heads": "n_head", "intermediate_size": "n_inner",
               "max_position_embeddings": "n_positions"}
# Attention kernels a rebuilt model may use: both ship with transformers. Other values name
# hub kernels that would be downloaded and run, so an artifact may not ask for them.
ATTENTION = ("sdpa", "eager")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("slimkit.models.hf needs transformers (pip install "
                          "'slimkit[encoders]')") from None
    return transformers


def tiny_config(arch: str, **overrides: Any) -> Any:
    """A small config for `arch` in ARCHS; `overrides` use the uniform names of _COMMON (or the
    arch's own config fields)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
    config_name, _, extra = ARCHS[arch]
    values = {**_COMMON, **extra, **overrides}
    if arch == "gpt2":
        values = {_GPT2_NAMES.get(k, k): v for k, v in values.items()}
    return getattr(_transformers(), config_name)(**values)


def tiny_model(arch: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised (seeded) model of `arch` in eval mode, with slimkit_spec set.

    The global torch RNG is left as it was: initialisation draws from a forked generator.
    """
    config = tiny_config(arch, **overrides)
    cls = getattr(_transformers(), ARCHS[arch][1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation="sdpa")
    return attach_spec(model.eval())


def is_hf_model(model: object) -> bool:
    """True for a transformers PreTrainedModel, without importing transformers."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(model).__mro__)


def hf_spec(model: nn.Module) -> dict[str, Any]:
    """The artifact spec of a transformers model: its class in the transformers namespace and its
    full config as JSON data (the loader rebuilds it with `_from_config`, no download)."""
    if not is_hf_model(model):
        raise TypeError(f"hf_spec: {type(model).__name__} is not a transformers PreTrainedModel")
    cls = type(model)
    if getattr(_transformers(), cls.__name__, None) is not cls:
        raise TypeError(f"hf_spec: {cls.__name__} is not exported by the transformers package")
    # A JSON round trip makes the spec exactly what the manifest will hold (int label keys
    # become strings) and fails here, not in save, on a value JSON cannot hold.
    config = json.loads(json.dumps(_config(model).to_dict()))
    # The rebuilt model must have the weights' dtype, whatever the config says (a model cast
    # with .half() keeps config.dtype float32); load_state_dict would otherwise cast silently.
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if dtypes:
        config["dtype"] = str(dtypes[0]).removeprefix("torch.")
    attn = getattr(_config(model), "_attn_implementation", None)
    return {"builder": f"transformers:{cls.__name__}",
            "kwargs": {"config": config,
                       "attn_implementation": attn if attn in ATTENTION else "sdpa"}}


def attach_spec(model: nn.Module) -> nn.Module:
    """Set `model.slimkit_spec` so slimkit.save / slimkit.load handle it; returns the model."""
    model.slimkit_spec = hf_spec(model)  # type: ignore[assignment]
    return model


def _config(model: nn.Module) -> Any:
    return model.config


def _positional(model: nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask) usable as `model(*inputs)`; only (input_ids,) where the
    model's second positional argument is not the mask (GPT2Model takes past_key_values there).

    The last row is right-padded over its last quarter, so masks are exercised.
    """
    vocab = int(_config(model).vocab_size)
    gen = torch.Generator().manual_seed(seed)
    # Ids from 3 up: 0-2 are the special tokens of the tiny configs.
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    if _positional(model)[1:2] != ["attention_mask"]:
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq - max(1, seq // 4):] = 0
    return ids, mask


def first_tensor(output: Any) -> torch.Tensor:
    """The main tensor of any HF output: logits, else last_hidden_state, else the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict
        for key in ("logits", "last_hidden_state"):
            if isinstance(value := output.get(key), torch.Tensor):
                return value
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"first_tensor: no tensor in a {type(output).__name__}")


@register_module_type
class MainOutput(nn.Module):
    """Wraps an HF model so that `forward(*inputs)` returns its main tensor (for ONNX export).

    Passes an all-ones attention mask when the inputs carry none: without a mask transformers
    looks for packed sequences with `torch.diff`, which the TorchScript exporter cannot export.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        positional = _positional(model)
        takes_mask = "attention_mask" in inspect.signature(model.forward).parameters
        # Inputs fill positional parameters in order: the mask is given iff there are more
        # inputs than its position.
        self.mask_at = positional.index("attention_mask") if "attention_mask" in positional \
            else (len(positional) if takes_mask else None)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        extra: dict[str, torch.Tensor] = {}
        # Token ids only: a vision model may accept a mask too, but not one shaped like pixels.
        if self.mask_at is not None and len(inputs) <= self.mask_at \
                and not inputs[0].is_floating_point():
            extra["attention_mask"] = torch.ones_like(inputs[0])
        return first_tensor(self.model(*inputs, **extra))
