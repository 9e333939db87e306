"""A newcomer driving the real window: the features of issues 11 and 14 used the way someone new
to MoE Studio uses them (Enter, Escape, the wheel, Stop, changing their mind), looking for stale
state, shortcuts that do nothing and values changed by accident. Each test drives real widgets
with QTest key sequences, wheel events and clicks; the engine and the Hub are the stand-ins."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget

from moe_studio.core.engine.discovery import probe_engine
from moe_studio.core.engine.health import Phase
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.compare import compare_repo
from moe_studio.core.plan.memory import ComputeSource
from moe_studio.core.plan.placement import expert_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from moe_studio.gui.document import Document
from moe_studio.gui.hub_dialog import HubDialog
from moe_studio.gui.main_window import MainWindow, prepare_plan
from moe_studio.gui.tune import TuneDialog
from tests.support.hf_server import HubServer
from tests.support.sparse import write_quant_repo
from tests.support.standin_tools import clean_env, install_standin

from .conftest import rig_of, save_screenshot
from .test_server_tab import _launch_ready, _tiny_document, _wait_phase

SHOTS = Path("/work/shots")
REPO = "org/DeepSeek-V3-GGUF"
CTRL = Qt.KeyboardModifier.ControlModifier
PLANT = {"ub": 1024, "threads": 2, "cpu_layers": 1, "noise": 0.02, "seed": 11}


def _shot(widget: QWidget, name: str, tmp_path: Path) -> None:
    save_screenshot(widget, name, tmp_path)
    if SHOTS.is_dir():
        widget.grab().save(str(SHOTS / name))


def _wheel(widget: QWidget, steps: int = 1) -> None:
    """A wheel turn over ``widget``'s centre, delivered the way the window system does."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(centre.toPoint())),
        QPoint(0, 0),
        QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "0.2")
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000")
    monkeypatch.setenv("STANDIN_BENCH_PLANT", json.dumps(PLANT))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return install_standin(tmp_path / "engine", "ik")


@pytest.fixture
def server_window(
    qtbot: Any, tiny_qwen3moe: Path, standin: Path, qsettings: QSettings, tmp_path: Path
) -> Iterator[MainWindow]:
    window = MainWindow(
        _tiny_document(tiny_qwen3moe),
        qsettings,
        autosave_folder=tmp_path / "autosave",
        auto_detect_engine=False,
    )
    window.engine_check.calibration_path = tmp_path / "calibration.jsonl"
    qtbot.addWidget(window)
    window.resize(1280, 800)
    window.show()
    window.process_panel.set_engine(probe_engine(standin))
    yield window
    window.process_panel.shutdown()
    if window.tune_dialog is not None:
        window.tune_dialog.shutdown()
    window.tasks.cancel()
    window.tasks.wait(5000)


