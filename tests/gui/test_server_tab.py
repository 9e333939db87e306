"""Issue 11 items 5, 6 and 9 in the real window with the stand-in engine (a real subprocess): the
Server tab's prompt with a streamed reply, a quiet health poll, "Open web UI", restart to apply,
the plots without nested scroll bars; pre-launch checks (RPC, server vs benchmark); and mainline
refusing ik-only quant types."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QScrollArea, QWidget

from moe_studio.core.engine.discovery import probe_engine
from moe_studio.core.engine.health import Phase
from moe_studio.core.gguf.model import open_model
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from moe_studio.gui.document import Document
from moe_studio.gui.main_window import MainWindow
from moe_studio.gui.process import live_plot, process_panel
from tests.support.standin_tools import install_standin

from .conftest import rig_of, save_screenshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "0.2")
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000")
    monkeypatch.setenv("STANDIN_GEN_TPS", "40")  # the reply takes a moment: it streams
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return install_standin(tmp_path / "engine", "ik")


def _tiny_document(model: Path, rig: Rig | None = None) -> Document:
    layout = open_model(model)
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 3), "CUDA0").after
    plan = assign(layout, plan, expert_cells(layout, 2, 3), "CPU").after
    settings = Settings(ctx=512, port=free_port(), threads=1)
    return Document(layout, rig or rig_of(24), settings, plan)


@pytest.fixture
def server_window(
    qtbot: object, tiny_qwen3moe: Path, standin: Path, qsettings: QSettings, tmp_path: Path
) -> Iterator[MainWindow]:
    window = MainWindow(
        _tiny_document(tiny_qwen3moe),
        qsettings,
        autosave_folder=tmp_path / "autosave",
        auto_detect_engine=False,
    )
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.resize(1280, 800)
    window.show()
    window.process_panel.set_engine(probe_engine(standin))
    window.tabs.setCurrentWidget(window.server_tab)
    yield window
    window.process_panel.shutdown()


def _wait_phase(qtbot: object, window: MainWindow, *phases: Phase) -> None:
    server = window.process_panel.server
    qtbot.waitUntil(lambda: server.status.phase in phases, timeout=20000)  # type: ignore[attr-defined]


def _launch_ready(qtbot: object, window: MainWindow) -> None:
    panel = window.process_panel
    QTest.mouseClick(panel.launch_button, Qt.MouseButton.LeftButton)
    _wait_phase(qtbot, window, Phase.READY)


# --- item 9: the Server tab ----------------------------------------------------------------------


def test_prompt_reply_streams_with_tokens_per_second(
    qtbot: object, server_window: MainWindow, tmp_path: Path
) -> None:
    window = server_window
    panel = window.process_panel
    _launch_ready(qtbot, window)
    pieces: list[str] = []
    panel._reply_relay.text_received.connect(pieces.append)
    panel.tabs.setCurrentWidget(panel.prompt_tab)
    QTest.keyClicks(panel.prompt_edit, "Tell me about foxes")
    QTest.keyClick(panel.prompt_edit, Qt.Key.Key_Return)
    # The reply arrives piece by piece, before the request has ended.
    qtbot.waitUntil(lambda: len(pieces) >= 3, timeout=10000)  # type: ignore[attr-defined]
    assert panel.last_prompt is None  # still streaming
    assert panel.reply_view.toPlainText().strip()
    QApplication.processEvents()
    save_screenshot(window, "server_tab.png", tmp_path)  # to $MOE_STUDIO_SCREENSHOTS when set
    qtbot.waitUntil(lambda: panel.last_prompt is not None, timeout=20000)  # type: ignore[attr-defined]
    result = panel.last_prompt
    assert result is not None
    assert panel.reply_view.toPlainText() == result.content == "".join(pieces)
    assert result.predicted_tokens_per_second == pytest.approx(40, rel=0.01)  # server's timings
    assert "tokens/s" in panel.prompt_label.text()
    assert panel.live.series()["generation"] == [result.predicted_tokens_per_second]
    QApplication.processEvents()
    save_screenshot(window, "server_tab_done.png", tmp_path)


def test_prompt_sends_the_api_key_a_server_requires(
    qtbot: object, server_window: MainWindow
) -> None:
    """With --api-key set the stand-in answers 401 to a prompt without it, like the engines."""
    window = server_window
    panel = window.process_panel
    settings = replace(window.document.settings, api_key="k3y-for-the-test")
    window.document.set_settings(settings)
    _launch_ready(qtbot, window)
    panel.tabs.setCurrentWidget(panel.prompt_tab)
    QTest.keyClicks(panel.prompt_edit, "Hello")
    QTest.keyClick(panel.prompt_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not panel._prompting, timeout=20000)  # type: ignore[attr-defined]
    assert panel.last_prompt is not None, panel.prompt_label.text()
    assert panel.reply_view.toPlainText() == panel.last_prompt.content != ""


def test_health_poll_stops_once_ready_and_the_log_says_the_state(
    qtbot: object, server_window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = server_window.process_panel
    _launch_ready(qtbot, server_window)
    qtbot.waitUntil(lambda: not panel.server.polling, timeout=5000)  # type: ignore[attr-defined]
    health_lines = sum('path="/health"' in ln for ln in panel.server.history.lines())
    # A prompt round trip later, no new poll has reached the server's log.
    assert panel.test_prompt()
    qtbot.waitUntil(lambda: panel.last_prompt is not None, timeout=20000)  # type: ignore[attr-defined]
    lines = panel.server.history.lines()
    assert sum('path="/health"' in ln for ln in lines) == health_lines
    assert not panel.server.polling
    assert "# MoE Studio: ready — listening" in lines or any(
        ln.startswith("# MoE Studio: ready") for ln in lines
    )


def test_open_web_ui_opens_the_servers_page(
    qtbot: object, server_window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = server_window.process_panel
    opened: list[str] = []
    monkeypatch.setattr(
        QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url.toString()) or True)
    )
    assert not panel.web_button.isEnabled()  # nothing to open before the server is ready
    _launch_ready(qtbot, server_window)
    QTest.mouseClick(panel.web_button, Qt.MouseButton.LeftButton)
    port = server_window.document.settings.port
    assert opened == [QUrl(f"http://127.0.0.1:{port}/").toString()]


def test_a_setting_changed_while_running_offers_restart_to_apply(
    qtbot: object, server_window: MainWindow
) -> None:
    window = server_window
    panel = window.process_panel
    doc = window.document
    _launch_ready(qtbot, window)
    first_pid = panel.server.pid
    assert not panel.restart_banner.isVisible()
    doc.set_settings(doc.settings.with_(ctx=1024), "Context 1024")
    qtbot.waitUntil(panel.restart_banner.isVisible, timeout=5000)  # type: ignore[attr-defined]
    assert "restart the server to apply" in panel.restart_label.text()
    QTest.mouseClick(panel.restart_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: (
            panel.server.pid not in (None, first_pid) and panel.server.status.phase is Phase.READY
        ),
        timeout=20000,
    )
    spec = panel.server.spec
    assert spec is not None and spec.argv[spec.argv.index("-c") + 1] == "1024"
    assert not panel.restart_banner.isVisible()
    # Undo brings the running command back out of date.
    doc.undo_stack.undo()
    qtbot.waitUntil(panel.restart_banner.isVisible, timeout=5000)  # type: ignore[attr-defined]


def test_plots_fit_without_nested_scroll_bars_and_have_their_own_axes(
    qtbot: object, server_window: MainWindow, tmp_path: Path
) -> None:
    window = server_window
    panel = window.process_panel

    # Server and Benchmarks each sit in one scroll area (for windows smaller than their minimum)
    # that shows no scroll bar at 1280×800: no nested ones, and the window does not grow.
    def scroll_area(start: QWidget) -> QScrollArea:
        found, widget = [], start.parentWidget()
        while widget is not None:
            if isinstance(widget, QScrollArea):
                found.append(widget)
            widget = widget.parentWidget()
        assert len(found) == 1, found
        return found[0]

    server_area, bench_area = scroll_area(panel.live), scroll_area(panel.bench.plot)
    assert (server_area, bench_area) == (window.server_tab, window.bench_tab)
    assert window.minimumSizeHint().height() <= 800
    assert (window.width(), window.height()) == (1280, 800)
    _launch_ready(qtbot, window)
    panel.tabs.setCurrentWidget(panel.live)
    QApplication.processEvents()
    assert not server_area.verticalScrollBar().isVisible()
    assert not server_area.horizontalScrollBar().isVisible()
    live = panel.live
    assert live.isVisible() and live.height() >= 200
    assert live.rss is not live.cpu  # GiB and cores on separate axes
    assert live.rss.getAxis("left").labelText == "GiB"
    assert live.cpu.getAxis("left").labelText == "cores"
    live.sample_now()
    low, high = live.x_range()
    assert low == 0 and high >= live_plot.MIN_SPAN_S  # seconds since launch, a readable span
    save_screenshot(window, "server_tab_live.png", tmp_path)
    window.tabs.setCurrentWidget(bench_area)
    QApplication.processEvents()
    assert panel.bench.plot.isVisible() and panel.bench.plot.height() >= 150
    assert not bench_area.verticalScrollBar().isVisible()
    assert not bench_area.horizontalScrollBar().isVisible()
    save_screenshot(window, "benchmarks_tab.png", tmp_path)


# --- item 5: pre-launch checks -------------------------------------------------------------------


def test_benchmark_and_server_exclude_each_other_and_say_why(
    qtbot: object, server_window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = server_window
    panel = window.process_panel
    _launch_ready(qtbot, window)
    bench = panel.bench
    assert not bench.run_button.isEnabled()
    assert "server is running" in bench.run_button.toolTip()
    assert not bench.start()
    assert "one client at a time" in bench.status.text()
    panel.stop()
    _wait_phase(qtbot, window, Phase.STOPPED)
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.3")
    assert bench.run_button.isEnabled()
    QTest.mouseClick(bench.run_button, Qt.MouseButton.LeftButton)
    assert bench.is_running
    assert not panel.launch_button.isEnabled()
    assert "benchmark is running" in panel.launch_button.toolTip()
    assert not panel.launch()
    assert "A benchmark is running" in panel.status_label.text()
    bench.cancel()
    qtbot.waitUntil(lambda: not bench.is_running, timeout=10000)  # type: ignore[attr-defined]
    assert panel.launch_button.isEnabled()


def test_a_stopped_rpc_server_is_named_before_launch(
    qtbot: object, tiny_qwen3moe: Path, standin: Path, qsettings: QSettings, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    endpoint = f"127.0.0.1:{port}"
    rpc = Device(f"RPC0[{endpoint}]", DeviceKind.RPC, 8 * GiB, endpoint=endpoint)
    rig = Rig("rpc rig", HostInfo(64 * GiB, cores_physical=4), (rpc,), source="test")
    layout = open_model(tiny_qwen3moe)
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 1), rpc.name).after
    doc = Document(layout, rig, Settings(ctx=512, port=free_port(), threads=1), plan)
    window = MainWindow(doc, qsettings, autosave_folder=tmp_path / "a", auto_detect_engine=False)
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.show()
    panel = window.process_panel
    panel.set_engine(probe_engine(standin))
    QTest.mouseClick(panel.launch_button, Qt.MouseButton.LeftButton)
    assert not panel.server.running
    text = panel.status_label.text()
    assert f"RPC device {endpoint} does not answer — start rpc-server there or remove" in text
    panel.shutdown()


# --- item 6: mainline and ik-only quant types ----------------------------------------------------


def test_mainline_with_ik_only_types_warns_and_refuses_to_launch(
    qtbot: object, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_panel, "show_error", lambda parent, title, exc: None)
    assert "cannot load" not in window.status_label.text()
    combo = window.command_view.dialect
    window.tabs.setCurrentWidget(window.command_view)
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key.Key_Down)  # the user picks "llama.cpp (mainline)"
    assert window.document.settings.dialect == "mainline"
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: "cannot load this model" in window.command_view.advice.text()
    )
    advice = window.command_view.advice.text()
    assert "IQ2_KS ×" in advice and "tensors use ik_llama.cpp-only quant types" in advice
    assert "llama.cpp (mainline) cannot load this model" in window.status_label.text()
    engine = install_standin(tmp_path / "mainline", "mainline", bench=False)
    panel = window.process_panel
    panel.set_engine(probe_engine(engine))
    QTest.mouseClick(panel.launch_button, Qt.MouseButton.LeftButton)
    assert not panel.server.running
    assert "Not launched: llama.cpp (mainline) cannot load this model" in panel.status_label.text()
    save_screenshot(window, "mainline-ik-types.png", tmp_path)
