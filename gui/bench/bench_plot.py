"""Benchmark curves: prompt speed (S_PP) and generation speed (S_TG) against the KV depth
(N_KV), one curve per run in each panel, and the running run as a dashed curve.

Items are created once per run and updated in place (``setData``, ``setVisible``); the running
run's curves exist from the start. Runs differ by colour (Okabe–Ito) *and* marker, so a
comparison does not depend on telling colours apart. The y axes start at 0: two placements are
compared by the heights of their curves, which a cropped axis would exaggerate. Clicking a run in
the legend asks for it to be shown or hidden (the run list holds that state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyqtgraph as pg
from pyqtgraph.graphicsItems.LegendItem import ItemSample
from pyqtgraph.graphicsItems.ScatterPlotItem import drawSymbol
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QWidget

from moe_studio.core.engine.bench_run import CurvePoint
from moe_studio.gui import theme

SYMBOLS = ("o", "s", "t", "d", "star", "t1", "p", "h")
LIVE_LABEL = "running…"


def run_colors(dark: bool) -> list[QColor]:
    """Okabe–Ito without the colour that vanishes on the background (yellow on white, black on
    dark grey)."""
    gone = "#000000" if dark else "#f0e442"
    return [c for c in theme.GPU_COLORS if c.name() != gone]


def run_style(index: int, dark: bool) -> tuple[QColor, str]:
    """Colour and marker of the run at ``index`` in the profile (stable when others hide)."""
    colors = run_colors(dark)
    return colors[index % len(colors)], SYMBOLS[index % len(SYMBOLS)]


def run_icon(index: int, dark: bool, size: int = 14) -> QIcon:
    """The run's marker in its colour, for the run list (the list doubles as a legend)."""
    color, symbol = run_style(index, dark)
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.translate(size / 2, size / 2)
    drawSymbol(painter, symbol, size - 4, pg.mkPen(color.darker(130)), pg.mkBrush(color))
    painter.end()
    return QIcon(pixmap)


@dataclass(frozen=True, slots=True)
class RunCurve:
    """What the plot shows of one run."""

    label: str
    points: tuple[CurvePoint, ...]
    visible: bool = True


class _Sample(ItemSample):  # type: ignore[misc]
    """A legend sample that does not hide its item itself: a click only reports (the run list
    owns visibility, and S_PP and S_TG must hide together)."""

    def mouseClickEvent(self, event: object) -> None:
        if event.button() == Qt.MouseButton.LeftButton:  # type: ignore[attr-defined]
            self.sigClicked.emit(self.item)
        event.accept()  # type: ignore[attr-defined]


