"""The tuner on the real ik_llama.cpp: llama-sweep-bench measures a tiny model on the CPU and an
rpc-server device; every trial gives speeds, the finals compare best and baseline at the asked
depths, and each load's buffers become a calibration record."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.engine.calibration import read_records
from moe_studio.core.engine.discovery import probe_engine
from moe_studio.core.engine.tune import TuneOptions, tune
from moe_studio.core.engine.tune_space import build_space
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import HostInfo, Rig
from moe_studio.core.hardware.rpc import rpc_device
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB

pytestmark = pytest.mark.engine


def test_tune_with_sweep_bench_on_cpu_and_rpc(
    ik_engine: Path, rpc_endpoints: list[str], tiny_qwen3moe: Path, tmp_path: Path
) -> None:
    engine = probe_engine(ik_engine)
    if engine.helper("sweep-bench") is None:
        pytest.skip(f"no llama-sweep-bench beside {ik_engine}")
    layout = catalog.load(str(tiny_qwen3moe))
    rig = Rig(
        "cpu + rpc", HostInfo(8 * GiB, cores_physical=2), (rpc_device(rpc_endpoints[0], 512 * MiB),)
    )
    planner = Planner(layout, rig, Settings(ctx=1024))
    space = build_space(planner, planner.initial(), ubatches=[256, 512], threads=[1], layer_steps=1)
    calibration = tmp_path / "calibration.jsonl"
    options = TuneOptions(objective="balanced", depths=(0, 512), max_trials=8, n_gen=8)
    result = tune(space, planner, engine, options, calibration=calibration)
    assert all(t.status == "ok" for t in result.trials), [t.error for t in result.trials]
    assert result.loads == len(result.measured)  # sweep-bench: one configuration per load
    assert result.baseline is not None and result.best is not None
    assert [p.n_kv for p in result.baseline.points] == [0, 512]
    assert result.best_command is not None and "--rpc" in result.best_command.argv
    records = read_records(calibration)
    assert len(records) == result.loads
    assert any(d.actual.get("weights") for r in records for d in r.devices)
