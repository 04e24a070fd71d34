"""Load without allocating twice: build the module tree with storage-less (meta) weights, then
assign the artifact's tensors, read from the weights file one at a time, as the model's own.

The classic path (random init, then copy into it, with the whole file decoded beside it) peaks at
about twice the model; this one peaks at the model plus one tensor's decoding buffers.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import torch
from torch import nn

from ..core.errors import ArtifactError
from .encoding import ALIAS, decode, resolve_alias

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_BUILD_LOCK = threading.Lock()
_TRIM_BYTES = 1 << 20


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Parameters and persistent buffers registered by this thread are created on the meta device.

    Non-persistent buffers (rotary `inv_freq`, causal masks, position ids) stay real: they are
    not in the artifact, so they must be computed by the constructor as usual. Other threads
    building modules meanwhile are unaffected.
    """
    owner = threading.get_ident()
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def meta_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        # Exact Parameter only: subclasses (lazy, uninitialized) carry their own semantics.
        if type(param) is nn.Parameter and threading.get_ident() == owner and not param.is_meta:
            param = nn.Parameter(torch.empty_like(param, device="meta"),
                                 requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def meta_buffer(self: nn.Module, name: str, tensor: torch.Tensor | None,
                    persistent: bool = True) -> None:
        if persistent and tensor is not None and threading.get_ident() == owner:
            tensor = torch.empty_like(tensor, device="meta")
        register_buffer(self, name, tensor, persistent)

    inits = {name: getattr(nn.init, name) for name in _INITS if hasattr(nn.init, name)}
    with _BUILD_LOCK:
        nn.Module.register_parameter = meta_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = meta_buffer  # type: ignore[method-assign]
        for name, init in inits.items():
            setattr(nn.init, name, _skip_on_meta(init))
        try:
            yield
        finally:
            nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
            nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
            for name, init in inits.items():
                setattr(nn.init, name, init)


# Random initialisation of a meta tensor does nothing, but its kernels are Python references
# that import torch._dynamo (sympy included): ~75 MB resident for nothing. Skip them.
_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
          "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
          "orthogonal_", "sparse_")


