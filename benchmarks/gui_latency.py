"""GUI latency on the DeepSeek-V3 demo layout (offscreen).

1. From a cell assignment (what a click or a paint step does) to the budget plot holding the new
   values — the document, the tensor-map model and the plot all update synchronously on the
   ``plan_changed`` signal. Median of 60 assignments. Target ≤ 16 ms (one frame).
2. Cold start to the first painted window, against ``import PySide6.QtWidgets, pyqtgraph`` alone
   (both as fresh interpreters). Target ≤ 0.8 s more than the imports.

Run: ``.venv/bin/python benchmarks/gui_latency.py``
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPORTS_ONLY = "import PySide6.QtWidgets, pyqtgraph"
FIRST_PAINT = """
import os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, {root!r})
from PySide6.QtCore import QEvent, QObject, QSettings
from PySide6.QtWidgets import QApplication
app = QApplication(["moe-studio"])
from moe_studio.gui.app import build_window, _parser
settings = QSettings({ini!r}, QSettings.Format.IniFormat)
window = build_window(_parser().parse_args([]), settings)

class FirstPaint(QObject):
    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            sys.stdout.flush()
            os._exit(0)  # the first frame is painted: stop the clock here, skip teardown
        return False

spy = FirstPaint()
window.tensor_view.viewport().installEventFilter(spy)
window.show()
app.exec()
"""


def _run(code: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    )
    return time.perf_counter() - start


def cold_start(runs: int = 5) -> tuple[float, float]:
    ini = str(Path("/tmp") / "moe-studio-bench.ini")
    _run(IMPORTS_ONLY)  # warm the page cache for both
    base = statistics.median(_run(IMPORTS_ONLY) for _ in range(runs))
    app = statistics.median(_run(FIRST_PAINT.format(root=str(ROOT), ini=ini)) for _ in range(runs))
    return base, app


def assignment_latency(samples: int = 60) -> tuple[float, float]:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from moe_studio.core.plan.memory import DeviceBudget
    from moe_studio.core.plan.placement import expert_cells
    from moe_studio.gui.app import _parser, build_window

    app = QApplication.instance() or QApplication(["bench"])
    window = build_window(
        _parser().parse_args([]), QSettings("/tmp/moe-studio-bench.ini", QSettings.Format.IniFormat)
    )
    window.show()
    app.processEvents()
    doc = window.document
    cells = expert_cells(doc.layout, 20, 50)
    times = []
    for i in range(samples):
        cell = cells[i % len(cells)]
        device = "CUDA0" if i % 2 == 0 else "CPU"
        start = time.perf_counter()
        doc.assign_cells([cell], device)
        drawn = window.budget.bar_heights()
        elapsed = time.perf_counter() - start
        budget: DeviceBudget | None = doc.estimate()[1].device("CUDA0")
        assert budget is not None and abs(drawn["CUDA0"]["weights"] - budget.weights) < 1.0
        times.append(elapsed)
    window.profiles.ask_unsaved = lambda what: "discard"  # no modal question in a benchmark
    window.close()
    return statistics.median(times), max(times)


def main() -> None:
    median, worst = assignment_latency()
    print(
        f"cell assignment → budget plot updated: median {median * 1000:.2f} ms, "
        f"worst {worst * 1000:.2f} ms (target ≤ 16 ms)"
    )
    base, app = cold_start()
    print(
        f"cold start: import PySide6.QtWidgets+pyqtgraph {base:.3f} s, "
        f"first painted window {app:.3f} s"
    )
    print(f"  difference {app - base:.3f} s (target ≤ 0.8 s)")


if __name__ == "__main__":
    main()
