"""Per-device memory budgets: stacked bars (weights, KV cache, compute buffer, overhead) against
capacity and reserve, GPUs and RPC devices on the left, host RAM on the right.

Items are created once and updated in place (pyqtgraph ``setOpts``/``setData``). A device over
its usable capacity gets a hatched vermillion overflow segment and a "+X over" label, so the
warning does not rely on colour alone. Cells dragged from the grid can be dropped on a bar.

Trust, drawn: an estimated compute buffer carries a hatched cap, its known error
(``memory.COMPUTE_MARGIN``), and a device fits only with the cap under its usable line; a compute
buffer measured on this machine has no cap and its label says "measured". After "Check with
engine", a diamond marks the engine's own total (weights + KV + compute, plus our overhead) on
each bar, while the plan stays the one checked. Hovering a bar explains its figures.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QFontMetrics,
    QMouseEvent,
    QResizeEvent,
)
from PySide6.QtWidgets import QApplication, QWidget

from moe_studio.core.engine.probe import ProbeResult
from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.plan.memory import COMPUTE_MARGIN, ComputeSource, DeviceBudget, Estimate
from moe_studio.core.units import GiB, format_bytes
from moe_studio.gui import theme
from moe_studio.gui.document import Document
from moe_studio.gui.tensor_map.model import CELLS_MIME, cells_from_mime

SEGMENTS = ("weights", "kv", "compute", "overhead")
SEGMENT_LABELS = {
    "weights": "weights",
    "kv": "KV cache",
    "compute": "compute buffer",
    "overhead": "overhead",
}
BAR_WIDTH = 0.6
HEADROOM_RULE = (
    "A bar stacks weights, KV cache, compute buffer and overhead. An estimated compute buffer "
    f"carries a hatched cap of ±{COMPUTE_MARGIN:.0%} of it: the error the estimate is held to "
    "(ik's own dry runs of DeepSeek attention: 86 % of points within it; older builds' "
    "published CUDA logs miss by more, see benchmarks/cuda_corpus.py). A device fits only when "
    "the bar with its cap stays under the dashed line (capacity minus the reserve). Figures "
    "measured on "
    "this machine (a launch, or Check with engine) carry no cap; a diamond marks the engine's "
    "own total from the last check."
)

# Below the tick labels of the bottom axis: the tick marks and the gap to the text (pixels).
AXIS_PADDING = 14


class _Panel:
    """One plot (GPUs or RAM) with its items."""

    def __init__(self, plot: pg.PlotItem, title: str) -> None:
        self.plot = plot
        plot.setTitle(title, size="10pt")
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.showGrid(x=False, y=True, alpha=0.25)
        plot.setLabel("left", "GiB")
        self.bars = {
            seg: pg.BarGraphItem(
                x=[],
                height=[],
                width=BAR_WIDTH,
                y0=[],
                brush=theme.SEGMENT_COLORS[seg],
                pen=pg.mkPen(None),
            )
            for seg in SEGMENTS
        }
        for seg in SEGMENTS:
            plot.addItem(self.bars[seg])
        self.overflow = pg.BarGraphItem(
            x=[],
            height=[],
            width=BAR_WIDTH,
            y0=[],
            brush=QBrush(theme.OVER_COLOR, Qt.BrushStyle.BDiagPattern),
            pen=pg.mkPen(theme.OVER_COLOR, width=2),
        )
        plot.addItem(self.overflow)
        # The compute estimate's known error, on top of the stack (none for measured figures).
        self.band = pg.BarGraphItem(
            x=[],
            height=[],
            width=BAR_WIDTH,
            y0=[],
            brush=QBrush(theme.SEGMENT_COLORS["compute"], Qt.BrushStyle.Dense5Pattern),
            pen=pg.mkPen(theme.SEGMENT_COLORS["compute"], width=1, style=Qt.PenStyle.DotLine),
        )
        plot.addItem(self.band)
        # The engine's own totals from "Check with engine".
        self.marks = pg.ScatterPlotItem(
            x=[], y=[], symbol="d", size=13, pen=pg.mkPen("#000000", width=1.5), brush="#56B4E9"
        )
        plot.addItem(self.marks)
        self.capacity = pg.PlotDataItem([], [], connect="pairs", pen=pg.mkPen("#444444", width=2))
        self.reserve = pg.PlotDataItem(
            [], [], connect="pairs", pen=pg.mkPen("#444444", width=1, style=Qt.PenStyle.DashLine)
        )
        plot.addItem(self.capacity)
        plot.addItem(self.reserve)
        self.labels: list[pg.TextItem] = []
        self.top = 1.0  # the highest bar or capacity line, GiB
        self.budgets: list[DeviceBudget] = []

    def set_budgets(
        self, budgets: list[DeviceBudget], dark: bool, measured: dict[str, int] | None = None
    ) -> None:
        self.budgets = budgets
        xs = list(range(len(budgets)))
        bottom = [0.0] * len(budgets)
        for seg in SEGMENTS:
            heights = [getattr(b, seg) / GiB for b in budgets]
            self.bars[seg].setOpts(x=xs, height=heights, y0=list(bottom), width=BAR_WIDTH)
            bottom = [a + h for a, h in zip(bottom, heights, strict=True)]
        over_x, over_h, over_y0 = [], [], []
        for i, b in enumerate(budgets):
            if not b.fits:
                over_x.append(i)
                over_y0.append(b.usable / GiB)
                over_h.append(b.overflow / GiB)
        self.overflow.setOpts(x=over_x, height=over_h, y0=over_y0, width=BAR_WIDTH + 0.12)
        band = [(i, b) for i, b in enumerate(budgets) if b.margin]
        self.band.setOpts(
            x=[i for i, _ in band],
            height=[b.margin / GiB for _, b in band],
            y0=[b.total / GiB for _, b in band],
            width=BAR_WIDTH,
        )
        marks = [(i, (measured or {}).get(b.name)) for i, b in enumerate(budgets)]
        self.marks.setData(
            x=[i for i, m in marks if m is not None],
            y=[m / GiB for _, m in marks if m is not None],
        )
        cap_x, cap_y, res_x, res_y = [], [], [], []
        half = BAR_WIDTH / 2 + 0.12
        for i, b in enumerate(budgets):
            cap_x += [i - half, i + half]
            cap_y += [b.capacity / GiB] * 2
            if b.reserve:
                res_x += [i - half, i + half]
                res_y += [b.usable / GiB] * 2
        line = "#dddddd" if dark else "#333333"
        self.capacity.setData(cap_x, cap_y, connect="pairs", pen=pg.mkPen(line, width=2))
        self.reserve.setData(
            res_x, res_y, connect="pairs", pen=pg.mkPen(line, width=1, style=Qt.PenStyle.DashLine)
        )
        axis = self.plot.getAxis("bottom")
        ticks = [(i, _tick(b)) for i, b in enumerate(budgets)]
        axis.setTicks([ticks])
        # An RPC device's tick has two lines (name, endpoint); the axis keeps room for all of
        # them, or the endpoint is clipped under its bar.
        lines = max((text.count("\n") + 1 for _, text in ticks), default=1)
        height = (
            QFontMetrics(axis.style.get("tickFont") or QApplication.font()).lineSpacing() * lines
        )
        if axis.height() != height + AXIS_PADDING:
            axis.setHeight(height + AXIS_PADDING)
        while len(self.labels) < len(budgets):
            label = pg.TextItem(anchor=(0.5, 1.0))
            self.plot.addItem(label)
            self.labels.append(label)
        top = max([max(b.capacity, b.total + b.margin) / GiB for b in budgets] or [1.0])
        for i, label in enumerate(self.labels):
            if i >= len(budgets):
                label.setText("")
                continue
            b = budgets[i]
            y = max(b.total + b.margin, b.capacity) / GiB
            if b.fits:
                measured_mark = {
                    ComputeSource.MEASURED: " measured",
                    ComputeSource.SCALED: " scaled",
                }.get(b.compute_source, "")
                label.setText(
                    f"{b.total / GiB:.1f} / {b.capacity / GiB:.0f}{measured_mark}",
                    color="#dddddd" if dark else "#222222",
                )
            else:
                label.setText(f"+{format_bytes(b.overflow)} over", color=theme.OVER_COLOR.name())
            label.setPos(i, y + top * 0.07)
        self.plot.setXRange(-0.7, max(0.7, len(budgets) - 0.3), padding=0)
        self.top = top
        self.fit_range()

    def fit_range(self) -> None:
        """Room above the highest label for its line of text, however short the plot is drawn."""
        pixels = self.plot.vb.height()
        line = max((label.boundingRect().height() for label in self.labels), default=24.0) + 2
        share = min(0.5, line / pixels) if pixels > 0 else 0.11
        self.plot.setYRange(0, self.top * 1.07 / (1 - share), padding=0)

    def device_at(self, scene_pos: QPointF) -> str | None:
        if not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.plot.vb.mapSceneToView(scene_pos)
        i = round(point.x())
        if 0 <= i < len(self.budgets) and abs(point.x() - i) <= 0.5:
            name: str = self.budgets[i].name
            return name
        return None


def _tick(b: DeviceBudget) -> str:
    if b.kind is DeviceKind.CPU:
        return "RAM"
    if b.kind is DeviceKind.RPC:
        return b.name.split("[", 1)[0] + "\n" + b.name[b.name.find("[") + 1 : -1]
    return b.name


class BudgetPlot(pg.GraphicsLayoutWidget):  # type: ignore[misc]
    """Signals:
    cells_dropped(cells, device): cells were dropped on a device's bar.
    """

    cells_dropped = Signal(list, str)

    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self._document = document
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setMinimumHeight(180)
        self._gpus = _Panel(self.addPlot(row=0, col=0), "GPUs and RPC devices")
        self._ram = _Panel(self.addPlot(row=0, col=1), "Host RAM")
        # The legend gets its own row so it never covers a bar's label.
        self._legend = pg.LegendItem(labelTextSize="8pt", colCount=5)
        self.addItem(self._legend, row=1, col=0, colspan=2)
        for seg in SEGMENTS:
            self._legend.addItem(self._gpus.bars[seg], SEGMENT_LABELS[seg])
        self._legend.addItem(self._gpus.overflow, "over budget")
        self._legend.addItem(self._gpus.band, f"estimate error (±{COMPUTE_MARGIN:.0%} compute)")
        self._legend.addItem(self._gpus.marks, "engine's dry run")
        self._fit_legend()
        self._measured: ProbeResult | None = None
        self._measured_state: tuple[object, ...] | None = None
        self.setMouseTracking(True)
        self.setToolTip(HEADROOM_RULE)
        self.ci.layout.setColumnStretchFactor(0, 5)
        self.ci.layout.setColumnStretchFactor(1, 1)
        # set_model and set_rig announce a plan change too, so this one signal is enough.
        document.plan_changed.connect(self._on_document_plan_changed)
        self.refresh()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        # The base class's __init__ resizes before ours has run, and its close() clears the scene
        # (legend and plots deleted) before dropping the viewport, which resizes once more.
        if hasattr(self, "_legend") and not self.closed:
            self._fit_legend()
            for panel in (self._gpus, self._ram):
                panel.fit_range()  # the labels' headroom depends on the height in pixels

    def _fit_legend(self) -> None:
        """As many legend columns as the width holds: a legend wider than the widget would push
        the Host RAM panel out of sight (the layout does not shrink it)."""
        # The text's own width: a LabelItem's rectangle is stretched to its column once laid out.
        widest = max(sample.boundingRect().width() + label.item.boundingRect().width()
                     for sample, label in self._legend.items)  # fmt: skip
        spacing = 2 * self._legend.layout.horizontalSpacing() + 12  # sample/label gaps, margins
        columns = int((self.viewport().width() - 16) // (widest + spacing))
        self._legend.setColumnCount(max(1, min(len(self._legend.items), columns)))

    def refresh(self) -> None:
        _, estimate = self._document.estimate()
        self.show_estimate(estimate)

    def show_estimate(self, estimate: Estimate) -> None:
        dark = theme.is_dark()
        self.setBackground("#1f2124" if dark else "#ffffff")
        devices = [d for d in estimate.devices if d.kind is not DeviceKind.CPU]
        host = [d for d in estimate.devices if d.kind is DeviceKind.CPU]
        measured = self.measured_totals(estimate)
        self._gpus.set_budgets(devices, dark, measured)
        self._ram.set_budgets(host, dark, measured)

    def checked_state(self) -> tuple[object, ...]:
        """What a check is of: the document's plan, settings and rig (the marks belong to it)."""
        doc = self._document
        return (doc.plan, doc.settings, doc.rig)

    def show_measured(
        self, result: ProbeResult | None, state: tuple[object, ...] | None = None
    ) -> None:
        """Mark the engine's totals of a check of ``state`` (see :meth:`checked_state`; default:
        the document's now). None: clear."""
        self._measured = result if result is not None and result.rows else None
        self._measured_state = (state or self.checked_state()) if self._measured else None
        self.refresh()

    def measured_totals(self, estimate: Estimate) -> dict[str, int]:
        """Device → the engine's weights + KV + compute (+ our overhead, and the compute the
        engine allocates only once it runs: -sm graph's input copies) from the last check, while
        the plan, settings and rig are the ones checked ({} otherwise)."""
        result = self._measured
        if result is None or self._measured_state != self.checked_state():
            return {}
        out = {}
        for row in result.rows:
            budget = estimate.device(row.device)
            parts = (row.actual_weights, row.actual_kv, row.actual_compute)
            if budget is None or any(p is None for p in parts):
                continue
            out[row.device] = sum(p or 0 for p in parts) + budget.overhead
            out[row.device] += budget.unprinted_compute
        return out

    def device_tooltip(self, name: str) -> str:
        """What a device's bar says, for hovering it."""
        _, estimate = self._document.estimate()
        b = estimate.device(name)
        if b is None:
            return HEADROOM_RULE
        source = {
            ComputeSource.MEASURED: "measured on this machine",
            ComputeSource.SCALED: "scaled from a measurement at nearby settings",
            ComputeSource.ESTIMATED: "estimated",
        }[b.compute_source]
        lines = [
            f"<b>{name}</b>",
            f"weights {format_bytes(b.weights)}, KV cache {format_bytes(b.kv)}, "
            f"compute buffer {format_bytes(b.compute)} ({source}), "
            f"overhead {format_bytes(b.overhead)}",
            f"total {format_bytes(b.total)}"
            + (f" + {format_bytes(b.margin)} estimate error" if b.margin else "")
            + f" of {format_bytes(b.usable)} usable",
        ]
        engine = self.measured_totals(estimate).get(name)
        if engine is not None:
            extra = " and -sm graph input copies" if b.unprinted_compute else ""
            lines.append(f"engine's dry run: {format_bytes(engine)} (with our overhead{extra})")
        return "<br>".join(lines) + "<br><br>" + HEADROOM_RULE

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        name = self.device_at(event.position())
        self.setToolTip(self.device_tooltip(name) if name else HEADROOM_RULE)
        super().mouseMoveEvent(event)

    def bar_heights(self) -> dict[str, dict[str, float]]:
        """Per device and segment, the bar height in bytes as drawn (for tests)."""
        out: dict[str, dict[str, float]] = {}
        for panel in (self._gpus, self._ram):
            for seg in SEGMENTS:
                heights = panel.bars[seg].opts.get("height", [])
                for b, h in zip(panel.budgets, heights, strict=True):
                    out.setdefault(b.name, {})[seg] = float(h) * GiB
        return out

    def overflowing(self) -> list[str]:
        """Devices drawn with an overflow segment."""
        out = []
        for panel in (self._gpus, self._ram):
            xs = list(panel.overflow.opts.get("x", []))
            out += [panel.budgets[int(x)].name for x in xs]
        return out

    def device_at(self, pos: QPointF) -> str | None:
        """The device whose bar is under ``pos`` (widget coordinates)."""
        scene = self.mapToScene(pos.toPoint())
        return self._gpus.device_at(scene) or self._ram.device_at(scene)

    # --- drop target ---------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasFormat(CELLS_MIME):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasFormat(CELLS_MIME) and self.device_at(event.position()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        device = self.device_at(event.position())
        cells = cells_from_mime(event.mimeData())
        if device and cells:
            self._document.assign_cells(cells, device)
            self.cells_dropped.emit(cells, device)
            event.acceptProposedAction()
        else:
            event.ignore()

    def _on_document_plan_changed(self, cells: object = None) -> None:
        self.refresh()
