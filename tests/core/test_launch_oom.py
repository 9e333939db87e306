"""Out of memory → one sentence of diagnosis → a fix applied to the plan → the relaunch works.

The stand-in simulates a GPU of a few MiB (STANDIN_CUDA_MIB with STANDIN_ENFORCE_FREE): the first
buffer that does not fit fails as cudaMalloc does, in the phase it belongs to. The tiny model's
whole plan sits on CUDA0 (1.6 MiB weights, 8 MiB KV at -c 4096, 3 MiB compute at -ub 512).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_studio.core.engine.diagnosis import Diagnosis, FixKind, compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.engine.launch import ServerRun, build_launch_spec
from moe_studio.core.engine.log_events import BufferKind, LoadReport
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan.placement import Plan, assign, initial_plan, range_cells
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, KiB, MiB
from tests.support.standin_tools import clean_env, install_standin

MARGIN = 64 * KiB  # the default (256 MiB) is more than the tiny model has


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> EngineInfo:
    exe = install_standin(tmp_path_factory.mktemp("oom") / "ik", "ik", bench=False)
    return probe_engine(exe, environ=clean_env())


@pytest.fixture(scope="module")
def setup(tiny_qwen3moe: Path) -> tuple[ModelLayout, Rig, Plan]:
    layout = catalog.load(str(tiny_qwen3moe))
    rig = Rig("test", HostInfo(16 * GiB), (Device("CUDA0", DeviceKind.CUDA, 24 * GiB),))
    everything = range_cells(layout, 0, layout.n_layer - 1)
    plan = assign(layout, initial_plan(layout), everything, "CUDA0", pin=False).after
    return layout, rig, plan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    engine: EngineInfo, layout: ModelLayout, rig: Rig, plan: Plan, settings: Settings, free_mib: int
) -> LoadReport:
    """Run the plan on a stand-in GPU with ``free_mib`` MiB until ready or dead; stop it."""
    planner = Planner(layout, rig, settings.with_(port=free_port()))
    spec = build_launch_spec(planner.result(plan, executable=engine.path), engine, dialect="ik")
    env = clean_env(STANDIN_CUDA_MIB=str(free_mib), STANDIN_ENFORCE_FREE="1")
    parser = EngineLogParser("ik")
    run = ServerRun(spec, base_env=env)
    run.start()
    try:
        end = time.monotonic() + 120  # waits for ready or exit; the deadline catches a hang
        while time.monotonic() < end:
            for _, text in run.output(0.05):
                parser.feed_text(text)
            report = parser.report()
            if report.ready or run.poll() is not None:
                break
        for _, text in run.output():
            parser.feed_text(text)
        parser.finish()
    finally:
        run.stop(timeout=5)
    return parser.report()


@pytest.fixture
def settings() -> Iterator[Settings]:
    yield Settings(ctx=4096, ubatch=512)


def test_compute_oom_diagnosed_then_each_fix_relaunches(
    engine: EngineInfo, setup: tuple[ModelLayout, Rig, Plan], settings: Settings
) -> None:
    layout, rig, plan = setup
    report = launch(engine, layout, rig, plan, settings, free_mib=12)
    assert not report.ready and report.failure is not None
    d: Diagnosis = diagnose(
        report.failure, layout, plan, rig, settings, report=report, margin=MARGIN
    )
    # 1.57 MiB weights + 8 MiB KV were allocated of 12 MiB; the 3 MiB compute buffer lacks 0.57.
    assert d.sentence == (
        "CUDA0 ran out of memory allocating the 3.0 MiB compute buffer; 583.7 KiB was missing."
    )
    assert d.device == "CUDA0" and d.purpose is BufferKind.COMPUTE
    assert d.requested == 3 * MiB and d.missing is not None and 0.5 * MiB < d.missing < 0.6 * MiB
    kinds = [f.kind for f in d.fixes]
    assert kinds[0] is FixKind.LOWER_UBATCH  # the cheap fix for a compute buffer comes first
    assert FixKind.MOVE_EXPERTS in kinds and FixKind.QUANTIZE_CACHE not in kinds

    ub = next(f for f in d.fixes if f.kind is FixKind.LOWER_UBATCH)
    assert ub.settings.ubatch == 256 and ub.plan == plan and ub.sufficient
    assert launch(engine, layout, rig, ub.plan, ub.settings, free_mib=12).ready

    move = next(f for f in d.fixes if f.kind is FixKind.MOVE_EXPERTS)
    assert move.edit is not None and move.edit.before == plan and move.edit.after == move.plan
    assert move.edit.inverse().after == plan  # an undoable step
    assert move.settings == settings and not move.moves_pinned
    assert (
        move.label.startswith("Move the experts of layers ") and "from CUDA0 to CPU" in move.label
    )
    fixed = launch(engine, layout, rig, move.plan, move.settings, free_mib=12)
    assert fixed.ready
    assert fixed.devices["CUDA0"].model < report.devices["CUDA0"].model


def test_kv_and_model_oom(
    engine: EngineInfo, setup: tuple[ModelLayout, Rig, Plan], settings: Settings
) -> None:
    layout, rig, plan = setup
    kv = launch(engine, layout, rig, plan, settings, free_mib=9)
    assert kv.failure is not None
    d = diagnose(kv.failure, layout, plan, rig, settings, report=kv, margin=MARGIN)
    assert d.sentence.startswith("CUDA0 ran out of memory allocating the 8.0 MiB KV cache; ")
    q8 = d.fixes[0]
    assert q8.kind is FixKind.QUANTIZE_CACHE
    assert (q8.settings.cache_type_k, q8.settings.cache_type_v) == ("q8_0", "q8_0")
    assert launch(engine, layout, rig, q8.plan, q8.settings, free_mib=9).ready

    weights = launch(engine, layout, rig, plan, settings, free_mib=1)
    assert weights.failure is not None
    d = diagnose(weights.failure, layout, plan, rig, settings, report=weights, margin=MARGIN)
    assert "buffer for the model weights" in d.sentence
    assert [f.kind for f in d.fixes] == [FixKind.MOVE_EXPERTS]
    # The predicted-vs-actual table of a failed run has no engine figures for what never came.
    rows = compare(Planner(layout, rig, settings).estimate(plan)[1], weights)
    assert rows and all(r.actual_kv is None and r.actual_compute is None for r in rows)
