"""Scrolling live graphs: VRAM used per GPU, the server's RSS, its CPU use, and tokens/s.

Four plots in a 2×2 grid, each with its own unit on its own axis (GiB, GiB, cores, tokens/s) and
one shared time axis in seconds since the launch: it starts at 0 and spans at least
``MIN_SPAN_S``, so a single point does not stretch a 10 ms range over the whole width.

One :class:`moe_studio.core.hardware.sampler.Sampler` tick per second (``SAMPLE_MS``); items are
created once and updated with ``setData`` (pyqtgraph ``scrollingPlots`` style); at most
``HISTORY`` points per trace.
"""

from __future__ import annotations

import time
from collections import deque

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QWidget

from moe_studio.core.hardware.sampler import Sample, Sampler
from moe_studio.core.units import GiB
from moe_studio.gui import theme

SAMPLE_MS = 1000
HISTORY = 600
MIN_SPAN_S = 30.0


class LivePlot(pg.GraphicsLayoutWidget):  # type: ignore[misc]
    def __init__(self, parent: QWidget | None = None, sampler: Sampler | None = None) -> None:
        super().__init__(parent=parent)
        self.sampler = sampler
        self.pid: int | None = None
        self._t0: float | None = None
        self.memory = self.addPlot(row=0, col=0, title="GPU memory used")
        self.rss = self.addPlot(row=0, col=1, title="Server memory (RSS)")
        self.cpu = self.addPlot(row=1, col=0, title="Server CPU use")
        self.speed = self.addPlot(row=1, col=1, title="Tokens/s")
        dark = theme.is_dark()
        self.setBackground("#1f2124" if dark else "#ffffff")
        units = {self.memory: "GiB", self.rss: "GiB", self.cpu: "cores", self.speed: "tokens/s"}
        for plot, unit in units.items():
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setMenuEnabled(False)
            if plot in (self.cpu, self.speed):  # the bottom row names the shared time axis
                plot.setLabel("bottom", "seconds since launch")
            plot.setLabel("left", unit)
            plot.getAxis("bottom").enableAutoSIPrefix(False)
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.setTitle(plot.titleLabel.text, size="9pt")
            plot.enableAutoRange(axis="x", enable=False)
            plot.setXRange(0, MIN_SPAN_S, padding=0)
            if plot is not self.memory:
                plot.setXLink(self.memory)
        for plot in (self.memory, self.speed):
            plot.addLegend(offset=(6, 4), labelTextSize="8pt")
        self._latest = 0.0

        self._gpu: dict[str, tuple[deque[float], deque[float], pg.PlotDataItem]] = {}
        self._rss: tuple[deque[float], deque[float]] = (
            deque(maxlen=HISTORY),
            deque(maxlen=HISTORY),
        )
        self._cpu: tuple[deque[float], deque[float]] = (
            deque(maxlen=HISTORY),
            deque(maxlen=HISTORY),
        )
        self._rss_item = self.rss.plot([], [], pen=pg.mkPen(theme.GPU_COLORS[0], width=2))
        self._cpu_item = self.cpu.plot([], [], pen=pg.mkPen(theme.GPU_COLORS[1], width=2))
        self._tps: dict[str, tuple[deque[float], deque[float], pg.PlotDataItem]] = {}
        self.gpu_reason = ""
        self.timer = QTimer(self)
        self.timer.setInterval(SAMPLE_MS)
        self.timer.timeout.connect(self.sample_now)

    def start(self, pid: int | None) -> None:
        """Follow a new server process (clears the traces)."""
        self.pid = pid
        # The launch is time 0 (the sampler and the speeds use the monotonic clock).
        self._t0 = time.monotonic()
        self._latest = 0.0
        self.memory.setXRange(0, MIN_SPAN_S, padding=0)
        for xs, ys, item in self._gpu.values():
            xs.clear()
            ys.clear()
            item.setData([], [])
        for series in (self._rss, self._cpu):
            series[0].clear()
            series[1].clear()
        self._rss_item.setData([], [])
        self._cpu_item.setData([], [])
        for xs, ys, item in self._tps.values():
            xs.clear()
            ys.clear()
            item.setData([], [])
        if self.sampler is None:
            self.sampler = Sampler()
        self.timer.start()
        self.sample_now()

    def stop(self) -> None:
        self.timer.stop()
        self.pid = None

    def close_sampler(self) -> None:
        self.stop()
        if self.sampler is not None:
            self.sampler.close()

    def _elapsed(self, t: float) -> float:
        if self._t0 is None:
            self._t0 = t
        elapsed = max(0.0, t - self._t0)
        if elapsed > self._latest:
            self._latest = elapsed
            # Follow the newest point; the x axes are linked, so one call moves all four.
            self.memory.setXRange(0, max(MIN_SPAN_S, elapsed * 1.05), padding=0)
        return elapsed

    def x_range(self) -> tuple[float, float]:
        """The time axis shown (seconds since the launch), for tests."""
        low, high = self.memory.viewRange()[0]
        return float(low), float(high)

    def sample_now(self) -> Sample | None:
        if self.sampler is None:
            return None
        sample = self.sampler.sample(self.pid)
        self.add_sample(sample)
        return sample

    def add_sample(self, sample: Sample) -> None:
        t = self._elapsed(sample.time)
        self.gpu_reason = sample.gpu_reason
        if not sample.gpus and not self._gpu:
            # Say so where the traces would be; the full reason is the tooltip.
            self.memory.setTitle("GPU memory: no NVIDIA GPU found")
            self.setToolTip(sample.gpu_reason)
        order = [g.name for g in sample.gpus]
        for gpu in sample.gpus:
            if gpu.memory_used is None:
                continue
            if gpu.name not in self._gpu:
                pen = pg.mkPen(theme.device_color(gpu.name, order), width=2)
                item = self.memory.plot([], [], name=gpu.name, pen=pen)
                self._gpu[gpu.name] = (deque(maxlen=HISTORY), deque(maxlen=HISTORY), item)
            xs, ys, item = self._gpu[gpu.name]
            xs.append(t)
            ys.append(gpu.memory_used / GiB)
            item.setData(list(xs), list(ys))
        process = sample.process
        if process is not None and process.alive:
            if process.rss is not None:
                self._rss[0].append(t)
                self._rss[1].append(process.rss / GiB)
                self._rss_item.setData(list(self._rss[0]), list(self._rss[1]))
                # From 0, so that a flat line reads as a size and not as noise around it.
                self.rss.setYRange(0, max(self._rss[1]) * 1.2 or 1.0, padding=0)
            if process.cpu_percent is not None:
                self._cpu[0].append(t)
                self._cpu[1].append(process.cpu_percent / 100)
                self._cpu_item.setData(list(self._cpu[0]), list(self._cpu[1]))
                self.cpu.setYRange(0, max(1.0, max(self._cpu[1]) * 1.2), padding=0)

    def add_speed(self, when: float, kind: str, tokens_per_second: float) -> None:
        """A measured speed (``kind``: "prompt" or "generation") at monotonic time ``when``."""
        t = self._elapsed(when)
        if kind not in self._tps:
            color = theme.GPU_COLORS[2] if kind == "prompt" else theme.GPU_COLORS[3]
            item = self.speed.plot(
                [], [], name=kind, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=6
            )
            self._tps[kind] = (deque(maxlen=HISTORY), deque(maxlen=HISTORY), item)
        xs, ys, item = self._tps[kind]
        xs.append(t)
        ys.append(tokens_per_second)
        item.setData(list(xs), list(ys))

    def series(self) -> dict[str, list[float]]:
        """Current y values per trace (for tests)."""
        out = {name: list(ys) for name, (_, ys, _) in self._gpu.items()}
        out["rss"] = list(self._rss[1])
        out["cpu"] = list(self._cpu[1])
        for kind, (_, ys, _) in self._tps.items():
            out[kind] = list(ys)
        return out
