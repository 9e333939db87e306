"""Text for tooltips and labels: a number never wraps away from its unit."""

from __future__ import annotations

import re

NBSP = "\u00a0"
# "981.0 MiB", "24 GiB", "5.9 s", "~690 tokens/s", "12 %": a number, one space, a unit.
_NUMBER_UNIT = re.compile(r"(\d) (?=[A-Za-zµ%~])")


def keep_units(text: str) -> str:
    """``text`` with a non-breaking space between every number and its unit."""
    return _NUMBER_UNIT.sub(rf"\1{NBSP}", text)
