"""GUI test fixtures: offscreen Qt, isolated QSettings, small and demo documents."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent

from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.library import ProfileLibrary
from moe_studio.core.units import GiB
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import MainWindow, prepare_plan


def rig_of(*gpus: int, ram: int = 256) -> Rig:
    devices = tuple(
        Device(
            f"CUDA{i}",
            DeviceKind.CUDA,
            g * GiB,
            label=f"GPU {g} GiB",
            index=i,
            pcie_gen=4,
            pcie_width=16,
        )
        for i, g in enumerate(gpus)
    )
    return Rig("test rig", HostInfo(ram * GiB, cores_physical=16), devices, source="test")


@pytest.fixture
def qsettings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "moe-studio.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def document() -> Document:
    """Qwen3-30B-A3B on one 24 GiB GPU, everything on the CPU to start with."""
    layout = catalog.load_catalog("qwen3-30b-a3b")
    return Document(layout, rig_of(24), Settings(ctx=8192))


@pytest.fixture
def demo_document() -> Document:
    layout = catalog.load_catalog(catalog.DEMO)
    rig = rig_of(24)
    settings, placed = prepare_plan(layout, rig, Settings(cache_type_k="q8_0", cache_type_v="q8_0"))
    assert isinstance(settings, Settings)
    return Document(layout, rig, settings, placed.plan)


@pytest.fixture
def library(tmp_path: Path) -> ProfileLibrary:
    return ProfileLibrary(tmp_path / "library")


@pytest.fixture
def window(
    qtbot: object,
    demo_document: Document,
    qsettings: QSettings,
    library: ProfileLibrary,
    tmp_path: Path,
) -> Iterator[MainWindow]:
    win = MainWindow(
        demo_document,
        qsettings,
        profile_library=library,
        autosave_folder=tmp_path / "autosave",
        auto_detect_engine=False,
    )
    qtbot.addWidget(win)  # type: ignore[attr-defined]
    win.resize(1280, 800)
    win.show()
    yield win
    win.tasks.cancel()
    win.tasks.wait(5000)


def save_screenshot(widget: object, name: str, tmp_path: Path) -> Path:
    """Grab ``widget`` to ``tmp_path/name`` (and to $MOE_STUDIO_SCREENSHOTS when set)."""
    path = tmp_path / name
    pixmap = widget.grab()  # type: ignore[attr-defined]
    assert not pixmap.isNull()
    assert pixmap.save(str(path))
    target = os.environ.get("MOE_STUDIO_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def drag_enter_event(pos: QPointF, mime: QMimeData) -> QDragEnterEvent:
    """A synthetic drag-enter: Qt 6.12 wants a QPointF (QPoint is deprecated), 6.11 a QPoint."""
    args = (
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    try:
        return QDragEnterEvent(QPointF(pos), *args)
    except TypeError:
        return QDragEnterEvent(QPointF(pos).toPoint(), *args)


def drag_move_event(pos: QPointF, mime: QMimeData) -> QDragMoveEvent:
    """A synthetic drag-move (same QPoint/QPointF story as :func:`drag_enter_event`)."""
    args = (
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    try:
        return QDragMoveEvent(QPointF(pos), *args)
    except TypeError:
        return QDragMoveEvent(QPointF(pos).toPoint(), *args)


@pytest.fixture(autouse=True)
def _no_modal_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal questions would block an offscreen test: unsaved work is discarded at teardown and
    recovery is declined unless a test installs its own answer."""
    import moe_studio.gui.profile_controller as controller

    monkeypatch.setattr(controller, "_ask_unsaved", lambda window, what: "discard")
    monkeypatch.setattr(controller, "_ask_recovery", lambda window, description: False)
