"""VmRSS and VmHWM of the calling process, read inside it (ru_maxrss after fork reports the
parent's peak). Imports nothing heavy: the memory children of the LLM benches import only what
they measure."""

from __future__ import annotations

from pathlib import Path


def proc_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields
