"""The process panel with the scripted stand-in engine (a real subprocess): launch → progress →
ready → test prompt → stop; OOM → diagnosis → fix → relaunch; SIGTERM ignored → killed; no
orphan after the app is killed; log, predicted vs actual, calibration record, screenshot."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from PySide6.QtWidgets import QApplication

from moe_studio.core.engine.discovery import EngineStore, probe_engine
from moe_studio.core.engine.health import Phase
from moe_studio.core.gguf.model import open_model
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.gui.document import Document
from moe_studio.gui.process import server_process
from moe_studio.gui.process.process_panel import ProcessPanel
from tests.support.standin_tools import install_standin

from .conftest import rig_of, save_screenshot

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "0.3")
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000")
    return install_standin(tmp_path / "engine", "ik")


@pytest.fixture
def panel(qtbot: object, tiny_qwen3moe: Path, standin: Path, tmp_path: Path) -> ProcessPanel:
    layout = open_model(tiny_qwen3moe)
    rig = rig_of(24)
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 3), "CUDA0").after
    plan = assign(layout, plan, expert_cells(layout, 2, 3), "CPU").after
    doc = Document(layout, rig, Settings(ctx=512, port=free_port(), threads=1), plan)
    widget = ProcessPanel(
        doc,
        engine_store=EngineStore(tmp_path / "config"),
        calibration_path=tmp_path / "calibration.jsonl",
        auto_detect=False,
    )
    qtbot.addWidget(widget)  # type: ignore[attr-defined]
    widget.resize(1100, 700)
    widget.show()
    widget.set_engine(probe_engine(standin))
    yield widget  # type: ignore[misc]
    widget.shutdown()


def _wait_phase(qtbot: object, panel: ProcessPanel, *phases: Phase, timeout: int = 20000) -> None:
    qtbot.waitUntil(lambda: panel.server.status.phase in phases, timeout=timeout)  # type: ignore[attr-defined]


def test_launch_progress_ready_prompt_stop(
    qtbot: object, panel: ProcessPanel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    panel.server.status_changed.connect(
        lambda s: seen.append(s.progress) if s.progress is not None else None
    )
    gate = tmp_path / "load-gate"  # the stand-in holds its load here until the file exists
    monkeypatch.setenv("STANDIN_LOAD_GATE", str(gate))
    assert panel.launch()
    # The load shows as progress while it is held (waits for the event, not for the clock).
    qtbot.waitUntil(lambda: any(0 < p < 1 for p in seen), timeout=20000)  # type: ignore[attr-defined]
    assert panel.server.status.phase is not Phase.READY
    gate.touch()
    _wait_phase(qtbot, panel, Phase.READY)
    assert seen == sorted(seen)  # never backwards
    assert panel.prompt_button.isEnabled()
    panel.test_prompt()
    qtbot.waitUntil(lambda: panel.last_prompt is not None, timeout=10000)  # type: ignore[attr-defined]
    assert panel.last_prompt.predicted_tokens_per_second > 0  # type: ignore[union-attr]
    assert "tokens/s" in panel.prompt_label.text()
    rows = {row[0]: row for row in panel.compare_rows()}
    assert "CUDA0" in rows and rows["CUDA0"][2] != "—"  # the engine's weights beside ours
    panel.tabs.setCurrentIndex(0)
    QApplication.processEvents()
    save_screenshot(panel, "05-process-panel-ready.png", tmp_path)
    panel.tabs.setCurrentIndex(1)
    QApplication.processEvents()
    save_screenshot(panel, "06-process-panel-predicted-vs-actual.png", tmp_path)
    panel.live.sample_now()
    panel.tabs.setCurrentIndex(2)
    QApplication.processEvents()
    save_screenshot(panel, "07-process-panel-live.png", tmp_path)
    assert panel.live.series()["rss"]  # the server's memory is being followed
    panel.stop()
    _wait_phase(qtbot, panel, Phase.STOPPED)
    assert not panel.server.running
    # The run is kept for calibration.
    record = json.loads((tmp_path / "calibration.jsonl").read_text().splitlines()[-1])
    assert any(d["name"] == "CUDA0" and d["actual"] for d in record["devices"])
    # The log replays into a filter view and saves.
    panel.filter_edit.setText("buffer size")
    assert all("buffer size" in line for line in panel.log_view.toPlainText().splitlines())
    assert panel.log_view.toPlainText()
    panel.save_log(str(tmp_path / "saved.log"))
    assert "HTTP server listening" in (tmp_path / "saved.log").read_text()


def test_oom_diagnosis_fix_and_relaunch(
    qtbot: object, panel: ProcessPanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_CUDA_MIB", "2")
    monkeypatch.setenv("STANDIN_ENFORCE_FREE", "1")
    doc = panel.document
    doc.assign_cells(expert_cells(doc.layout, 0, 3), "CUDA0")  # far too much for 2 MiB
    before = doc.plan
    assert panel.launch()
    _wait_phase(qtbot, panel, Phase.FAILED)
    qtbot.waitUntil(lambda: panel.diagnosis is not None, timeout=10000)  # type: ignore[attr-defined]
    diagnosis = panel.diagnosis
    assert diagnosis is not None and diagnosis.device == "CUDA0"
    assert "CUDA0" in diagnosis.sentence and "memory" in diagnosis.sentence
    assert panel.fix_buttons and panel.diagnosis_box.isVisible()
    move = next(i for i, f in enumerate(diagnosis.fixes) if f.edit is not None)
    steps = doc.undo_stack.count()
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000")  # the fixed plan fits the "GPU"
    assert panel.apply_fix(move)
    assert doc.undo_stack.count() == steps + 1 and doc.plan != before
    _wait_phase(qtbot, panel, Phase.READY)
    panel.stop()
    _wait_phase(qtbot, panel, Phase.STOPPED)
    doc.undo_stack.undo()
    assert doc.plan == before  # the fix was one undoable step


def test_a_server_that_ignores_sigterm_is_killed(
    qtbot: object, panel: ProcessPanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_IGNORE_SIGTERM", "1")
    monkeypatch.setattr(server_process, "STOP_TIMEOUT_MS", 400)
    assert panel.launch()
    _wait_phase(qtbot, panel, Phase.READY)
    finished: list[object] = []
    panel.server.finished.connect(finished.append)
    panel.stop()
    qtbot.waitUntil(lambda: bool(finished), timeout=10000)  # type: ignore[attr-defined]
    info = finished[0]
    assert info.killed and info.normal  # type: ignore[attr-defined]
    assert panel.server.status.phase is Phase.STOPPED


def test_port_taken_is_refused_naming_the_holder(panel: ProcessPanel) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", panel.document.settings.port))
        holder.listen()
        assert not panel.launch()
    assert "in use" in panel.status_label.text() or "taken" in panel.status_label.text()
    assert str(os.getpid()) in panel.status_label.text() or "python" in panel.status_label.text()
    panel.last_error.close()


def test_no_engine_means_no_launch(panel: ProcessPanel) -> None:
    panel.engine_info = None
    panel._show_engine()
    assert not panel.launch_button.isEnabled()
    assert "choose" in panel.launch_button.toolTip().lower()


CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.path.insert(0, {root!r})
    from PySide6.QtWidgets import QApplication
    from moe_studio.core.engine.launch import LaunchSpec
    from moe_studio.gui.process.server_process import ServerProcess
    app = QApplication([])
    server = ServerProcess()
    server.started.connect(lambda pid: (print(pid, flush=True)))
    argv = ({engine!r}, "-m", {model!r}, "--port", "{port}", "-c", "256")
    server.start(LaunchSpec(argv=argv, port={port}, dialect="ik"))
    app.exec()
    """
)


def test_no_orphan_server_after_the_app_is_killed(standin: Path, tiny_qwen3moe: Path) -> None:
    port = free_port()
    code = CHILD.format(root=str(ROOT), engine=str(standin), model=str(tiny_qwen3moe), port=port)
    env = {**os.environ, "STANDIN_CUDA_MIB": ""}
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None
        server_pid = int(child.stdout.readline())
        assert psutil.pid_exists(server_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        deadline = time.monotonic() + 60  # waits for the exit; the deadline only catches a hang
        while time.monotonic() < deadline:
            try:
                if psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail("the stand-in server outlived the killed app")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
