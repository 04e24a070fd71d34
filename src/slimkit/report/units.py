"""The one byte-unit convention of every page and terminal table: binary units, 1 KiB = 1024 bytes.

Binary because memory is measured in KiB by /proc and shown in MiB, so sizes on disk and in
memory read in the same unit. The CLI imports format_bytes from here (report sits below cli).
"""

from __future__ import annotations

import math

NA = "n/a"
BYTE_UNITS = (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0))
UNIT_NOTE = "Sizes in binary units: 1 KiB = 1024 bytes, 1 MiB = 1024 KiB."


def format_sig(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits without scientific notation: 0.2104 -> 0.210, 1234.5 -> 1235."""
    if value is None:
        return NA
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_ratio(r: float | None) -> str:
    """"15.9x", "1.0x", "112x": how many times smaller or faster."""
    if r is None:
        return NA
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit (name, bytes per unit) a chart axis reaching `largest` bytes is drawn in."""
    for unit, scale in BYTE_UNITS:
        if abs(largest) >= scale:
            return unit, scale
    return "B", 1.0


def format_bytes(n: float | None) -> str:
    """1567925 -> "1.50 MiB", 99947 -> "97.6 KiB", 512 -> "512 B" (3 significant digits).

    Rounding can reach the next unit's size (1023.9 KiB prints as "1024 KiB"); the unit
    is chosen from the exact value so that the number never disagrees with a table sorted by it.
    """
    if n is None:
        return NA
    unit, scale = byte_unit(n)
    if unit == "B":
        return f"{n:.0f} B"
    return f"{format_sig(n / scale)} {unit}"


def format_duration(seconds: float | None) -> str:
    """Wall time of a step: "<1 s" for what rounds to nothing, "6.2 s", "2 min 5 s", "1 h 3 min"."""
    if seconds is None:
        return NA
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{format_sig(seconds, 2)} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"
