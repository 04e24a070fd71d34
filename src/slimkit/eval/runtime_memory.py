"""Run-time memory of a deployed artifact, measured in a fresh process: resident and peak memory
(VmRSS, VmHWM) after loading and after one batch, each minus the process's own baseline.

The child imports only slimkit (and the modules the artifact's model is built from) before it
records the baseline, so the figures are the model's, not the interpreter's or torch's. Inputs
travel as a safetensors file: nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from ..core.module_types import caller_types

log = logging.getLogger(__name__)
Inputs = tuple[torch.Tensor, ...]
TIMEOUT_S = 300


def runtime_memory(artifact: str | Path, inputs: Inputs,
                   model_factory: str | None = None) -> dict[str, float] | None:
    """MiB above the fresh process's baseline: `loaded` (resident after load), `load_peak`
    (peak while loading), `resident` and `peak` (after one forward of `inputs`), `model` (the
    model's tensors and prepacked kernels, slimkit.nn.runtime_memory); plus
    `baseline` and `peak_absolute` (VmHWM, which includes the baseline). None if the child
    failed. `model_factory` (`module:function`) builds the instance a caller's own model class
    is loaded into (slimkit.load(path, model=...))."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "inputs.safetensors"
        safetensors.torch.save_file({str(i): t.contiguous() for i, t in enumerate(inputs)},
                                    str(file))
        cmd = [sys.executable, "-m", "slimkit.eval.probe", str(artifact), str(file),
               model_factory or "-", *caller_types()]
        # The caller's modules import in the child as they did here.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  env=env)
        except subprocess.TimeoutExpired:
            log.warning("run-time memory of %s: not measured within %d s", artifact, TIMEOUT_S)
            return None
    if proc.returncode != 0 or not proc.stdout.strip():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("run-time memory of %s: the measuring process failed (%s)", artifact,
                    last[:200])
        return None
    try:
        raw = json.loads(proc.stdout.strip().splitlines()[-1])
    except ValueError:
        log.warning("run-time memory of %s: unreadable report from the measuring process",
                    artifact)
        return None
    base = raw["base"]
    return {"resident": round(raw["resident"] - base, 2), "peak": round(raw["peak"] - base, 2),
            "loaded": round(raw["loaded"] - base, 2),
            "load_peak": round(raw["load_peak"] - base, 2), "model": round(raw["model"], 3),
            "baseline": round(base, 2), "peak_absolute": round(raw["peak"], 2)}
