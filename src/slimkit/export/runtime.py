"""ONNX Runtime sessions used like torch models: call on torch tensors, evaluate with a task, and
time them with the same interleaved latency measurement as torch models (deployed latency:
slimkit.eval.cost.latency_interleaved takes a session where it takes a model), on as many
threads as torch gets there (`available_cores`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.cpu import PORTABLE_WEIGHT_MAX, cpu_features
from .lm_onnx_runtime import OrtCausalLM

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (taskset and cgroup
    cpusets shrink it; os.cpu_count() counts the whole host), capped by a cgroup v2 CPU quota
    (docker --cpus: /sys/fs/cgroup/cpu.max), else os.cpu_count(). Logical CPUs: the standard
    library cannot tell SMT siblings apart, and the default must be the same number for torch
    and ONNX Runtime, not the best for either."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # recorded: no cgroup v2 quota readable, the affinity mask stands
    return max(1, cores)


class OrtSession:
    """An onnxruntime.InferenceSession on CPU (intra-op threads = `available_cores()` unless
    given, all graph optimizations on) that quacks like an eval-mode nn.Module:
    `session(*tensors) -> tensor`.

    `eval`, `train`, `training` and `parameters` exist so task.evaluate and latency_interleaved
    take it where they take a model; `threads` is what the timing records and checks;
    copy.deepcopy opens a second session on the same file (a noise probe has its own arena).
    `spin=False` puts idle worker threads to sleep at once: sessions timed side by side in one
    process (stages, their noise probe) would otherwise spin on the cores the next call needs.
    """

    training = False

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 optimize: bool = True, spin: bool = True) -> None:
        import onnxruntime as ort

        threads = available_cores() if threads is None else threads
        self.threads, self.optimize, self.spin = threads, optimize, spin
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: optimizer notes are not the caller's concern
        if not spin:  # idle workers sleep at once instead of spinning for the next call
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        # A causal LM exported with its key/value cache (lm_onnx.py) is called like the torch
        # model, with token ids only: a prefill from an empty cache.
        self.prefill = next((OrtCausalLM.from_session(self.session) for name in self.input_names
                             if name.startswith("past_key_values.")), None)
        self._check_int8_range()

    def _check_int8_range(self) -> None:
        """Warn when the graph's int8 weights can overflow this CPU's 16-bit pair sums."""
        meta = self.session.get_modelmeta().custom_metadata_map
        weight_max = int(meta.get("slimkit.int8_weight_max", 0))
        if weight_max > PORTABLE_WEIGHT_MAX and cpu_features().onnxruntime_saturates:
            log.warning("%s: int8 weights up to %d were quantized for CPUs with VNNI; this CPU "
                        "has none, so ONNX Runtime's u8 x s8 kernels may saturate (re-quantize "
                        "with int8_range='portable')", self.path, weight_max)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.prefill is not None and len(inputs) == 1:
            ids = inputs[0].detach().cpu().numpy()
            logits, _ = self.prefill.step(ids, np.ones_like(ids), self.prefill.empty_cache(
                ids.shape[0]))
            return torch.from_numpy(logits)
        if len(inputs) != len(self.input_names):
            raise ValueError(f"OrtSession: expected {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        feeds = {name: t.detach().cpu().contiguous().numpy()
                 for name, t in zip(self.input_names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtSession:
        return OrtSession(self.path, threads=self.threads, optimize=self.optimize,
                          spin=self.spin)

    def eval(self) -> OrtSession:
        return self

    def train(self, mode: bool = True) -> OrtSession:
        if mode:
            raise ValueError("OrtSession: an ONNX Runtime session cannot train")
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

