"""Child process for peak-memory measurement: load an artifact, run one batch, print VmHWM."""

from __future__ import annotations

import json
import sys

import safetensors.torch
import torch


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(artifact: str, inputs_file: str) -> None:
    from slimkit.export import load

    base = _status_mb("VmRSS")  # interpreter + torch + slimkit, before the model exists
    stored = safetensors.torch.load_file(inputs_file)
    inputs = tuple(stored[str(i)] for i in range(len(stored)))
    model = load(artifact).model
    with torch.inference_mode():
        for _ in range(3):
            model(*inputs)
    sys.stdout.write(json.dumps({"peak_mb": round(_status_mb("VmHWM"), 2),
                                 "base_mb": round(base, 2)}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
