"""PP against TG of every trial: screening trials (depth 0) as hollow circles with their Pareto
front, finals (the user's depths) as filled squares, the current configuration (the baseline) as
a star in both rungs and the best as a ring.

Items are created once and updated in place with ``setData``; axes start at 0 so distances read
as ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from moe_studio.core.engine.tune import Trial, pareto_front
from moe_studio.gui import theme

SCREEN_COLOR = "#56B4E9"
FINAL_COLOR = "#009E73"
CURRENT_COLOR = "#E69F00"
BEST_COLOR = "#D55E00"


def _xy(trials: Sequence[Trial]) -> tuple[list[float], list[float]]:
    kept = [t for t in trials if t.pp is not None and t.tg is not None]
    return [t.pp or 0.0 for t in kept], [t.tg or 0.0 for t in kept]


class TunePlot(pg.PlotWidget):  # type: ignore[misc]
    """The live scatter of a tuning run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        dark = theme.is_dark()
        self.setBackground("#1f2124" if dark else "#ffffff")
        plot = self.getPlotItem()
        plot.setLabel("bottom", "PP (prompt) tokens/s")
        plot.setLabel("left", "TG (generation) tokens/s")
        plot.showGrid(x=True, y=True, alpha=0.25)
        # Top left: fast configurations gather top right, slow ones near the origin.
        legend = plot.addLegend(offset=(10, 10))
        self.front = pg.PlotDataItem(
            pen=pg.mkPen(SCREEN_COLOR, width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine),
            name="Pareto front (screening)",
        )
        self.screening = pg.ScatterPlotItem(
            symbol="o",
            size=8,
            pen=pg.mkPen(SCREEN_COLOR, width=1.5),
            brush=None,
            name="screening (depth 0)",
        )
        self.finals = pg.ScatterPlotItem(
            symbol="s",
            size=10,
            pen=pg.mkPen(FINAL_COLOR),
            brush=pg.mkBrush(FINAL_COLOR),
            name="finals (your depths)",
        )
        self.current = pg.ScatterPlotItem(
            symbol="star",
            size=18,
            pen=pg.mkPen("#333333" if not dark else "#dddddd"),
            brush=pg.mkBrush(CURRENT_COLOR),
            name="current configuration",
        )
        self.best = pg.ScatterPlotItem(
            symbol="o", size=22, pen=pg.mkPen(BEST_COLOR, width=2.5), brush=None, name="best"
        )
        for item in (self.front, self.screening, self.finals, self.current, self.best):
            plot.addItem(item)
        legend.setVisible(True)
        plot.setXRange(0, 1, padding=0)
        plot.setYRange(0, 1, padding=0)

    def set_trials(self, trials: Sequence[Trial], current_key: str, best: Trial | None) -> None:
        """Show ``trials``; ``current_key`` is the baseline's knobs key."""
        screening = [t for t in trials if t.rung == 0 and t.status == "ok"]
        finals = [t for t in trials if t.rung == 1 and t.status in ("ok", "stopped")]
        self.screening.setData(*_xy(screening))
        self.finals.setData(*_xy(finals))
        self.front.setData(*_xy(pareto_front(screening)))
        self.current.setData(*_xy([t for t in trials if t.knobs.key == current_key]))
        self.best.setData(*_xy([best] if best is not None else []))
        xs, ys = _xy([*screening, *finals])
        plot = self.getPlotItem()
        plot.setXRange(0, max(xs, default=1.0) * 1.1, padding=0)
        plot.setYRange(0, max(ys, default=1.0) * 1.15, padding=0)

    def counts(self) -> dict[str, int]:
        """Points per item (tests)."""
        return {
            "screening": len(self.screening.data),
            "finals": len(self.finals.data),
            "front": len(self.front.xData if self.front.xData is not None else ()),
            "current": len(self.current.data),
            "best": len(self.best.data),
        }