@pytest.fixture(scope="module")
def quant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_quant_repo(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(
    quant_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(REPO, quant_files)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        yield server


# --- Server tab: the restart banner --------------------------------------------------------------


def test_stopping_the_server_takes_the_restart_banner_away(
    qtbot: Any, server_window: MainWindow, tmp_path: Path
) -> None:
    """Settings changed while the server ran, then the user pressed Stop instead of Restart: no
    server runs, so "it still runs the old command" must not stay on screen."""
    window = server_window
    window.tabs.setCurrentWidget(window.server_tab)
    panel = window.process_panel
    doc = window.document
    _launch_ready(qtbot, window)
    doc.set_settings(doc.settings.with_(ctx=1024), "Context 1024")
    qtbot.waitUntil(panel.restart_banner.isVisible, timeout=5000)
    QTest.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    _wait_phase(qtbot, window, Phase.STOPPED, Phase.FAILED)
    qtbot.waitUntil(lambda: not panel.server.running, timeout=20000)
    _shot(window, "qa_restart_banner_after_stop.png", tmp_path)
    assert not panel.restart_banner.isVisible(), panel.restart_label.text()


# --- Budget panel: "Check with engine" -----------------------------------------------------------


def _check(qtbot: Any, window: MainWindow) -> None:
    check = window.engine_check
    check.result = None
    QTest.mouseClick(check.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: check.result is not None, timeout=30000)
    assert check.result is not None and check.result.measured, check.status.text()
    _, est = window.document.estimate()
    assert window.budget.measured_totals(est)
    assert check.status.text().startswith("Measured by the engine's dry run")


def test_a_plan_edit_after_a_check_says_estimated_again(
    qtbot: Any, server_window: MainWindow, tmp_path: Path
) -> None:
    """The diamonds go with the plan that was checked; the sentence beside the button must go
    with them (it said "Measured by the engine's dry run" over bars that were estimates again)."""
    window = server_window
    doc = window.document
    _check(qtbot, window)
    doc.assign_cells(list(expert_cells(doc.layout, 3, 3)), "CUDA0")
    _, est = doc.estimate()
    assert window.budget.measured_totals(est) == {}
    _shot(window, "qa_check_status_after_edit.png", tmp_path)
    # Not "Measured", and not "Estimated" either beside a bar that says "measured".
    assert window.engine_check.status.text().startswith("This plan is not checked"), (
        window.engine_check.status.text()
    )
    # Undo brings the checked plan back, and with it what the engine measured.
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    _, est = doc.estimate()
    assert window.budget.measured_totals(est)
    assert window.engine_check.status.text().startswith("Measured")


def test_another_rig_takes_the_engines_marks_away(qtbot: Any, server_window: MainWindow) -> None:
    """The engine measured this plan on this rig: a rig with less RAM keeps the plan as it is
    but the check was not of it."""
    window = server_window
    doc = window.document
    window.tensor_view.setFocus()
    QTest.keyClick(window.tensor_view, Qt.Key.Key_A, CTRL | Qt.KeyboardModifier.ShiftModifier)
    _check(qtbot, window)
    plan = doc.plan
    window.change_rig(rig_of(24, ram=64), "Less RAM")
    assert doc.plan == plan  # nothing to re-place: the same layout fits
    _, est = doc.estimate()
    assert window.budget.measured_totals(est) == {}
    assert not window.engine_check.status.text().startswith("Measured")


# --- File → Open from Hugging Face… by keyboard --------------------------------------------------


def test_hub_dialog_by_keyboard_enter_compares_once_then_opens_the_row(
    qtbot: Any, hub: HubServer, tmp_path: Path
) -> None:
    """Type the repository, Enter: one comparison (not one from the field and another from the
    dialog's default button). Then Enter on the chosen row opens it, as a double click does,
    instead of throwing the table away for a new comparison."""
    calls: list[str] = []

    def counting(repo: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(repo)
        return compare_repo(repo, *args, **kwargs)

    dialog = HubDialog(rig_of(24, 24, ram=256), Settings(ctx=32768), compare=counting)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.repo.hasFocus() or QApplication.focusWidget() is not None)
    dialog.repo.setFocus()
    QTest.keyClicks(dialog.repo, REPO)
    QTest.keyClick(dialog.repo, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: dialog.comparison is not None, timeout=60000)
    qtbot.waitUntil(lambda: not dialog.tasks.running, timeout=60000)
    assert calls == [REPO]
    chosen = dialog.selected_row()
    assert chosen is not None
    dialog.table.setFocus()
    with qtbot.waitSignal(dialog.open_requested, timeout=5000) as blocker:
        QTest.keyClick(dialog.table, Qt.Key.Key_Return)
    assert blocker.args == [chosen.url]
    assert calls == [REPO] and not dialog.isVisible()
    dialog.tasks.wait(10000)


def test_escape_closes_the_hub_dialog_and_stops_its_comparison(qtbot: Any, hub: HubServer) -> None:
    dialog = HubDialog(rig_of(24), Settings(ctx=8192))
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.repo.setText(REPO)
    dialog.start()
    assert dialog.tasks.running
    QTest.keyClick(dialog.repo, Qt.Key.Key_Escape)
    assert not dialog.isVisible()
    dialog.tasks.wait(10000)
    assert not dialog.tasks.running


# --- Tools → Tune… -------------------------------------------------------------------------------


def _open_tune(window: MainWindow) -> TuneDialog:
    tools = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Tools")
    next(a for a in tools.actions() if a.text() == "&Tune…").trigger()
    dialog = window.tune_dialog
    assert isinstance(dialog, TuneDialog) and dialog.isVisible()
    return dialog


def test_the_wheel_over_tune_fields_does_not_change_them(server_window: MainWindow) -> None:
    """Scrolling over the Tune dialog just opened must not edit the budget, the trial limit or
    the objective: the user never clicked them (the Settings tab's rule)."""
    dialog = _open_tune(server_window)
    # Opening the dialog gives the focus to Start, not to the first field.
    assert dialog.focusWidget() is dialog.start_button
    before = (dialog.budget.value(), dialog.max_trials.value(), dialog.objective.currentIndex())
    for field in (dialog.budget, dialog.max_trials, dialog.objective):
        assert not field.hasFocus()
        _wheel(field, -1)
        _wheel(field, 2)
    after = (dialog.budget.value(), dialog.max_trials.value(), dialog.objective.currentIndex())
    assert after == before


@pytest.fixture
def tune_window(
    qtbot: Any, tiny_qwen3moe: Path, standin: Path, qsettings: QSettings, tmp_path: Path
) -> Iterator[MainWindow]:
    """The Tune dialog's test model on a 1 GiB GPU (where the planted optimum is not the
    current configuration)."""
    layout = catalog.load(str(tiny_qwen3moe))
    rig = Rig(
        "test", HostInfo(16 * GiB, cores_physical=4), (Device("CUDA0", DeviceKind.CUDA, 1 * GiB),)
    )
    settings, placed = prepare_plan(layout, rig, Settings(ctx=4096, threads=4))
    document = Document(layout, rig, settings, placed.plan)
    window = MainWindow(
        document, qsettings, autosave_folder=tmp_path / "autosave", auto_detect_engine=False
    )
    window.engine_check.calibration_path = tmp_path / "calibration.jsonl"
    qtbot.addWidget(window)
    window.show()
    window.process_panel.set_engine(probe_engine(standin, environ=clean_env()))
    yield window
    if window.tune_dialog is not None:
        window.tune_dialog.shutdown()
    window.process_panel.shutdown()
    window.tasks.cancel()
    window.tasks.wait(5000)


def _tuned(qtbot: Any, window: MainWindow) -> TuneDialog:
    dialog = _open_tune(window)
    dialog.max_trials.setValue(40)
    with qtbot.waitSignal(dialog.run_finished, timeout=60000):
        QTest.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    assert dialog.apply_button.isEnabled(), (dialog.status.text(), dialog.best_label.text())
    return dialog


def test_apply_best_is_not_offered_for_another_model(
    qtbot: Any, tune_window: MainWindow, tiny_deepseek2: Path
) -> None:
    """A finished run's best belongs to the model (and rig) it measured: after File → Open of
    another model, "Apply best" must not put the old model's plan on the new one."""
    window = tune_window
    dialog = _tuned(qtbot, window)
    window.open_path(str(tiny_deepseek2))
    qtbot.waitUntil(lambda: window.document.layout.source == str(tiny_deepseek2), timeout=30000)
    assert not dialog.apply_button.isEnabled()
    layout, plan = window.document.layout, window.document.plan
    dialog.apply_button.click()
    assert window.document.layout is layout and window.document.plan is plan


def test_apply_best_then_ctrl_z_in_the_tune_dialog_restores_everything(
    qtbot: Any, tune_window: MainWindow
) -> None:
    """The dialog says Undo takes "Apply best" back: Ctrl+Z right there (the dialog is the
    active window) must do it, and leave plan, settings, rig, status line and bars as before."""
    window = tune_window
    doc = window.document
    dialog = _tuned(qtbot, window)
    before = (doc.plan, doc.settings, doc.rig)
    status, bars = window.status_label.text(), window.budget.bar_heights()
    steps = doc.undo_stack.count()
    dialog.apply_button.setFocus()
    QTest.keyClick(dialog.apply_button, Qt.Key.Key_Space)
    assert doc.undo_stack.count() == steps + 1 and (doc.plan, doc.settings) != before[:2]
    dialog.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is dialog)
    QTest.keyClick(dialog.apply_button, Qt.Key.Key_Z, CTRL)
    assert (doc.plan, doc.settings, doc.rig) == before
    assert window.status_label.text() == status
    assert window.budget.bar_heights() == bars
    assert doc.undo_stack.count() == steps + 1 and doc.undo_stack.index() == steps
    # Undone, the best can be applied again; redone, it is in force and not offered.
    assert dialog.apply_button.isEnabled()
    QTest.keyClick(dialog.apply_button, Qt.Key.Key_Z, CTRL | Qt.KeyboardModifier.ShiftModifier)
    assert doc.undo_stack.index() == steps + 1 and not dialog.apply_button.isEnabled()


def test_choosing_another_engine_forgets_what_the_first_one_measured(
    qtbot: Any, server_window: MainWindow
) -> None:
    """The dry run's diamonds and the "measured" compute are the first engine's: after choosing
    another build, the bars are estimates again until that one is checked."""
    window = server_window
    doc = window.document
    first = window.process_panel.engine_info
    assert first is not None
    _check(qtbot, window)
    _, est = doc.estimate()
    assert {d.compute_source for d in est.devices} == {ComputeSource.MEASURED}
    other = dataclasses.replace(first, version="version: 9999 (0123abcd)", build=9999)
    window.process_panel.set_engine(other)
    _, est = doc.estimate()
    assert ComputeSource.MEASURED not in {d.compute_source for d in est.devices}
    assert window.budget.measured_totals(est) == {}
    assert not window.engine_check.status.text().startswith("Measured")
    # Back to the first: what it measured holds again (the record is on disk).
    window.process_panel.set_engine(first)
    _, est = doc.estimate()
    assert {d.compute_source for d in est.devices} == {ComputeSource.MEASURED}


def test_enter_in_the_prompt_field_before_launch_says_what_to_do(
    qtbot: Any, server_window: MainWindow
) -> None:
    """Type a prompt, press Enter, no server yet: Send is greyed out, but Enter in the field
    did nothing at all. It says to launch first; once ready, Enter sends and the reply comes."""
    window = server_window
    window.tabs.setCurrentWidget(window.server_tab)
    panel = window.process_panel
    panel.tabs.setCurrentWidget(panel.prompt_tab)
    panel.prompt_edit.setFocus()
    QTest.keyClicks(panel.prompt_edit, "Hello")
    QTest.keyClick(panel.prompt_edit, Qt.Key.Key_Return)
    assert "Launch" in panel.prompt_label.text(), panel.prompt_label.text()
    _launch_ready(qtbot, window)
    panel.tabs.setCurrentWidget(panel.prompt_tab)
    panel.prompt_edit.setFocus()
    QTest.keyClick(panel.prompt_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: panel.last_prompt is not None, timeout=20000)
    assert panel.reply_view.toPlainText()


def test_apply_best_does_not_take_back_a_setting_changed_after_the_run(
    qtbot: Any, tune_window: MainWindow, tmp_path: Path
) -> None:
    """The run measured -c 4096; the user then set -c 8192. "Apply best" would have put -c 4096
    back without a word (the best's settings are the run's): it waits until the settings are
    the measured ones again (Undo) or a new run."""
    window = tune_window
    doc = window.document
    dialog = _tuned(qtbot, window)
    doc.set_settings(doc.settings.with_(ctx=8192), "Context 8192")
    assert not dialog.apply_button.isEnabled()
    assert "changed since this run" in dialog.status.text(), dialog.status.text()
    _shot(dialog, "qa_tune_after_settings_change.png", tmp_path)
    dialog.apply_button.click()
    assert doc.settings.ctx == 8192
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.settings.ctx == 4096 and dialog.apply_button.isEnabled()


# --- a remote model, then its download -----------------------------------------------------------


def test_binding_the_download_keeps_the_undo_history(
    qtbot: Any, hub: HubServer, window: MainWindow, quant_files: dict[str, Path]
) -> None:
    """Plan the remote model, move a cell, open the download: the plan stays (the binding), and
    Ctrl+Z still takes back the move (it did nothing: the history was wiped) without bringing
    the remote model back."""
    first = next(p for p in sorted(quant_files) if p.startswith("IQ2_KT/"))
    url = f"hf://{REPO}/{first}"
    window.open_path(url)
    doc = window.document
    qtbot.waitUntil(lambda: doc.layout.source == url, timeout=60000)
    before = doc.plan
    doc.assign_cells([(3, doc.layout.columns[0])], "CUDA0")
    moved = doc.plan
    local = str(quant_files[first])
    window.open_path(local)
    qtbot.waitUntil(lambda: doc.layout.source == local, timeout=60000)
    assert doc.plan == moved
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    window.tensor_view.setFocus()
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL)
    assert doc.plan == before and doc.layout.source == local
    QTest.keyClick(window.tensor_view, Qt.Key.Key_Z, CTRL | Qt.KeyboardModifier.ShiftModifier)
    assert doc.plan == moved and doc.layout.source == local
    assert doc.is_dirty