def _series(points: Sequence[CurvePoint], which: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for p in points:
        value = p.s_pp if which == "pp" else p.s_tg
        if value is not None:
            xs.append(float(p.n_kv))
            ys.append(float(value))
    return xs, ys


class _Panel:
    """One plot (S_PP or S_TG)."""

    def __init__(self, plot: pg.PlotItem, title: str) -> None:
        self.plot = plot
        plot.setTitle(title, size="10pt")
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.showGrid(x=True, y=True, alpha=0.2)
        plot.setLabel("left", "tokens/s")
        plot.setLabel("bottom", "N_KV (tokens already in the KV cache)")
        for name in ("left", "bottom"):
            plot.getAxis(name).enableAutoSIPrefix(False)
        self.curves: list[pg.PlotDataItem] = []
        self.empty = pg.TextItem("no run yet", anchor=(0.5, 0.5), color="#888888")
        self.empty.setPos(0.5, 0.5)
        plot.addItem(self.empty)
        self.live = pg.PlotDataItem([], [])
        self.live.setZValue(10)
        plot.addItem(self.live)

    def add_curve(self) -> pg.PlotDataItem:
        item = pg.PlotDataItem([], [])
        self.plot.addItem(item)
        self.curves.append(item)
        return item

    def set_theme(self, dark: bool) -> None:
        fg = "#dddddd" if dark else "#333333"
        for name in ("left", "bottom"):
            axis = self.plot.getAxis(name)
            axis.setPen(pg.mkPen(fg))
            axis.setTextPen(pg.mkPen(fg))
        self.plot.titleLabel.setAttr("color", fg)
        self.plot.titleLabel.setText(self.plot.titleLabel.text)


class BenchPlot(pg.GraphicsLayoutWidget):  # type: ignore[misc]
    """S_PP and S_TG against N_KV, side by side, with one legend row below.

    Signals:
        toggle_requested(int): the legend entry of the run at this index was clicked.
    """

    toggle_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setMinimumHeight(120)  # fits under the Server tab's controls at 1280×800
        self._pp = _Panel(self.addPlot(row=0, col=0), "Prompt processing (S_PP)")
        self._tg = _Panel(self.addPlot(row=0, col=1), "Generation (S_TG)")
        # The legend gets its own row so it never covers a curve.
        self._legend = pg.LegendItem(labelTextSize="9pt", colCount=1, sampleType=_Sample)
        self.addItem(self._legend, row=1, col=0, colspan=2)
        self._legend.sigSampleClicked.connect(self._on_legend_sample_clicked)
        self._runs: list[RunCurve] = []
        self._live: tuple[CurvePoint, ...] = ()
        self._live_label = ""
        self._legend_key: tuple[object, ...] = ()
        self._dark: bool | None = None
        self._apply_theme()

    # --- data ----------------------------------------------------------------------------------

    def set_runs(self, runs: Sequence[RunCurve]) -> None:
        """Show these runs (index = position in the profile's list; colours follow it)."""
        self._apply_theme()
        self._runs = list(runs)
        while len(self._pp.curves) < len(self._runs):
            self._pp.add_curve()
            self._tg.add_curve()
        for i, (pp_item, tg_item) in enumerate(zip(self._pp.curves, self._tg.curves, strict=True)):
            run = self._runs[i] if i < len(self._runs) else None
            for item, which in ((pp_item, "pp"), (tg_item, "tg")):
                xs, ys = _series(run.points, which) if run is not None else ([], [])
                item.setData(xs, ys)
                item.setVisible(run is not None and run.visible)
        self._restyle()
        self._update_legend()
        self._update_ranges()

    def set_live(self, points: Sequence[CurvePoint], label: str = LIVE_LABEL) -> None:
        """The running run's curve so far (empty: none)."""
        self._live = tuple(points)
        self._live_label = label if self._live else ""
        for panel, which in ((self._pp, "pp"), (self._tg, "tg")):
            panel.live.setData(*_series(self._live, which))
        self._update_legend()
        self._update_ranges()

    # --- reading back (tests, tooltips) --------------------------------------------------------

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def curve_data(self, index: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """``(S_PP points, S_TG points)`` drawn for the run at ``index``, as (N_KV, t/s)."""
        out = []
        for panel in (self._pp, self._tg):
            xs, ys = panel.curves[index].getData()
            xs = [] if xs is None else xs
            ys = [] if ys is None else ys
            out.append([(float(x), float(y)) for x, y in zip(xs, ys, strict=True)])
        return out[0], out[1]

    def live_data(self) -> list[tuple[float, float]]:
        xs, ys = self._tg.live.getData()
        return [] if xs is None else [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]

    def is_run_visible(self, index: int) -> bool:
        return bool(self._pp.curves[index].isVisible() and self._tg.curves[index].isVisible())

    def legend_labels(self) -> list[str]:
        return [label.text for _, label in self._legend.items]

    # --- internals -----------------------------------------------------------------------------

    def _apply_theme(self) -> None:
        dark = theme.is_dark()
        if dark == self._dark:
            return
        self._dark = dark
        self.setBackground("#1f2124" if dark else "#ffffff")
        for panel in (self._pp, self._tg):
            panel.set_theme(dark)
        self._legend.opts["labelTextColor"] = "#dddddd" if dark else "#222222"
        self._legend_key = ()  # rebuild the labels in the new colour
        self._restyle()

    def _restyle(self) -> None:
        dark = bool(self._dark)
        for i, (pp_item, tg_item) in enumerate(zip(self._pp.curves, self._tg.curves, strict=True)):
            color, symbol = run_style(i, dark)
            for item in (pp_item, tg_item):
                item.setPen(pg.mkPen(color, width=2))
                item.setSymbol(symbol)
                item.setSymbolSize(8)
                item.setSymbolBrush(color)
                item.setSymbolPen(pg.mkPen(color.darker(130)))
        live = QColor("#dddddd" if dark else "#222222")
        for panel in (self._pp, self._tg):
            panel.live.setPen(pg.mkPen(live, width=2, style=Qt.PenStyle.DashLine))
            panel.live.setSymbol("o")
            panel.live.setSymbolSize(6)
            panel.live.setSymbolBrush(live)
            panel.live.setSymbolPen(pg.mkPen(live))

    def _update_legend(self) -> None:
        key = (tuple((r.label, r.visible) for r in self._runs), self._live_label)
        if key == self._legend_key:
            return
        self._legend_key = key
        self._legend.clear()
        for i, run in enumerate(self._runs):
            self._legend.addItem(self._pp.curves[i], run.label)
        if self._live_label:
            self._legend.addItem(self._pp.live, self._live_label)
        # LegendItem.updateSize moves it to (0, 0) of the layout; let the layout place it again.
        self._legend.updateGeometry()
        self.ci.layout.invalidate()
        self.ci.layout.activate()

    def _update_ranges(self) -> None:
        for panel, which in ((self._pp, "pp"), (self._tg, "tg")):
            xs: list[float] = []
            ys: list[float] = []
            shown = [r.points for r in self._runs if r.visible] + [self._live]
            for points in shown:
                x, y = _series(points, which)
                xs += x
                ys += y
            panel.empty.setVisible(not xs)
            panel.empty.setText(
                "no run shown: tick one in the run list" if self._runs else "no run yet"
            )
            for name in ("left", "bottom"):
                panel.plot.getAxis(name).setStyle(showValues=bool(xs))
            if not xs:
                panel.plot.setXRange(0, 1, padding=0)
                panel.plot.setYRange(0, 1, padding=0)
                continue
            lo, hi = min(xs), max(xs)
            if hi == lo:
                lo, hi = lo - 512, hi + 512
            pad = (hi - lo) * 0.04
            panel.plot.setXRange(max(lo - pad, -pad), hi + pad, padding=0)
            top = max(ys) * 1.12 or 1.0
            # A little below 0 so that the 0 tick is labelled (pyqtgraph skips an edge tick).
            panel.plot.setYRange(-top * 0.02, top, padding=0)

    def _on_legend_sample_clicked(self, item: object) -> None:
        for i, curve in enumerate(self._pp.curves):
            if curve is item and i < len(self._runs):
                self.toggle_requested.emit(i)