def _skip_on_meta(init: Any) -> Any:
    def maybe_init(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return init(tensor, *args, **kwargs)

    return maybe_init


class TensorFile:
    """Reads single tensors of a safetensors file straight into their own memory (no mmap, so
    pages already copied do not stay resident beside the copies)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        size = int.from_bytes(fh.read(8), "little")
        self._header: dict[str, Any] = json.loads(fh.read(size))
        self._data_start = 8 + size

    def __contains__(self, key: str) -> bool:
        return key != "__metadata__" and key in self._header

    def read(self, key: str) -> torch.Tensor:
        info = self._header[key]
        dtype, shape = _DTYPES.get(info["dtype"]), [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        if dtype is None:
            raise ArtifactError(f"artifact: tensor part {key!r} has dtype {info['dtype']!r}")
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * dtype.itemsize:
            raise ArtifactError(f"artifact: tensor part {key!r} has {end - begin} bytes for "
                                f"shape {shape}")
        raw = torch.empty(end - begin, dtype=torch.uint8)
        self._fh.seek(self._data_start + begin)
        if end > begin and self._fh.readinto(raw.numpy()) != end - begin:  # type: ignore[attr-defined]
            raise ArtifactError(f"artifact: tensor part {key!r} is truncated")
        return raw.view(dtype).reshape(shape)

    def parts(self, keys: Any) -> dict[str, torch.Tensor]:
        """The named parts that exist (a missing one is reported by the decoder)."""
        return {key: self.read(key) for key in keys if key in self}


def decode_state(metas: dict[str, Any], reader: TensorFile,
                  tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every manifest tensor, read and verified one at a time; a tied copy stored with the same
    bytes as its first name is decoded once (older artifacts stored each name), and an alias
    entry (`same_as`) is the very tensor decoded for the name it points at."""
    state: dict[str, torch.Tensor] = {}
    try:
        for name, meta in metas.items():
            if ALIAS in meta:
                continue  # resolved below, once every stored tensor is decoded
            first = tied.get(name, name)
            if first != name and first in state and _same_stored(metas[first], meta):
                state[name] = state[first]
            else:
                state[name] = decode(name, meta, reader.parts(meta["sha256"]))
                if meta["encoding"] != "dense" \
                        or state[name].numel() * state[name].element_size() >= _TRIM_BYTES:
                    # Checksums and decoding (Huffman lookup tables, int64 symbols) free
                    # buffers larger than the tensor; glibc would keep them resident.
                    release_freed_heap()
        stored = dict(state)  # an alias must point at a stored tensor, never at another alias
        for name, meta in metas.items():
            if ALIAS in meta:
                state[name] = resolve_alias(name, meta, stored)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ArtifactError(f"artifact: malformed manifest ({type(exc).__name__}: {exc})") \
            from None
    return {name: state[name] for name in metas}


def _same_stored(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("shape", "dtype", "encoding")) \
        and list(a["sha256"].values()) == list(b["sha256"].values())


def tie_groups(model: nn.Module) -> dict[str, str]:
    """Tensor name -> the first name holding the same tensor object (tied weights)."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(t), name) for name, t in _slots(model).items()}


def shared_names(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """State-dict name -> the earlier name holding the same tensor object in `model` (tied
    Parameters or buffers; identity, never equal values), for the names whose state-dict entries
    are also the same memory (a module's own `_save_to_state_dict` may store something else)."""
    groups = tie_groups(model)
    first_of: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        group = groups.get(name)
        if group is None:
            continue  # computed by its module, not a parameter or buffer
        first = first_of.setdefault(group, name)
        if first != name and _same_memory(tensor, state[first]):
            aliases[name] = first
    return aliases


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape \
        and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()


def retie(model: nn.Module, metas: dict[str, Any]) -> None:
    """Give each alias name of the manifest the very tensor of the name it is the same as (one
    shared Parameter or buffer), where the loaded model holds the two apart: a rebuilt model
    ties only what its constructor ties, and a copy into tied slots keeps no tie it lacked."""
    for name, meta in metas.items():
        first = meta.get(ALIAS)
        if not isinstance(first, str):
            continue
        alias_slot, first_slot = _slot(model, name), _slot(model, first)
        if alias_slot is None or first_slot is None:
            continue  # an entry its module computes: nothing to share
        (table, leaf), (first_table, first_leaf) = alias_slot, first_slot
        mine, theirs = table[leaf], first_table[first_leaf]
        # A Parameter is shared as a Parameter, a buffer as a buffer; a slot of another kind,
        # shape, dtype or device keeps its equal copy.
        same_kind = isinstance(mine, nn.Parameter) == isinstance(theirs, nn.Parameter)
        if mine is not theirs and same_kind and (mine.shape, mine.dtype, mine.device) \
                == (theirs.shape, theirs.dtype, theirs.device):
            table[leaf] = theirs


def _slot(model: nn.Module, name: str) -> tuple[dict[str, Any], str] | None:
    """The parameter or buffer table holding state-dict entry `name`, and its key."""
    path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return None
    for table in (module._parameters, module._buffers):
        if table.get(leaf) is not None:
            return table, leaf
    return None


def _slots(model: nn.Module) -> dict[str, torch.Tensor]:
    # Not state_dict(): a module's _save_to_state_dict may compute on its (meta) tensors, and
    # Python meta kernels import torch._dynamo (~75 MB). Computed entries are left to the
    # module's own _load_from_state_dict.
    return dict([*model.named_parameters(remove_duplicate=False),
                 *model.named_buffers(remove_duplicate=False)])


def assign_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict(assign=True) that keeps what a copy would have kept: each slot's dtype,
    strides, requires_grad, and one shared Parameter per group of tied names."""
    targets = _slots(model)
    # A copy into tied slots leaves the last one copied; pick the same tensor for the group.
    last = {id(targets[n]): t for n, t in state.items() if isinstance(targets.get(n), torch.Tensor)}
    shared: dict[int, torch.Tensor] = {}
    prepared: dict[str, Any] = {}
    for name, tensor in state.items():
        target = targets.get(name)
        if not isinstance(target, torch.Tensor) or target.shape != tensor.shape:
            prepared[name] = tensor  # load_state_dict reports the mismatch
            continue
        if id(target) in shared:
            prepared[name] = shared[id(target)]
            continue
        value = last[id(target)].to(target.dtype)
        if value.stride() != target.stride():
            value = torch.empty_strided(target.shape, target.stride(),
                                        dtype=target.dtype).copy_(value)
        if isinstance(target, nn.Parameter):
            value = nn.Parameter(value, requires_grad=target.requires_grad)
        shared[id(target)] = prepared[name] = value
    model.load_state_dict(prepared, strict=True, assign=True)


def meta_leftovers(model: nn.Module) -> list[str]:
    """Names of tensors still without storage: computed from weights in a constructor, or kept
    outside the state dict, so the fast path cannot fill them."""
    names = [n for n, t in [*model.named_parameters(remove_duplicate=False),
                            *model.named_buffers(remove_duplicate=False)] if t.is_meta]
    for path, module in model.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                names.append(f"{path}.{key}" if path else key)
    return names


def release_freed_heap() -> None:
    """Hand memory freed by decoding back to the OS (glibc keeps freed small blocks in its heap:
    after Huffman decoding that is about the size of the decoded codes again). Best effort."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc: nothing to trim
        pass