# --- Tune, server and benchmarks share the devices -----------------------------------------------


def test_tune_and_the_server_exclude_each_other(
    qtbot: Any, tune_window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune loads the model with the benchmark tools, like Benchmarks does: while the server
    runs it must not start (and the other way round), saying why, as Benchmarks does."""
    window = tune_window
    panel = window.process_panel
    _launch_ready(qtbot, window)
    dialog = _open_tune(window)
    assert not dialog.start()
    assert "server is running" in dialog.status.text(), dialog.status.text()
    assert not dialog.running
    QTest.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.server.running, timeout=20000)
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.2")
    assert dialog.start() and dialog.running
    assert not panel.launch()
    assert "Tune" in panel.status_label.text(), panel.status_label.text()
    assert not panel.server.running
    assert not panel.bench.start() and not panel.bench.is_running
    with qtbot.waitSignal(dialog.tasks.running_changed, timeout=60000):
        dialog.stop()


def test_check_with_engine_waits_for_the_running_server(
    qtbot: Any, server_window: MainWindow
) -> None:
    """ik's --dry-run still allocates every buffer: beside a running server on the same GPU it
    would measure an out-of-memory that is not the plan's. The check says to stop the server."""
    window = server_window
    panel = window.process_panel
    _launch_ready(qtbot, window)
    check = window.engine_check
    QTest.mouseClick(check.button, Qt.MouseButton.LeftButton)
    assert not window.tasks.running and check.result is None
    assert "server is running" in check.status.text(), check.status.text()
    QTest.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.server.running, timeout=20000)
    _check(qtbot, window)


