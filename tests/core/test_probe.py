"""``plan --probe`` / ``launch --probe``: the engine's dry run, with the stand-in engine.

The stand-in holds after its ``--dry-run`` buffers until it is stopped, so a probe that waited
for more than the buffers would never end: each measured test also shows that the probe stops
the engine once the buffers are out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.calibration import read_records
from moe_studio.core.engine.discovery import probe_engine
from moe_studio.core.engine.launch import LaunchSpec, build_launch_spec
from moe_studio.core.engine.probe import ProbeOutcome, probe_spec, run_probe
from moe_studio.core.gguf.model import open_model
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB
from tests.support.standin_tools import install_standin, isolate_engine_env


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("probe-engines")
    return {d: install_standin(base / d, d, bench=False) for d in ("ik", "mainline")}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_engine_env(monkeypatch, tmp_path, STANDIN_CUDA_MIB="8000")


def plan_json(
    model: Path, engine: Path, capsys: pytest.CaptureFixture[str], *more: str
) -> dict[str, object]:
    code = main(["plan", str(model), "--ram", "16GiB", "--ctx", "512", "--engine", str(engine),
                 "--probe", "--json", *more])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    obj: dict[str, object] = json.loads(out)
    return obj


def test_probe_spec_adds_dry_run_and_moves_the_port() -> None:
    spec = LaunchSpec(argv=("llama-server", "-m", "m.gguf", "--port", "8080"), port=8080)
    probe = probe_spec(spec, 50001)
    assert probe.argv == ("llama-server", "-m", "m.gguf", "--port", "50001", "--dry-run")
    assert probe.port == 50001


def test_plan_probe_reports_the_engines_buffers(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = plan_json(tiny_qwen3moe, bins["ik"], capsys, "--gpu", "8GiB")
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "measured", measured["sentence"]
    devices = {d["name"]: d for d in measured["devices"]}
    assert set(devices) == {"CUDA0", "CPU"}
    for d in devices.values():
        assert d["compute"] > 0 and d["estimate"]["compute"] > 0
    assert devices["CUDA0"]["weights"] > 0 and devices["CUDA0"]["kv"] > 0
    # A measured probe is a calibration record, as a launch is.
    records = read_records(env / "data" / "moe-studio" / "calibration.jsonl")
    assert [r.devices[0].actual["compute"] for r in records] == [devices["CUDA0"]["compute"]]


def test_plan_probe_text_shows_estimate_and_engine(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["plan", str(tiny_qwen3moe), "--ram", "16GiB", "--gpu", "8GiB", "--ctx", "512",
                 "--engine", str(bins["ik"]), "--probe"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "check with the engine: Measured by the engine's dry run (ik_llama.cpp 4840" in out
    assert "memory: ours / engine's (difference)" in out


def test_probe_of_a_graph_split_plan_shows_each_gpu(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # -sm graph: ik prints the split tensors as one CUDA_Split buffer and each GPU's share of it
    # in "… size per device:" blocks (the stand-in prints those lines as ik does).
    monkeypatch.setenv("STANDIN_CUDA_MIB", "8000,8000")
    obj = plan_json(tiny_qwen3moe, bins["ik"], capsys, "--gpu", "8GiB", "--gpu", "8GiB",
                    "--split-mode", "graph")  # fmt: skip
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "measured", measured["sentence"]
    devices = {d["name"]: d for d in measured["devices"]}
    assert set(devices) == {"CUDA0", "CUDA1", "CPU"}
    for name in ("CUDA0", "CUDA1"):
        d, ours = devices[name], devices[name]["estimate"]
        # ik prints MiB with two decimals: the engine's figure is ours to within that.
        assert d["weights"] > 0 and abs(d["weights"] - ours["weights"]) <= 0.01 * MiB
        assert d["kv"] > 0 and abs(d["kv"] - ours["kv"]) <= 0.01 * MiB
        # The inputs -sm graph copies at run time (-mea, 256 MiB) are in neither figure.
        assert 0 < d["compute"] < 64 * MiB and 0 < ours["compute"] < 64 * MiB
    assert devices["CUDA0"]["weights"] != devices["CUDA1"]["weights"]  # split by -ts, not equal
    assert "copies between GPUs (up to 256.0 MiB per GPU)" in str(measured["sentence"])
    # The next plan for the same configuration shows the measured compute plus those inputs.
    code = main(["plan", str(tiny_qwen3moe), "--ram", "16GiB", "--ctx", "512", "--gpu", "8GiB",
                 "--gpu", "8GiB", "--split-mode", "graph", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    plan = {d["name"]: d for d in json.loads(out)["devices"]}
    assert plan["CUDA0"]["compute"] == devices["CUDA0"]["compute"] + 256 * MiB


def test_mainline_probe_says_it_needs_ik(
    env: Path, bins: dict[str, Path], tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj = plan_json(tiny_qwen3moe, bins["mainline"], capsys, "--dialect", "mainline")
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "unsupported"
    assert "needs ik_llama.cpp" in str(measured["sentence"])
    assert measured["devices"] == []


def test_probe_out_of_memory_shows_what_the_engine_asked_for(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "oom-compute")
    monkeypatch.setenv("STANDIN_OOM_MIB", "3000")
    obj = plan_json(tiny_qwen3moe, bins["ik"], capsys, "--gpu", "8GiB")
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "out_of_memory"
    oom = measured["out_of_memory"]
    assert oom["device"] == "CUDA0"
    assert oom["requested"] == 3000 * MiB
    assert "CUDA0 ran out of memory allocating the 2.9 GiB compute buffer" in measured["sentence"]


def test_probe_crash_is_a_sentence(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "crash-load")
    obj = plan_json(tiny_qwen3moe, bins["ik"], capsys)
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "failed"
    assert "ended before it printed its compute buffers" in str(measured["sentence"])
    assert "SIGSEGV" in str(measured["sentence"])


def test_probe_timeout_is_a_sentence(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_LOAD_GATE", str(env / "never"))  # holds before the buffers
    obj = plan_json(tiny_qwen3moe, bins["ik"], capsys, "--probe-timeout", "0.5")
    measured = obj["measured"]
    assert isinstance(measured, dict)
    assert measured["outcome"] == "timed_out"
    assert "within 0.5 s" in str(measured["sentence"])


def test_launch_probe_out_of_memory_does_not_start(
    env: Path,
    bins: dict[str, Path],
    tiny_qwen3moe: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "oom-compute")
    code = main(["launch", str(tiny_qwen3moe), "--ram", "16GiB", "--gpu", "8GiB", "--ctx", "512",
                 "--engine", str(bins["ik"]), "--probe"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "check with the engine: The engine's dry run: CUDA0 ran out of memory" in out
    assert "not started" in out
    assert "ready:" not in out


def test_an_engine_that_cannot_start_is_a_result_not_an_exception(
    env: Path, tiny_qwen3moe: Path
) -> None:
    engine = install_standin(env / "gone", "ik", bench=False)
    info = probe_engine(engine)
    layout = open_model(tiny_qwen3moe)
    rig = Rig("test", HostInfo(16 * GiB), (Device("CUDA0", DeviceKind.CUDA, 8 * GiB),))
    planner = Planner(layout, rig, Settings(ctx=512))
    plan = initial_plan(layout)
    spec = build_launch_spec(planner.result(plan, executable=str(engine)), info, dialect="ik")
    engine.unlink()  # removed after it was chosen
    result = run_probe(spec, info, planner, plan)
    assert result.outcome is ProbeOutcome.FAILED
    assert result.sentence.startswith("The engine's dry run could not start:")
