"""The benchmark panel with the stand-in sweep-bench / llama-bench as real subprocesses: the
command shown, a run plotted from the parsed output, two runs overlaid and one hidden, cancel
(SIGTERM, and SIGKILL when ignored), a failure in words, results kept with the saved profile."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from moe_studio.core.engine.bench_results import parse_llama_bench, parse_sweep_bench
from moe_studio.core.engine.bench_run import BenchTool, curve
from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.engine.preflight import Preflight
from moe_studio.core.plan.placement import expert_cells
from moe_studio.core.profiles.schema import load_profile, save_profile
from moe_studio.gui.bench import BenchPanel, bench_process
from moe_studio.gui.bench.runs import experts_summary
from moe_studio.gui.document import Document
from tests.support.standin_tools import clean_env, install_standin

from .conftest import save_screenshot

RUN_TIMEOUT_MS = 15_000
MakePanel = Callable[..., BenchPanel]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineInfo]:
    base = tmp_path_factory.mktemp("bench-panel-engines")
    return {
        d: probe_engine(install_standin(base / d, d), environ=clean_env())
        for d in ("ik", "mainline")
    }


@pytest.fixture(autouse=True)
def _no_standin_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in reads its knobs from the environment the panel passes on (ours)."""
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def make_panel(qtbot: QtBot) -> Iterator[MakePanel]:
    panels: list[BenchPanel] = []

    def make(
        document: Document, engine: EngineInfo | None, *, ctx: int = 1024, ub: int = 256
    ) -> BenchPanel:
        panel = BenchPanel(document, lambda: engine)
        qtbot.addWidget(panel)
        panel.ctx.setValue(ctx)
        panel.ubatch.setValue(ub)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:  # no tool outlives its test
        panel.shutdown()
        assert not panel.is_running


def run_once(qtbot: QtBot, panel: BenchPanel) -> None:
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert not panel.is_running


def test_command_shown_follows_plan_and_options(
    qtbot: QtBot, make_panel: MakePanel, demo_document: Document, engines: dict[str, EngineInfo]
) -> None:
    panel = make_panel(demo_document, engines["ik"])
    spec = panel.spec
    assert spec is not None and spec.tool is BenchTool.SWEEP
    assert panel.command_text() == spec.shell()
    argv = shlex.split(panel.command_text())
    assert argv[argv.index("-c") + 1] == "1024" and argv[argv.index("-ub") + 1] == "256"
    assert engines["ik"].helper("sweep-bench") in argv
    assert panel.command.isReadOnly()
    assert panel.depths.text() == "N_KV 0, 256, 512, 768 (4 steps)"
    # -ub back to "as planned": the plan's -ub follows a settings change.
    panel.ubatch.setValue(0)
    panel.show()
    demo_document.set_settings(demo_document.settings.with_(ubatch=512, batch=512))
    qtbot.waitUntil(lambda: "-ub 512" in panel.command_text())
    # A plan change rebuilds the command too: the experts of layers 3-4 to CUDA0.
    before = panel.command_text()
    cells = [c for c in expert_cells(demo_document.layout) if c[0] in (3, 4)]
    demo_document.assign_cells(cells, "CUDA0")
    qtbot.waitUntil(lambda: panel.command_text() != before)
    assert panel.spec is not None and panel.command_text() == panel.spec.shell()
    # llama-bench on ik: its own options, -r.
    panel.tool.setCurrentIndex(panel.tool.findData(BenchTool.BENCH.value))
    assert panel.spec is not None and panel.spec.tool is BenchTool.BENCH
    assert "-r 2" in panel.command_text() and panel.repetitions.isEnabled()


def test_no_engine_disables_run(
    make_panel: MakePanel, demo_document: Document, engines: dict[str, EngineInfo]
) -> None:
    panel = make_panel(demo_document, None)
    assert not panel.run_button.isEnabled()
    assert "Choose an engine" in panel.run_button.toolTip()
    assert panel.spec is None and not panel.start()
    # An engine without the tool: the reason, not a traceback.
    bare = replace(engines["ik"], helpers={})
    panel2 = make_panel(demo_document, bare)
    assert not panel2.run_button.isEnabled()
    assert "llama-sweep-bench was not found beside" in panel2.run_button.toolTip()
    assert "llama-sweep-bench was not found beside" in panel2.command_text()