# --- Ctrl+Z with the focus in a field ------------------------------------------------------------


def test_ctrl_z_in_a_settings_field_after_enter_undoes_the_change(
    qtbot: Any, window: MainWindow
) -> None:
    """Type 16384 in Context, Enter (one undo step), Ctrl+Z still in the field: the field had
    nothing of its own to undo and swallowed the key, so nothing happened at all. With nothing
    typed to take back, Ctrl+Z is the window's Undo; while typing it stays the field's."""
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    window.tabs.setCurrentIndex(1)
    doc = window.document
    spin = window.settings_panel.ctx
    before = doc.settings.ctx
    spin.setFocus()
    qtbot.waitUntil(spin.hasFocus)
    QTest.keyClick(spin, Qt.Key.Key_A, CTRL)
    QTest.keyClicks(spin, "16384")
    QTest.keyClick(spin, Qt.Key.Key_Return)
    assert doc.settings.ctx == 16384 and doc.undo_stack.index() == 1
    QTest.keyClick(spin, Qt.Key.Key_Z, CTRL)
    assert doc.settings.ctx == before and doc.undo_stack.index() == 0
    assert spin.value() == before
    # Typing, then Ctrl+Z: the field takes back the typing; the document is untouched.
    QTest.keyClicks(spin, "9")
    QTest.keyClick(spin, Qt.Key.Key_Z, CTRL)
    assert spin.text() == str(before) and doc.undo_stack.index() == 0
