"""Child process of `runtime_memory`: import what loading needs, record the baseline RSS, load
the artifact, run one batch, and print VmRSS / VmHWM at each point as one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import safetensors.torch
import torch


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so import-time spikes do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # the peak then also covers the imports: an over-estimate, never an under-estimate


def _import_builders(manifest: dict[str, Any]) -> None:
    """Import what `load` would import lazily (transformers, the model's module, swapped layer
    classes), so that their code is counted in the baseline, not as model memory."""
    from slimkit.core.module_types import module_type

    refs = [str(manifest.get("model", {}).get("builder", ""))]
    refs += [str(e["module"]) for e in manifest.get("edits", []) if "module" in e]
    for ref in refs:
        module, _, name = ref.partition(":")
        try:
            if module == "transformers":
                import transformers

                getattr(transformers, name)
            elif module:
                module_type(ref)
        except Exception:  # noqa: BLE001, S112  # recorded: load() below raises it as ArtifactError
            continue


def _instance(factory: str) -> Any:
    """The caller's model class built by the caller's function (as in the parent process),
    storage-less, before the baseline is read: whatever else the factory does (reading a data
    file, say) is not the model's memory, and the loaded tensors are assigned to it."""
    if factory == "-":
        return None
    from slimkit.core.refs import import_ref
    from slimkit.export.assign_load import empty_weights

    with empty_weights():
        return import_ref(factory, field="model_factory")()


def _child(artifact: str, inputs_file: str, factory: str, caller_types: list[str]) -> None:
    from slimkit.core.module_types import allow_caller_types, needs_instance
    from slimkit.export import load
    from slimkit.export.artifact import read_manifest
    from slimkit.export.assign_load import release_freed_heap

    allow_caller_types(caller_types)  # the classes the parent process's caller allowed
    manifest = read_manifest(Path(artifact))
    _import_builders(manifest)
    instance = _instance(factory) if needs_instance(manifest["model"]) else None
    stored = safetensors.torch.load_file(inputs_file)
    inputs = tuple(stored[str(i)] for i in range(len(stored)))
    release_freed_heap()  # what the imports and the factory freed is not returned by the load
    _reset_peak()
    base = _status_mb("VmRSS")
    model = load(artifact, model=instance).model
    loaded, load_peak = _status_mb("VmRSS"), _status_mb("VmHWM")
    with torch.inference_mode():
        model(*inputs)
    # The model's own share (tensors + prepacked kernels), apart from what the process pays for
    # kernel code and workspace, which dominates models of a few MB.
    from slimkit.nn.runtime_memory import memory_report

    result = {"base": base, "loaded": loaded, "load_peak": load_peak,
              "resident": _status_mb("VmRSS"), "peak": _status_mb("VmHWM"),
              "model": memory_report(model)["runtime_bytes"] / 2**20}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
