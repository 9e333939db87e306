"""Recorded host stand-ins: /sys and /proc trees (``DATA``), a fake psutil, fake processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DATA = Path(__file__).parent / "data"
GiB = 1024**3


@dataclass
class _Mem:
    total: int
    available: int = 0


class FakePsutil:
    """Host totals as psutil would report them for a recorded machine."""

    def __init__(
        self,
        *,
        ram: int = 64 * GiB,
        available: int = 60 * GiB,
        swap: int = 8 * GiB,
        physical: int | None = 16,
        logical: int | None = 32,
        broken: bool = False,
    ) -> None:
        self.ram, self.available, self.swap = ram, available, swap
        self.physical, self.logical = physical, logical
        self.broken = broken

    def virtual_memory(self) -> _Mem:
        if self.broken:
            raise OSError("/proc/meminfo unreadable")
        return _Mem(self.ram, self.available)

    def swap_memory(self) -> _Mem:
        return _Mem(self.swap)

    def cpu_count(self, logical: bool = True) -> int | None:
        return self.logical if logical else self.physical


@dataclass
class _Rss:
    rss: int


@dataclass
class ProcState:
    """One recorded process; every ``FakeProcess`` for its pid shares it, as the OS would.

    ``cpu`` is the list of readings ``cpu_percent`` replays, per process object (psutil measures
    from the previous call on the same object, so a fresh object starts again at 0.0).
    """

    pid: int
    rss: int = 100 * 1024**2
    cpu: list[float] = field(default_factory=lambda: [0.0, 50.0, 75.0, 80.0])
    kids: list[ProcState] = field(default_factory=list)
    gone: bool = False
    denied: bool = False
    created: float = 1000.0
    vanish_on_read: bool = False  # listed by children(), gone by the time it is read


class FakeProcess:
    """Stands in for ``psutil.Process``; ``children()`` returns new objects, as psutil does."""

    def __init__(self, state: ProcState) -> None:
        if state.gone:
            raise psutil.NoSuchProcess(state.pid)
        self.state = state
        self.reads = 0

    @property
    def pid(self) -> int:
        return self.state.pid

    def __eq__(self, other: object) -> bool:  # psutil compares pid and creation time
        return isinstance(other, FakeProcess) and (self.pid, self.state.created) == (
            other.pid,
            other.state.created,
        )

    def __hash__(self) -> int:
        return hash((self.pid, self.state.created))

    def _check(self) -> None:
        if self.state.vanish_on_read:
            self.state.gone = True
        if self.state.gone:
            raise psutil.NoSuchProcess(self.pid)
        if self.state.denied:
            raise psutil.AccessDenied(self.pid)

    @contextmanager
    def oneshot(self) -> Iterator[None]:
        yield

    def children(self, recursive: bool = False) -> list[FakeProcess]:
        if self.state.gone:
            raise psutil.NoSuchProcess(self.pid)
        out: list[FakeProcess] = []
        for kid in self.state.kids:
            if kid.gone:
                continue
            child = FakeProcess(kid)
            out.append(child)
            if recursive:
                out.extend(child.children(recursive=True))
        return out

    def memory_info(self) -> _Rss:
        self._check()
        return _Rss(self.state.rss)

    def cpu_percent(self, interval: float | None = None) -> float:
        self._check()
        value = self.state.cpu[min(self.reads, len(self.state.cpu) - 1)]
        self.reads += 1
        return value


class FakeProcessTable:
    """``pid → FakeProcess`` over recorded states: the sampler's process factory."""

    def __init__(self, *roots: ProcState) -> None:
        self.states: dict[int, ProcState] = {}
        for root in roots:
            self._add(root)
        self.created: list[int] = []

    def _add(self, state: ProcState) -> None:
        self.states[state.pid] = state
        for kid in state.kids:
            self._add(kid)

    def __call__(self, pid: int) -> FakeProcess:
        self.created.append(pid)
        state = self.states.get(pid)
        if state is None:
            raise psutil.NoSuchProcess(pid)
        return FakeProcess(state)
