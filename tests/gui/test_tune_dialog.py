"""The Tune dialog with the stand-in benchmark tools as real subprocesses: a run finds the planted
optimum, the table and the plot follow it live, "Apply best" is one undo step, the run is kept
with the profile, Stop ends a run, and a missing engine is a sentence."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from pytestqt.qtbot import QtBot

from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.engine.tune import TuneOptions, TuneResult
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.schema import load_profile, save_profile
from moe_studio.core.units import GiB
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import prepare_plan
from moe_studio.gui.tune import TuneDialog
from moe_studio.gui.tune.tune_dialog import APPLY_TEXT
from tests.support.standin_tools import clean_env, install_standin

from .conftest import save_screenshot

PLANT = {"ub": 1024, "threads": 2, "cpu_layers": 1, "noise": 0.02, "seed": 11}
RUN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> EngineInfo:
    folder = tmp_path_factory.mktemp("tune-dialog-engine")
    return probe_engine(install_standin(folder, "ik"), environ=clean_env())


@pytest.fixture(autouse=True)
def _planted(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STANDIN_BENCH_PLANT", json.dumps(PLANT))


@pytest.fixture
def tiny_document(tiny_qwen3moe: Path) -> Document:
    layout = catalog.load(str(tiny_qwen3moe))
    rig = Rig(
        "test", HostInfo(16 * GiB, cores_physical=4), (Device("CUDA0", DeviceKind.CUDA, 1 * GiB),)
    )
    settings, placed = prepare_plan(layout, rig, Settings(ctx=4096, threads=4))
    assert isinstance(settings, Settings)
    return Document(layout, rig, settings, placed.plan)


@pytest.fixture
def make_dialog(qtbot: QtBot, tmp_path: Path) -> Iterator[object]:
    dialogs: list[TuneDialog] = []

    def make(document: Document, engine: EngineInfo | None) -> TuneDialog:
        dialog = TuneDialog(document, lambda: engine, calibration=tmp_path / "calibration.jsonl")
        qtbot.addWidget(dialog)
        dialogs.append(dialog)
        return dialog

    yield make
    for dialog in dialogs:
        dialog.shutdown()


def test_tune_run_apply_best_and_undo(
    qtbot: QtBot,
    qtmodeltester: object,
    make_dialog: object,
    tiny_document: Document,
    engine: EngineInfo,
    tmp_path: Path,
) -> None:
    doc = tiny_document
    dialog: TuneDialog = make_dialog(doc, engine)  # type: ignore[operator]
    dialog.max_trials.setValue(40)
    dialog.depths.setText("0, 1024")
    before_plan, before_settings = doc.plan, doc.settings
    with qtbot.waitSignal(dialog.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        dialog.start_button.click()
    result = blocker.args[0]
    assert isinstance(result, TuneResult) and result.best is not None
    best = result.best.knobs
    assert (best.ubatch, best.threads, best.expert_layers) == (1024, 2, (("CUDA0", 3),))
    # The table and the plot hold every trial; the current configuration is marked.
    assert dialog.model.rowCount() == len(result.trials)
    qtmodeltester.check(dialog.model)  # type: ignore[attr-defined]
    counts = dialog.plot.counts()
    assert counts["screening"] == sum(1 for t in result.trials if t.rung == 0)
    assert counts["finals"] == sum(1 for t in result.trials if t.rung == 1)
    assert counts["front"] >= 1 and counts["best"] == 1 and counts["current"] >= 1
    assert "Best: -ub 1024" in dialog.best_label.text()
    # Kept with the profile beside the benchmark runs.
    entry = doc.benchmarks[-1]
    assert entry["label"].startswith("tune — best: -ub 1024")
    assert entry["tune"]["trials"] and entry["points"]
    saved = tmp_path / "tiny.json"
    save_profile(saved, doc.to_profile("tiny"))
    assert load_profile(saved).benchmarks[-1]["tune"]["best"]["ubatch"] == 1024
    # Apply best: one undo step, undone exactly.
    assert dialog.apply_button.isEnabled()
    steps = doc.undo_stack.count()
    dialog.apply_button.click()
    assert doc.undo_stack.count() == steps + 1
    assert doc.undo_stack.undoText() == APPLY_TEXT
    assert doc.settings.ubatch == 1024 and doc.settings.threads == 2
    command = doc.result().command
    assert command is not None and "--n-cpu-moe" in command.argv
    doc.undo_stack.undo()
    assert doc.plan == before_plan and doc.settings == before_settings


def test_screenshot_during_a_run_and_stop(
    qtbot: QtBot,
    make_dialog: object,
    tiny_document: Document,
    engine: EngineInfo,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.05")
    dialog: TuneDialog = make_dialog(tiny_document, engine)  # type: ignore[operator]
    dialog.depths.setText("0, 1024")
    dialog.show()
    assert dialog.start()
    assert dialog.running and not dialog.start_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.model.rowCount() >= 14, timeout=RUN_TIMEOUT_MS)
    assert dialog.plot.counts()["screening"] >= 10
    save_screenshot(dialog, "tune.png", tmp_path)
    with qtbot.waitSignal(dialog.tasks.running_changed, timeout=RUN_TIMEOUT_MS):
        dialog.stop_button.click()
    assert not dialog.running and dialog.start_button.isEnabled()
    assert "Stopped" in dialog.status.text()
    assert not tiny_document.benchmarks  # a stopped run is not a result


def test_with_a_trial_cap_the_bar_counts_trials_of_the_planned_count(
    qtbot: QtBot,
    make_dialog: object,
    tiny_document: Document,
    engine: EngineInfo,
    tmp_path: Path,
) -> None:
    dialog: TuneDialog = make_dialog(tiny_document, engine)  # type: ignore[operator]
    dialog.max_trials.setValue(6)
    dialog.show()
    seen: list[tuple[int, int, str]] = []
    # Connected after the dialog's own slot: what the bar shows after each report.
    dialog.tasks.progressed.connect(
        lambda *_: seen.append(
            (dialog.progress.value(), dialog.progress.maximum(), dialog.progress.text())
        )
    )
    with qtbot.waitSignal(dialog.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert dialog.start()
    result = blocker.args[0]
    # 6 trials at most: 3 screened (60 %), then the baseline and the best screened in the finals.
    planned = TuneOptions(max_trials=6).planned_trials(100)
    assert planned == 5
    counted = [(v, m, t) for v, m, t in seen if m == planned]
    assert [v for v, _, _ in counted] == sorted(v for v, _, _ in counted)
    assert (1, planned, f"1 of {planned} trials") in counted
    n = len(result.trials)
    assert (dialog.progress.value(), dialog.progress.maximum()) == (n, n)
    assert dialog.progress.text() == f"{n} trials done"
    save_screenshot(dialog, "tune_trials_bar.png", tmp_path)


def test_with_a_time_budget_the_bar_follows_the_clock_and_counts_trials(
    qtbot: QtBot,
    make_dialog: object,
    tiny_document: Document,
    engine: EngineInfo,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.05")
    dialog: TuneDialog = make_dialog(tiny_document, engine)  # type: ignore[operator]
    now = [1000.0]
    dialog.clock = lambda: now[0]
    dialog.budget.setValue(10)
    dialog.depths.setText("0, 1024")
    dialog.show()
    assert dialog.start()
    timer = dialog.findChild(QTimer, "tune_progress_timer")
    assert timer is not None and timer.isActive()  # the bar moves between trials too
    qtbot.waitUntil(lambda: dialog.model.rowCount() >= 2, timeout=RUN_TIMEOUT_MS)
    now[0] += 150  # two and a half of ten minutes
    dialog.refresh_progress()  # what the timer does every second
    assert dialog.running
    assert dialog.progress.value() == 250
    assert re.fullmatch(r"\d+ trials done · 2:30 of 10:00", dialog.progress.text())
    save_screenshot(dialog, "tune_time_bar.png", tmp_path)
    with qtbot.waitSignal(dialog.tasks.running_changed, timeout=RUN_TIMEOUT_MS):
        dialog.stop_button.click()
    assert not timer.isActive()


def test_planned_trials() -> None:
    # Screening every candidate, then the baseline and the best third (at most 4) in the finals.
    assert TuneOptions().planned_trials(30) == 30 + 1 + 4
    assert TuneOptions().planned_trials(6) == 6 + 1 + 2
    assert TuneOptions().planned_trials(1) == 1  # the baseline alone: no finals
    # A cap: 60 % of it for the screening, the rest for the finals.
    assert TuneOptions(max_trials=10).planned_trials(30) == 6 + 1 + 2
    # 60 % of 3 is one trial: the baseline, and with one screened there are no finals.
    assert TuneOptions(max_trials=3).planned_trials(30) == 1


def test_without_an_engine_says_what_to_do(
    qtbot: QtBot, make_dialog: object, tiny_document: Document
) -> None:
    dialog: TuneDialog = make_dialog(tiny_document, None)  # type: ignore[operator]
    with qtbot.waitSignal(dialog.run_failed) as blocker:
        dialog.start_button.click()
    assert "Choose an engine" in blocker.args[0]
    assert not dialog.running


def test_bad_depths_are_a_sentence(
    qtbot: QtBot, make_dialog: object, tiny_document: Document, engine: EngineInfo
) -> None:
    dialog: TuneDialog = make_dialog(tiny_document, engine)  # type: ignore[operator]
    dialog.depths.setText("zero")
    with qtbot.waitSignal(dialog.run_failed) as blocker:
        assert not dialog.start()
    assert blocker.args[0].startswith("Depths: give whole numbers")
    assert not dialog.running


def test_tools_menu_opens_the_tune_dialog(window: object) -> None:
    from moe_studio.gui.main_window import MainWindow

    assert isinstance(window, MainWindow)
    tools = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Tools")
    tune_action = next(a for a in tools.actions() if a.text() == "&Tune…")
    tune_action.trigger()
    assert window.tune_dialog is not None and window.tune_dialog.isVisible()
    window.tune_dialog.close()
