"""The host through psutil: RAM, swap, cores, and the RSS/CPU% of a process tree.

psutil sits behind :class:`Psutil` (the module itself satisfies it) and a process factory, so tests
replay recorded values. A failing read degrades to ``None`` plus a note; a process that exits
between two reads is simply left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from moe_studio.core.hardware.cpu import CpuinfoProbe, detect_cpu, run_py_cpuinfo
from moe_studio.core.hardware.devices import HostInfo
from moe_studio.core.hardware.numa import read_numa

log = logging.getLogger(__name__)


class _Total(Protocol):
    @property
    def total(self) -> int: ...


class _VirtualMemory(_Total, Protocol):
    @property
    def available(self) -> int: ...


class Psutil(Protocol):
    """The part of the ``psutil`` module the host probe reads."""

    def virtual_memory(self) -> _VirtualMemory: ...
    def swap_memory(self) -> _Total: ...
    def cpu_count(self, logical: bool = True) -> int | None: ...


class _MemoryInfo(Protocol):
    @property
    def rss(self) -> int: ...


class ProcessLike(Protocol):
    """The part of ``psutil.Process`` the process sampler uses."""

    @property
    def pid(self) -> int: ...
    def oneshot(self) -> AbstractContextManager[None]: ...
    def children(self, recursive: bool = False) -> Sequence[ProcessLike]: ...
    def memory_info(self) -> _MemoryInfo: ...
    def cpu_percent(self, interval: float | None = None) -> float: ...


ProcessFactory = Callable[[int], ProcessLike]


def probe_host(
    *,
    ps: Psutil = psutil,
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    cpuinfo_cache: Path | None = None,
    cpuinfo_probe: CpuinfoProbe | None = run_py_cpuinfo,
) -> tuple[HostInfo, tuple[str, ...]]:
    """RAM, swap, cores, CPU brand and flags, NUMA nodes; plus one note per unknown part.

    Args:
        ps: The psutil module or a stand-in.
        proc_root: Where ``/proc`` is (for ``cpuinfo``).
        sys_root: Where ``/sys`` is (for NUMA).
        cpuinfo_cache: Folder of the py-cpuinfo cache; ``None`` is the user cache folder.
        cpuinfo_probe: The slow py-cpuinfo call, or ``None`` to never run it.
    """
    notes: list[str] = []
    ram_total, ram_available, swap_total = 0, None, None
    try:
        vm = ps.virtual_memory()
        ram_total, ram_available = vm.total, vm.available
    except (OSError, RuntimeError) as exc:
        notes.append(f"RAM size is unknown: psutil could not read it ({exc}).")
    try:
        swap_total = ps.swap_memory().total
    except (OSError, RuntimeError) as exc:
        log.debug("swap unknown: %s", exc)
    physical = logical = None
    try:
        physical = ps.cpu_count(logical=False)
        logical = ps.cpu_count(logical=True)
    except (OSError, RuntimeError) as exc:
        log.debug("core count unknown: %s", exc)
    if physical is None:
        notes.append("The number of physical cores is unknown.")
    cpu, cpu_note = detect_cpu(proc_root=proc_root, cache_dir=cpuinfo_cache, probe=cpuinfo_probe)
    if cpu_note:
        notes.append(cpu_note)
    nodes, numa_note = read_numa(sys_root)
    if numa_note:
        notes.append(numa_note)
    host = HostInfo(
        ram_total=ram_total,
        ram_available=ram_available,
        swap_total=swap_total,
        cores_physical=physical,
        cores_logical=logical,
        cpu_brand=cpu.brand,
        cpu_flags=cpu.flags,
        numa_nodes=nodes,
    )
    return host, tuple(notes)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """RSS and CPU use of a process and all its descendants at one instant.

    Attributes:
        alive: False once the root process is gone (the other fields are then ``None``).
        rss: Resident bytes summed over the tree (mapped model pages count while resident).
        cpu_percent: Summed CPU use since the previous sample; 100 is one core. ``None`` on the
            first sample, which has nothing to compare with.
        processes: How many processes were counted.
    """

    pid: int
    alive: bool
    rss: int | None = None
    cpu_percent: float | None = None
    processes: int = 0


def psutil_process(pid: int) -> ProcessLike:
    """``psutil.Process(pid)``: the default process factory."""
    return psutil.Process(pid)


class ProcessTree:
    """Samples one process and its descendants, keeping the ``Process`` objects between calls.

    ``cpu_percent`` measures against the previous call *on the same object*, so the objects are
    cached by pid and replaced only when a pid is reused by a new process. Listing descendants
    reads every process's ``/proc/<pid>/stat`` (about 1 ms per 100 processes), far more than
    reading the tree itself, so the list is refreshed only every ``rescan_interval`` seconds; a
    child that exits in between is dropped at once.

    Args:
        pid: The root process (the server).
        process_factory: ``psutil.Process`` or a stand-in.
        rescan_interval: Seconds between two listings of the descendants.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        pid: int,
        *,
        process_factory: ProcessFactory = psutil_process,
        rescan_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pid = pid
        self._factory = process_factory
        self._rescan_interval = rescan_interval
        self._clock = clock
        self._root: ProcessLike | None = None
        self._known: dict[int, ProcessLike] = {}
        self._scanned_at: float | None = None
        self._gone = False

    def _rescan(self, root: ProcessLike) -> None:
        now = self._clock()
        if self._scanned_at is not None and now - self._scanned_at < self._rescan_interval:
            return
        self._scanned_at = now
        try:
            children = root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            children = []
        fresh: dict[int, ProcessLike] = {}
        for child in children:
            known = self._known.get(child.pid)
            # psutil.Process compares pid and creation time: a reused pid is a new process.
            fresh[child.pid] = known if known is not None and known == child else child
        self._known = fresh

    def pids(self) -> frozenset[int]:
        """The pids counted by the last :meth:`sample` (root included)."""
        if self._root is None or self._gone:
            return frozenset()
        return frozenset({self.pid, *self._known})

    def _read(self, proc: ProcessLike) -> tuple[int, float]:
        with proc.oneshot():
            return proc.memory_info().rss, proc.cpu_percent(None)

    def sample(self) -> ProcessSample:
        """One reading of the tree; a vanished child is skipped, a vanished root reported."""
        if self._gone:
            return ProcessSample(self.pid, alive=False)
        first = self._root is None
        try:
            if self._root is None:
                self._root = self._factory(self.pid)
            root = self._root
            try:
                rss, cpu = self._read(root)
            except psutil.AccessDenied:  # another user's process: a partial sum would mislead
                return ProcessSample(self.pid, alive=True)
            self._rescan(root)
        except psutil.NoSuchProcess:
            self._gone = True
            self._known = {}
            return ProcessSample(self.pid, alive=False)
        for pid, child in list(self._known.items()):
            try:
                child_rss, child_cpu = self._read(child)
            except psutil.NoSuchProcess:
                del self._known[pid]  # exited since the last listing
                continue
            except psutil.AccessDenied:
                continue
            rss += child_rss
            cpu += child_cpu
        return ProcessSample(
            self.pid,
            alive=True,
            rss=rss,
            cpu_percent=None if first else cpu,
            processes=1 + len(self._known),
        )
