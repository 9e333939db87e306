"""Learning from measurements and the estimate's error band: after a run, ``plan`` for the same
configuration reports the measured compute buffer (no band); nearby settings are scaled by the
measured/estimated ratio (band kept); other engines, models and graph shapes are left alone."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.calibration import (
    CalibrationRecord,
    DevicePair,
    engine_key,
    learned_for,
    read_records,
)
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.learned import Learned, MeasuredRun
from moe_studio.core.plan.memory import COMPUTE_MARGIN, ComputeSource
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from tests.support.standin_tools import install_standin, isolate_engine_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def planner() -> Planner:
    layout = catalog.load("catalog:qwen3-30b-a3b")
    gpu = Device("CUDA0", DeviceKind.CUDA, 24 * GiB, index=0)
    return Planner(layout, Rig("r", HostInfo(64 * GiB), (gpu,)), Settings(ctx=8192, ubatch=512))


def _run(planner: Planner, factor: float, settings: Settings | None = None) -> MeasuredRun:
    s = settings or planner.settings
    p = Planner(planner.layout, planner.rig, s)
    _, est = p.estimate(p.initial())
    predicted = {d.name: d.compute for d in est.devices}
    actual = {name: int(c * factor) for name, c in predicted.items()}
    return MeasuredRun(p.settings.to_dict(), predicted, actual)


def test_estimated_compute_carries_the_band_and_fits_means_with_it(planner: Planner) -> None:
    _, est = planner.estimate(planner.initial())
    gpu = est.device("CUDA0")
    assert gpu is not None and gpu.compute > 0
    assert gpu.compute_source is ComputeSource.ESTIMATED
    assert gpu.margin == int(gpu.compute * COMPUTE_MARGIN)
    assert gpu.free == gpu.usable - gpu.total - gpu.margin


def test_same_configuration_reports_the_measured_compute(planner: Planner) -> None:
    planner.update(learned=Learned((_run(planner, 1.3),)))
    _, est = planner.estimate(planner.initial())
    _, raw = planner.estimate(planner.initial(), learned=False)
    for d, r in zip(est.devices, raw.devices, strict=True):
        assert d.compute == int(r.compute * 1.3)
        assert d.compute_source is ComputeSource.MEASURED
        assert d.margin == 0


def test_nearby_settings_scale_through_the_ratio(planner: Planner) -> None:
    planner.update(learned=Learned((_run(planner, 1.5),)))
    planner.update(settings=planner.settings.with_(ctx=16384, cache_type_k="q8_0"))
    _, est = planner.estimate(planner.initial())
    _, raw = planner.estimate(planner.initial(), learned=False)
    gpu, gpu_raw = est.device("CUDA0"), raw.device("CUDA0")
    assert gpu is not None and gpu_raw is not None
    assert gpu.compute_source is ComputeSource.SCALED
    assert gpu.compute == gpu_raw.compute * int(gpu_raw.compute * 1.5) // gpu_raw.compute
    assert gpu.margin > 0  # still an estimate


def test_another_graph_shape_learns_nothing(planner: Planner) -> None:
    planner.update(learned=Learned((_run(planner, 1.5),)))
    planner.update(settings=planner.settings.with_(flash_attn=False))
    _, est = planner.estimate(planner.initial())
    assert {d.compute_source for d in est.devices} == {ComputeSource.ESTIMATED}


def test_records_of_other_engines_and_models_are_left_out(planner: Planner) -> None:
    layout = planner.layout

    def record(model: str, engine: str) -> CalibrationRecord:
        pair = DevicePair("CUDA0", {"compute": 100}, {"compute": 200})
        return CalibrationRecord(
            "t", model, layout.architecture, "ik", engine, planner.settings.to_dict(), (pair,)
        )

    records = [
        record(layout.name, "version: 4840 (8337e4cd3)"),
        record(layout.name, "version: 4000 (abc1234)"),
        record("other", "version: 4840 (8337e4cd3)"),
    ]
    assert len(learned_for(records, layout, "ik", "version: 4840 (8337e4cd3)").runs) == 1
    assert len(learned_for(records, layout, "ik").runs) == 2
    assert learned_for(records, layout, "mainline").runs == ()
    assert engine_key("ik_llama.cpp 4840 (8337e4cd3)") == engine_key("version: 4840 (8337e4cd3)")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_engine_env(monkeypatch, tmp_path, STANDIN_CUDA_MIB="8000")


def test_after_a_launch_plan_reports_its_measured_compute(
    env: Path, tiny_qwen3moe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = install_standin(env / "ik", "ik", bench=False)
    common = [str(tiny_qwen3moe), "--ram", "16GiB", "--gpu", "8GiB", "--ctx", "512",
              "--engine", str(engine)]  # fmt: skip
    assert main(["launch", *common, "--port", str(_free_port()), "--check"]) == 0
    capsys.readouterr()
    (record,) = read_records(env / "data" / "moe-studio" / "calibration.jsonl")
    measured = {d.name: d.actual["compute"] for d in record.devices}
    assert main(["plan", *common, "--json"]) == 0
    devices = {d["name"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
    for name, compute in measured.items():
        assert devices[name]["compute"] == compute, name
        assert devices[name]["compute_source"] == "measured"
        assert devices[name]["margin"] == 0
    # A nearby context is scaled from it, and marked so in the table.
    assert main(["plan", *common[:-4], "--ctx", "1024", *common[-2:]]) == 0
    out = capsys.readouterr().out
    assert "~ scaled from a measurement at nearby settings" in out


def test_an_older_ik_build_is_named_in_a_note() -> None:
    from moe_studio.core.engine.discovery import EngineInfo, estimate_build_note

    old = EngineInfo("llama-server", "ik", "version: 4000 (abcdef1)", 4000, "abcdef1")
    note = estimate_build_note(old)
    assert note.startswith("The estimate follows ik_llama.cpp 4000 (abcdef1)'s own buffer layout")
    assert "claimed only from build 4161" in note
    assert "a first launch corrects it" in note  # build 4000 has no --dry-run (4322)
    dry = EngineInfo("llama-server", "ik", "version: 4400 (abcdef1)", 4400, "abcdef1")
    assert estimate_build_note(dry) == ""  # described
    assert "--probe" not in note
    assert estimate_build_note(EngineInfo("s", "ik", "version: 4840 (8337e4cd3)", 4840)) == ""
    assert estimate_build_note(EngineInfo("s", "ik", "version: 0 (unknown)", None)) == ""
    assert estimate_build_note(EngineInfo("s", "mainline", "version: 6000 (abc)", 6000)) == ""


def test_the_advised_ubatch_leaves_room_for_the_band() -> None:
    # DeepSeek-V3 on one 22 GiB GPU: the advisor takes the largest -ub whose compute buffer,
    # with its band, still leaves layer 0's always-active weights on the GPU; twice that pushes
    # them off. (On 24 GiB even the largest -ub the advisor tries fits, now that the experts'
    # copies are freed with their split instead of sitting on top of the attention.)
    layout = catalog.load_catalog(catalog.DEMO)
    gpu = Device("CUDA0", DeviceKind.CUDA, 22 * GiB, index=0, pcie_gen=4, pcie_width=16)
    rig = Rig("r", HostInfo(256 * GiB, cores_physical=16), (gpu,))
    planner = Planner(layout, rig, Settings(cache_type_k="q8_0", cache_type_v="q8_0"))
    tuned = planner.advise_batch(planner.initial())
    planner.update(settings=tuned)
    placed = planner.auto_place(planner.initial())
    assert placed.shortfall == 0
    result = planner.result(placed.plan)
    assert result.estimate.fits
    assert result.advice is not None
    assert result.advice.lines[0].startswith(f"-ub {tuned.ubatch}:")
    doubled = tuned.with_(ubatch=2 * tuned.ubatch, batch=2 * tuned.ubatch)
    planner.update(settings=doubled)
    assert planner.auto_place(planner.initial()).shortfall > 0
