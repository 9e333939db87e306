"""Start-up: ``moe-studio [MODEL] [--rig PRESET|FILE] [--palette MODE] [--self-test]``.

With no model the app opens the built-in demo (DeepSeek-V3 on a 1× 24 GB + 256 GB rig, already
auto-placed) so a newcomer sees a meaningful picture at once. Qt's own messages go to logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from PySide6.QtCore import QMessageLogContext, QSettings, QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtWidgets import QApplication

from moe_studio.core import __version__
from moe_studio.core.errors import MoeStudioError
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.hardware.rigs import load_preset
from moe_studio.core.plan.settings import Settings
from moe_studio.gui import theme
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import MainWindow, prepare_plan

log = logging.getLogger("gui")
DEMO_RIG = "demo-24g-256g"
DEMO_SETTINGS = Settings(ctx=32768, cache_type_k="q8_0", cache_type_v="q8_0")


def _qt_message(mode: QtMsgType, context: QMessageLogContext, message: str) -> None:
    level = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.INFO,
        QtMsgType.QtWarningMsg: logging.WARNING,
        QtMsgType.QtCriticalMsg: logging.ERROR,
        QtMsgType.QtFatalMsg: logging.CRITICAL,
    }.get(mode, logging.WARNING)
    logging.getLogger("qt").log(level, "%s", message)


def _excepthook(kind: type[BaseException], error: BaseException, tb: object) -> None:
    """Anything that escapes a slot ends in the one error dialog, never only on stderr."""
    log.error("unhandled error", exc_info=(kind, error, tb))  # type: ignore[arg-type]
    if isinstance(error, KeyboardInterrupt):
        return
    from moe_studio.gui.messages import show_error

    show_error(QApplication.activeWindow(), "MoE Studio", error)


def demo_document(rig: Rig | None = None) -> Document:
    """The start-up picture: the demo model on ``rig`` (the demo rig by default), advisor
    -b/-ub, auto-placed for that rig."""
    layout = catalog.load_catalog(catalog.DEMO)
    rig = rig if rig is not None else load_preset(DEMO_RIG)
    settings, placed = prepare_plan(layout, rig, DEMO_SETTINGS)
    assert isinstance(settings, Settings)
    return Document(layout, rig, settings, placed.plan)


def build_window(args: argparse.Namespace, qsettings: QSettings | None = None) -> MainWindow:
    rig: Rig | None = None
    if args.rig:
        from moe_studio.core.cli.hw import resolve_rig

        rig = resolve_rig(args.rig)
    # Placed for the rig it starts on: no plan left on a device that rig lacks.
    document = demo_document(rig)
    window = MainWindow(document, qsettings)
    if args.model:
        if args.model.startswith(catalog.PREFIX):
            window.open_catalog(args.model.removeprefix(catalog.PREFIX))
        else:
            window.open_path(args.model)
    return window


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-studio", description="MoE Studio desktop app")
    p.add_argument("model", nargs="?", help="a .gguf file (any shard) or catalog:NAME[@RECIPE]")
    p.add_argument("--rig", help="plan for a rig file or preset instead of the demo rig")
    p.add_argument("--palette", choices=("system", "light", "dark"), help="colour scheme")
    p.add_argument(
        "--self-test", action="store_true", help="open the window offscreen with the demo and exit"
    )
    p.add_argument("--version", action="version", version=f"moe-studio {__version__}")
    return p


def self_test() -> int:
    """Open the main window offscreen with the demo, check it shows a plan, exit 0."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication(["moe-studio"])
    settings = QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, "moe-studio-selftest", "self-test"
    )
    window = build_window(_parser().parse_args([]), settings)
    window.show()
    app.processEvents()
    image = window.grab()
    name, rows = window.document.layout.name, window.tensor_model.rowCount()
    problems = []
    if window.tensor_model.rowCount() < 2:
        problems.append("the tensor map is empty")
    if not window.command_view.command_text().startswith("llama-server"):
        problems.append("no command was built")
    if image.isNull():
        problems.append("the window could not be painted")
    window.close()
    # Delete the window while the application still runs: leaving it to interpreter shutdown
    # crashes PySide now and then (objects destroyed after QApplication).
    window.deleteLater()
    app.processEvents()
    if problems:
        sys.stderr.write("self-test failed: " + "; ".join(problems) + "\n")
        return 1
    sys.stdout.write(f"self-test passed: {name}, {rows} rows\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.self_test:
        return self_test()
    qInstallMessageHandler(_qt_message)
    sys.excepthook = _excepthook
    app = QApplication.instance() or QApplication(["moe-studio"])
    app.setOrganizationName("moe-studio")
    app.setApplicationName("MoE Studio")
    assert isinstance(app, QApplication)
    qsettings = QSettings()
    theme.apply_palette(app, args.palette or str(qsettings.value("view/palette", "system")))
    try:
        window = build_window(args, qsettings)
    except MoeStudioError as exc:
        sys.stderr.write(f"moe-studio: error: {exc}\n")
        return 1
    window.show()
    QTimer.singleShot(0, window.raise_)
    QTimer.singleShot(0, window.profiles.offer_recovery)
    return app.exec()
