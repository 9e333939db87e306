"""Byte sizes: parsing what users type and formatting what they read."""

from __future__ import annotations

import math
import re

from moe_studio.core.errors import MoeStudioError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": TiB,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, default_unit: str = "") -> int:
    """Parse ``"24GiB"``, ``"24 GB"``, ``"1.5T"`` or ``"512"`` into bytes.

    Decimal units (GB) and binary units (GiB) are both accepted and mean what they say. A bare
    number uses ``default_unit``.

    Raises:
        MoeStudioError: the text is not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise MoeStudioError(
            f"{text!r} is not a size; write a number with a unit, for example 24GiB or 256GB."
        )
    number, unit = match.groups()
    unit = (unit or default_unit).lower()
    if unit not in _UNITS:
        raise MoeStudioError(
            f"{text!r} has an unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)."
        )
    value = float(number) * _UNITS[unit]
    if not math.isfinite(value) or value >= 2**63:
        raise MoeStudioError(f"{text[:40]!r} is not a size any machine has.")
    return round(value)


# A device or host memory size a user may give: more than nothing, less than any machine made.
MEMORY_RANGE = (1 * 1024**2, 1024**5)  # 1 MiB .. 1 PiB


def parse_memory(flag: str, text: str) -> int:
    """A device or RAM size for ``flag``, checked against :data:`MEMORY_RANGE`.

    Raises:
        MoeStudioError: not a size, or out of range (the message names the flag and the range).
    """
    shown = text if len(text) <= 40 else text[:37] + "..."
    if text.strip().replace(".", "", 1).isdigit():
        raise MoeStudioError(
            f"{flag} {shown}: the size has no unit; write it with one, for example {shown}GiB."
        )
    try:
        value = parse_size(text)
    except MoeStudioError as exc:
        raise MoeStudioError(f"{flag}: {exc}") from None
    low, high = MEMORY_RANGE
    if not low <= value <= high:
        raise MoeStudioError(
            f"{flag} {shown} is out of range: a memory size must be between "
            f"{format_bytes(low)} and {format_bytes(high)}."
        )
    return value


def format_bytes(n: float, *, precision: int = 1) -> str:
    """Format a byte count with a binary unit: ``1.5 GiB``, ``312.0 MiB``, ``17 B``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.{precision}f} {unit}"
    return f"{sign}{int(n)} B"


def format_params(n: float) -> str:
    """Format a parameter count: ``671.0B``, ``1.03T``, ``30.5B``, ``117M``."""
    if n >= 1e12:
        return f"{n / 1e12:.2f}T"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    return f"{int(n)}"


def mib(n: float) -> float:
    """Bytes to MiB, as engines print them."""
    return n / MiB
