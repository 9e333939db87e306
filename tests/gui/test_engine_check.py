"""The budget panel's "Check with engine" with the stand-in engine: the dry run runs in the task
runner, the bars get the engine's marks, the compute buffer becomes measured (no error cap), and a
plan edit clears the marks; a mainline engine says it needs ik."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from moe_studio.core.engine.calibration import read_records
from moe_studio.core.engine.discovery import probe_engine
from moe_studio.core.gguf.model import open_model
from moe_studio.core.plan.memory import ComputeSource
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.settings import Settings
from moe_studio.gui.budget.budget_plot import BudgetPlot
from moe_studio.gui.budget.engine_check import EngineCheck
from moe_studio.gui.document import Document
from moe_studio.gui.tasks import TaskRunner
from tests.support.standin_tools import install_standin

from .conftest import rig_of, save_screenshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def parts(
    qtbot: object, tiny_qwen3moe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Document, BudgetPlot, EngineCheck, TaskRunner]:
    for key in [k for k in os.environ if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STANDIN_LOAD_SECONDS", "0.05")
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000")
    layout = open_model(tiny_qwen3moe)
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 3), "CUDA0").after
    plan = assign(layout, plan, expert_cells(layout, 2, 3), "CPU").after
    doc = Document(layout, rig_of(24), Settings(ctx=512, port=free_port(), threads=1), plan)
    budget = BudgetPlot(doc)
    tasks = TaskRunner()
    engines = {d: probe_engine(install_standin(tmp_path / d, d, bench=False)) for d in ("ik",)}
    chosen = {"engine": engines["ik"]}
    check = EngineCheck(
        doc, budget, tasks, lambda: chosen["engine"], calibration_path=tmp_path / "cal.jsonl"
    )
    for w in (budget, check):
        qtbot.addWidget(w)  # type: ignore[attr-defined]
    budget.resize(900, 420)
    budget.show()
    yield doc, budget, check, tasks  # type: ignore[misc]
    tasks.cancel()
    tasks.wait()


def test_check_marks_the_bars_and_learns(
    qtbot: object, parts: tuple[Document, BudgetPlot, EngineCheck, TaskRunner], tmp_path: Path
) -> None:
    doc, budget, check, _ = parts
    _, before = doc.estimate()
    gpu = before.device("CUDA0")
    assert gpu is not None and gpu.margin > 0 and gpu.compute_source is ComputeSource.ESTIMATED
    check.button.click()
    qtbot.waitUntil(lambda: check.result is not None, timeout=30000)  # type: ignore[attr-defined]
    assert check.result is not None and check.result.measured, check.status.text()
    assert check.status.text().startswith("Measured by the engine's dry run")
    record = read_records(tmp_path / "cal.jsonl")[-1]
    engine_compute = {d.name: d.actual["compute"] for d in record.devices}
    _, after = doc.estimate()
    for d in after.devices:
        assert d.compute == engine_compute[d.name]
        assert d.compute_source is ComputeSource.MEASURED and d.margin == 0
    _, est = doc.estimate()
    marks = budget.measured_totals(est)
    assert set(marks) == {"CUDA0", "CPU"}
    assert "engine's dry run" in budget.device_tooltip("CUDA0")
    save_screenshot(budget, "probe.png", tmp_path)
    # Another plan: the marks belong to the plan checked, so they go.
    doc.assign_cells(list(expert_cells(doc.layout, 3, 3)), "CUDA0")
    _, est = doc.estimate()
    assert budget.measured_totals(est) == {}


def test_check_of_a_graph_split_plan_marks_each_gpu(
    qtbot: object,
    parts: tuple[Document, BudgetPlot, EngineCheck, TaskRunner],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # -sm graph over two GPUs: ik prints one CUDA_Split buffer and each GPU's share of it.
    monkeypatch.setenv("STANDIN_CUDA_MIB", "24000,24000")
    _, _, _, tasks = parts
    layout = open_model(Path(parts[0].layout.source))
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 1), "CUDA0").after
    plan = assign(layout, plan, range_cells(layout, 2, 3), "CUDA1").after
    settings = Settings(ctx=512, port=free_port(), threads=1, split_mode_graph=True)
    doc = Document(layout, rig_of(24, 24), settings, plan)
    budget = BudgetPlot(doc)
    engine = probe_engine(install_standin(tmp_path / "ik2", "ik", bench=False))
    check = EngineCheck(doc, budget, tasks, lambda: engine, calibration_path=tmp_path / "g.jsonl")
    for w in (budget, check):
        qtbot.addWidget(w)  # type: ignore[attr-defined]
    budget.resize(900, 420)
    budget.show()
    check.button.click()
    qtbot.waitUntil(lambda: check.result is not None, timeout=30000)  # type: ignore[attr-defined]
    assert check.result is not None and check.result.measured, check.status.text()
    assert {r.device for r in check.result.rows} == {"CUDA0", "CUDA1", "CPU"}
    _, est = doc.estimate()
    marks = budget.measured_totals(est)
    assert set(marks) == {"CUDA0", "CUDA1", "CPU"}
    for name in ("CUDA0", "CUDA1"):
        dev = est.device(name)
        assert dev is not None and dev.unprinted_compute > 0
        # The mark is the engine's figures plus what ik allocates only once it runs; the bar
        # learned the same compute, and weights and KV agree to ik's two printed decimals.
        assert dev.compute_source is ComputeSource.MEASURED
        assert abs(marks[name] - dev.total) <= 0.02 * 1024 * 1024
    assert "-sm graph input copies" in budget.device_tooltip("CUDA1")
    save_screenshot(budget, "probe_sm_graph.png", tmp_path)


def test_check_records_the_settings_it_checked(
    qtbot: object, parts: tuple[Document, BudgetPlot, EngineCheck, TaskRunner], tmp_path: Path
) -> None:
    doc, _, check, _ = parts
    check.button.click()
    # Edited while the dry run runs: the record keeps the context that was measured.
    doc.set_settings(doc.settings.with_(ctx=1024))
    qtbot.waitUntil(lambda: check.result is not None, timeout=30000)  # type: ignore[attr-defined]
    assert check.result is not None and check.result.measured, check.status.text()
    assert read_records(tmp_path / "cal.jsonl")[-1].settings["ctx"] == 512


def test_mainline_check_says_it_needs_ik(
    qtbot: object,
    parts: tuple[Document, BudgetPlot, EngineCheck, TaskRunner],
    tmp_path: Path,
) -> None:
    doc, budget, check, _ = parts
    mainline = probe_engine(install_standin(tmp_path / "ml", "mainline", bench=False))
    check.engine = lambda: mainline
    doc.set_settings(doc.settings.with_(dialect="mainline"))
    check.button.click()
    qtbot.waitUntil(lambda: check.result is not None, timeout=30000)  # type: ignore[attr-defined]
    assert "needs ik_llama.cpp" in check.status.text()
    _, est = doc.estimate()
    assert budget.measured_totals(est) == {}