def test_run_plots_the_parsed_output(
    qtbot: QtBot, make_panel: MakePanel, demo_document: Document, engines: dict[str, EngineInfo]
) -> None:
    panel = make_panel(demo_document, engines["ik"])
    assert not demo_document.is_dirty
    run_once(qtbot, panel)
    outcome = panel.last_outcome
    assert outcome is not None and not outcome.error, outcome.log
    expected = curve(parse_sweep_bench(outcome.log))
    assert [p.n_kv for p in expected] == [0, 256, 512, 768]
    pp, tg = panel.plot.curve_data(0)
    assert pp == [(p.n_kv, pytest.approx(p.s_pp)) for p in expected]
    assert tg == [(p.n_kv, pytest.approx(p.s_tg)) for p in expected]
    assert panel.plot.live_data() == []
    # Kept with the document (unsaved), with its summary.
    (entry,) = demo_document.benchmarks
    assert demo_document.is_dirty
    assert entry["tool"] == "sweep-bench" and entry["argv"] == list(outcome.spec.full_argv)
    assert entry["tg_tokens_per_second"] == pytest.approx(expected[0].s_tg, abs=1e-3)
    assert entry["pp_tokens_per_second"] == pytest.approx(expected[0].s_pp, abs=1e-3)
    assert entry["n_kv"] == 0 and entry["ubatch"] == 256 and entry["complete"] is True
    assert entry["label"].startswith("run 1 — ") and "experts" in entry["label"]
    assert entry["label"].endswith(", -ub 256") and entry["timestamp"].endswith("Z")
    assert panel.runs.topLevelItemCount() == 1
    assert panel.runs.topLevelItem(0).text(0) == entry["label"]
    assert "S_TG 200.0 t/s" in panel.status.text()
    assert "run 1" in panel.plot.legend_labels()[0]
    assert panel.log.toPlainText().strip() == outcome.log.strip()  # the Output tab


def test_mainline_llama_bench(
    qtbot: QtBot, make_panel: MakePanel, document: Document, engines: dict[str, EngineInfo]
) -> None:
    document.set_settings(document.settings.with_(dialect="mainline"))
    panel = make_panel(document, engines["mainline"])
    assert [panel.tool.itemData(i) for i in range(panel.tool.count())] == ["bench"]
    run_once(qtbot, panel)
    outcome = panel.last_outcome
    assert outcome is not None and not outcome.error, outcome.log
    stdout_rows = parse_llama_bench(
        [line for line in outcome.log.splitlines() if line.startswith("{")]
    )
    expected = curve(stdout_rows)
    assert [p.n_kv for p in expected] == [0, 256, 512, 768]
    pp, tg = panel.plot.curve_data(0)
    assert [x for x, _ in pp] == [0, 256, 512, 768]
    assert tg == [(p.n_kv, pytest.approx(p.s_tg)) for p in expected]
    assert document.benchmarks[0]["tool"] == "bench"


