"""NUMA topology from ``/sys/devices/system/node``: nodes, their CPUs and their memory.

Only Linux has this tree; elsewhere the topology is unknown (an empty tuple and a note), which
callers treat as one node.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from moe_studio.core.hardware.devices import NumaNode
from moe_studio.core.units import KiB

log = logging.getLogger(__name__)

NODE_DIR = "devices/system/node"
_NODE = re.compile(r"^node(\d+)$")
_MEMTOTAL = re.compile(r"MemTotal:\s*(\d+)\s*kB", re.IGNORECASE)


def parse_cpulist(text: str) -> tuple[int, ...]:
    """``"0-3,8,10-11"`` → ``(0, 1, 2, 3, 8, 10, 11)``.

    Raises:
        ValueError: the text is not a CPU list.
    """
    cpus: list[int] = []
    for raw in text.strip().split(","):
        part = raw.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        low = int(first)
        high = int(last) if sep else low
        if high < low or low < 0:
            raise ValueError(f"{part!r} is not a CPU range")
        cpus.extend(range(low, high + 1))
    return tuple(sorted(set(cpus)))


def format_cpulist(cpus: Iterable[int]) -> str:
    """``(0, 1, 2, 3, 8)`` → ``"0-3,8"``."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def _read_node(folder: Path, node_id: int) -> NumaNode | None:
    try:
        cpus = parse_cpulist((folder / "cpulist").read_text())
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s/cpulist: %s", folder, exc)
        cpus = ()
    memory = 0
    try:
        match = _MEMTOTAL.search((folder / "meminfo").read_text())
        if match:
            memory = int(match.group(1)) * KiB
    except OSError as exc:
        log.debug("cannot read %s/meminfo: %s", folder, exc)
    if not cpus and not memory:
        return None
    return NumaNode(id=node_id, cpus=cpus, memory_total=memory)


def read_numa(sys_root: Path = Path("/sys")) -> tuple[tuple[NumaNode, ...], str]:
    """NUMA nodes under ``<sys_root>/devices/system/node``, and a note when unknown.

    Nodes without CPUs (memory-only, e.g. CXL) and without memory (CPU-only) are kept; a node
    with neither readable is skipped.
    """
    root = sys_root / NODE_DIR
    try:
        entries = sorted(
            (int(m.group(1)), p)
            for p in root.iterdir()
            if (m := _NODE.match(p.name)) and p.is_dir()
        )
    except OSError:
        return (), "NUMA topology is unknown (no /sys/devices/system/node); assuming one node."
    nodes = tuple(n for node_id, p in entries if (n := _read_node(p, node_id)) is not None)
    if not nodes:
        return (), "NUMA topology is unknown (no readable node); assuming one node."
    return nodes, ""