def test_two_runs_overlay_and_hide_one(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    panel = make_panel(demo_document, engines["ik"], ctx=4096, ub=512)
    panel.resize(1100, 760)
    panel.show()
    run_once(qtbot, panel)
    # Another placement: the experts of layers 3-12 on CUDA0 (faster, says the stand-in).
    layers = range(3, 13)
    cells = [c for c in expert_cells(demo_document.layout) if c[0] in layers]
    demo_document.assign_cells(cells, "CUDA0")
    assert experts_summary(demo_document.layout, demo_document.plan).startswith(
        "experts of 10 layers on CUDA0"
    )
    monkeypatch.setenv("STANDIN_BENCH_SPEED", "1.35")
    panel.ubatch.setValue(1024)
    run_once(qtbot, panel)
    first, second = demo_document.benchmarks
    assert first["label"] != second["label"]
    assert second["label"] == "run 2 — experts of 10 layers on CUDA0, -ub 1024"
    assert panel.plot.run_count == 2 and panel.visible_runs() == [0, 1]
    assert panel.plot.is_run_visible(0) and panel.plot.is_run_visible(1)
    assert len(panel.plot.curve_data(0)[1]) == 8 and len(panel.plot.curve_data(1)[1]) == 4
    assert panel.plot.curve_data(1)[1][0][1] == pytest.approx(1.35 * 200)
    assert panel.plot.legend_labels() == [first["label"], second["label"]]
    save_screenshot(panel, "bench-two-runs.png", tmp_path)
    # Hide run 1 from the list: both of its curves go, run 2 stays.
    panel.runs.topLevelItem(0).setCheckState(0, Qt.CheckState.Unchecked)
    assert panel.visible_runs() == [1]
    assert not panel.plot.is_run_visible(0) and panel.plot.is_run_visible(1)
    # The legend asks for the toggle; the list follows.
    panel.plot.toggle_requested.emit(0)
    assert panel.runs.topLevelItem(0).checkState(0) == Qt.CheckState.Checked
    assert panel.plot.is_run_visible(0)
    # Ticks survive a save (the same runs come back from the saved profile).
    panel.set_run_visible(1, False)
    profile = save_profile(tmp_path / "p.json", demo_document.to_profile("p"))
    demo_document.set_profile(profile, str(tmp_path / "p.json"))
    assert panel.visible_runs() == [0]


def test_cancel_stops_a_long_run(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.3")
    panel = make_panel(demo_document, engines["ik"], ctx=65536, ub=256)  # 256 steps: 77 s
    panel.show()
    assert panel.depths.text().endswith("(256 steps)")
    assert panel.start()
    assert panel.is_running and panel.cancel_button.isEnabled()
    assert not panel.run_button.isEnabled() and not panel.ctx.isEnabled()
    # The curve grows while it runs.
    qtbot.waitUntil(lambda: len(panel.plot.live_data()) >= 2, timeout=RUN_TIMEOUT_MS)
    assert "depths measured" in panel.status.text() and panel.progress.isVisible()
    with qtbot.waitSignal(panel.run_finished, timeout=5000):
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    outcome = panel.last_outcome
    assert outcome is not None and outcome.cancelled and outcome.exit.requested
    assert not outcome.exit.killed and not panel.is_running
    assert panel.status.text().startswith("The benchmark was cancelled; the ")
    (entry,) = demo_document.benchmarks  # the depths measured so far are kept
    assert entry["complete"] is False and entry["label"].endswith("(cancelled)")
    assert 2 <= len(entry["points"]) < 256
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert panel.plot.live_data() == []


def test_cancel_kills_a_tool_that_ignores_sigterm(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.3")
    monkeypatch.setenv("STANDIN_BENCH_IGNORE_TERM", "1")
    panel = make_panel(demo_document, engines["ik"], ctx=65536, ub=256)
    panel.process.kill_timeout_ms = 300
    assert panel.start()
    qtbot.waitUntil(lambda: "Loaded" in panel.log.toPlainText() or panel.log.blockCount() > 2)
    with qtbot.waitSignal(panel.run_finished, timeout=5000):
        panel.cancel()
    outcome = panel.last_outcome
    assert outcome is not None and outcome.cancelled and outcome.exit.killed
    assert "did not stop after SIGTERM and was killed" in outcome.exit.message


def test_failed_run_shows_its_last_lines(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_FAIL", "1")
    panel = make_panel(demo_document, engines["ik"])
    run_once(qtbot, panel)
    text = panel.status.text()
    assert text.startswith("llama-sweep-bench exited with status 1. Last lines: ")
    assert "failed to load model" in text and "Traceback" not in text
    assert demo_document.benchmarks == () and not demo_document.is_dirty
    assert panel.runs.topLevelItemCount() == 0 and panel.run_button.isEnabled()


def test_a_tool_that_cannot_start(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    tmp_path: Path,
) -> None:
    # Not executable: refused before starting, in words.
    fake = tmp_path / "llama-sweep-bench"
    fake.write_text("not a program")
    broken = replace(engines["ik"], helpers={"sweep-bench": str(fake)})
    panel = make_panel(demo_document, broken)
    assert panel.run_button.isEnabled()  # the command can be built and shown
    assert not panel.start()
    assert "is not executable" in panel.status.text() and not panel.is_running


def test_pre_launch_warnings_are_shown_in_the_output(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NVML is absent here: the check's answer for a GPU that a llama-server already uses.
    warning = "CUDA0 is already used by llama-server (pid 4242); stop that process first."
    monkeypatch.setattr(bench_process, "preflight", lambda argv: Preflight((), (warning,)))
    panel = make_panel(demo_document, engines["ik"])
    run_once(qtbot, panel)
    assert panel.log.toPlainText().startswith(f"# warning: {warning}")


def test_results_are_saved_with_the_profile_and_come_back(
    qtbot: QtBot,
    make_panel: MakePanel,
    demo_document: Document,
    engines: dict[str, EngineInfo],
    tmp_path: Path,
) -> None:
    panel = make_panel(demo_document, engines["ik"])
    run_once(qtbot, panel)
    path = tmp_path / "with-bench.json"
    saved = save_profile(path, demo_document.to_profile("with bench"))
    demo_document.set_profile(saved, str(path))
    demo_document.mark_clean()
    loaded = load_profile(path)
    (entry,) = loaded.benchmarks
    assert entry == demo_document.benchmarks[0]
    assert loaded.tokens_per_second == pytest.approx(200.0)
    assert [row[0] for row in entry["points"]] == [0, 256, 512, 768]
    # A second run on the opened profile is added to it; saving keeps both.
    run_once(qtbot, panel)
    assert demo_document.is_dirty
    save_profile(path, demo_document.to_profile())
    assert len(load_profile(path).benchmarks) == 2
    # Another document opening the file: the runs appear in its panel.
    other = Document(demo_document.layout, demo_document.rig, demo_document.settings)
    viewer = make_panel(other, engines["ik"])
    assert viewer.runs.topLevelItemCount() == 0
    other.set_profile(load_profile(path), str(path))
    assert viewer.runs.topLevelItemCount() == 2 and viewer.plot.run_count == 2
    assert viewer.runs.topLevelItem(1).text(0).startswith("run 2 — ")
    assert viewer.plot.curve_data(1)[1][0] == (0.0, pytest.approx(200.0))
    # A new profile starts without runs.
    other.set_profile(None, None)
    assert viewer.runs.topLevelItemCount() == 0 and other.benchmarks == ()


def test_runs_of_other_tools_are_listed(make_panel: MakePanel, demo_document: Document) -> None:
    """Entries kept as given (hand-written, older) are listed; what cannot be read is skipped."""
    demo_document.add_benchmark({"tokens_per_second": 12.5, "note": "by hand"})
    demo_document.add_benchmark({"label": "odd", "points": [[0, None, 9.0], ["x", 1, 2], 5]})
    panel = make_panel(demo_document, None)
    assert panel.runs.topLevelItemCount() == 2
    assert panel.runs.topLevelItem(0).text(0) == "run 1"
    assert panel.plot.curve_data(1) == ([], [(0.0, 9.0)])
