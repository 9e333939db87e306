"""Benchmarks of a plan: the tools' argv for both engines, running them (stand-in tools as real
subprocesses), cancelling, and S_PP/S_TG against N_KV from either tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.engine.bench_results import parse_llama_bench
from moe_studio.core.engine.bench_run import (
    BenchRun,
    BenchTool,
    CurvePoint,
    build_bench_spec,
    curve,
    default_depths,
    run_bench,
)
from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.errors import EngineError
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.hardware.rpc import rpc_device
from moe_studio.core.plan.placement import assign, expert_cells, initial_plan, range_cells
from moe_studio.core.plan.planning import Planner, PlanResult
from moe_studio.core.plan.settings import Dialect, Settings
from moe_studio.core.units import GiB
from tests.support.standin_tools import clean_env, install_standin

BENCH_DATA = Path(__file__).resolve().parents[1] / "data" / "bench"


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineInfo]:
    base = tmp_path_factory.mktemp("bench-engines")
    return {
        d: probe_engine(install_standin(base / d, d), environ=clean_env())
        for d in ("ik", "mainline")
    }


def placed(model: Path, dialect: Dialect, engine: EngineInfo, **settings: object) -> PlanResult:
    """Layers 0–1 on CUDA0, 2–3 on an RPC device, every expert on the CPU."""
    layout = catalog.load(str(model))
    rig = Rig(
        "test",
        HostInfo(64 * GiB),
        (
            rpc_device("10.0.0.2:50052", 24 * GiB),
            Device("CUDA0", DeviceKind.CUDA, 24 * GiB),
        ),
    )
    rpc = rig.rpc_devices[0].name
    plan = assign(layout, initial_plan(layout), range_cells(layout, 0, 1), "CUDA0").after
    plan = assign(layout, plan, range_cells(layout, 2, 3), rpc).after
    plan = assign(layout, plan, expert_cells(layout), "CPU").after
    base = Settings(dialect=dialect, ctx=8192, ubatch=512, threads=4, metrics=True)
    s = base.with_(**settings)
    result = Planner(layout, rig, s).result(plan, executable=engine.path)
    assert result.command is not None, result.command_error
    return result


def test_sweep_bench_argv(engines: dict[str, EngineInfo], tiny_qwen3moe: Path) -> None:
    engine = engines["ik"]
    result = placed(tiny_qwen3moe, "ik", engine, extra_args=("--alias", "tiny", "--jinja"))
    assert result.command is not None
    spec = build_bench_spec(result, engine, dialect="ik", ctx=2048, ubatch=256)
    argv = list(spec.argv)
    assert spec.tool is BenchTool.SWEEP and argv[0] == engine.helper("sweep-bench")
    server = result.command.argv
    for flag in ("--rpc", "-ngl", "-dev", "-ts", "-t", "-fa"):
        assert argv[argv.index(flag) + 1] == server[server.index(flag) + 1]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-ot"] == [
        server[i + 1] for i, a in enumerate(server) if a == "-ot"
    ]
    for gone in ("--host", "--port", "-np", "--metrics", "--alias", "tiny", "--jinja"):
        assert gone not in argv
    assert argv[argv.index("-c") + 1] == "2048" and argv.count("-c") == 1
    assert argv[argv.index("-ub") + 1] == "256" and argv[argv.index("-n") + 1] == "64"
    assert argv[-2:] == ["--output-format", "jsonl"]
    assert spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert spec.shell().startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID ")


def test_llama_bench_argv_mainline(engines: dict[str, EngineInfo], tiny_qwen3moe: Path) -> None:
    engine = engines["mainline"]
    result = placed(tiny_qwen3moe, "mainline", engine, no_mmap=True)
    assert result.command is not None
    spec = build_bench_spec(result, engine, dialect="mainline", ubatch=128)
    argv = list(spec.argv)
    assert spec.tool is BenchTool.BENCH and argv[0] == engine.helper("bench")
    rules = [result.command.argv[i + 1] for i, a in enumerate(result.command.argv) if a == "-ot"]
    assert len(rules) > 1 and argv.count("-ot") == 1
    assert argv[argv.index("-ot") + 1] == ";".join(rules)  # one value: -ot twice = two tests
    ts = result.command.argv[result.command.argv.index("-ts") + 1]
    assert argv[argv.index("-ts") + 1] == ts.replace(",", "/")
    dev = result.command.argv[result.command.argv.index("-dev") + 1]
    assert "," in dev and argv[argv.index("-dev") + 1] == dev.replace(",", "/")
    assert argv[argv.index("-fa") + 1] == "on"
    assert argv[argv.index("-lm") + 1] == "none"
    assert argv[argv.index("-d") + 1] == "0,2048,4096,6144"
    assert argv[argv.index("-p") + 1] == "128" and argv[argv.index("-n") + 1] == "32"
    assert argv[-2:] == ["-o", "jsonl"]
    for gone in ("-c", "-fit", "-lv", "--host", "--port", "-np", "--metrics"):
        assert gone not in argv


def test_llama_bench_argv_ik(engines: dict[str, EngineInfo], tiny_qwen3moe: Path) -> None:
    engine = engines["ik"]
    result = placed(tiny_qwen3moe, "ik", engine, no_mmap=True, flash_attn=False)
    spec = build_bench_spec(result, engine, dialect="ik", tool=BenchTool.BENCH)
    argv = list(spec.argv)
    assert argv[argv.index("-rpc") + 1] == "10.0.0.2:50052"
    assert argv[argv.index("-fa") + 1] == "0" and argv[argv.index("-mmp") + 1] == "0"
    assert argv.count("-ot") > 1  # ik's llama-bench accumulates -ot like the server
    assert "-d" not in argv and argv[-2:] == ["-o", "json"]
    assert "-dev" not in argv and any("-dev" in note for note in spec.notes)


def test_missing_tool_and_wrong_engine(engines: dict[str, EngineInfo], tiny_qwen3moe: Path) -> None:
    from dataclasses import replace

    bare = replace(engines["ik"], helpers={})
    result = placed(tiny_qwen3moe, "ik", bare)
    with pytest.raises(EngineError, match="llama-sweep-bench was not found beside"):
        build_bench_spec(result, bare, dialect="ik")
    ml = placed(tiny_qwen3moe, "mainline", engines["mainline"])
    with pytest.raises(EngineError, match=r"ik_llama\.cpp tool"):
        build_bench_spec(ml, engines["mainline"], dialect="mainline", tool=BenchTool.SWEEP)


def test_default_depths() -> None:
    assert default_depths(8192, 512) == [0, 2048, 4096, 6144]
    assert default_depths(1000, 512) == [0]
    assert default_depths(256, 64) == [0, 64, 128, 192]


@pytest.mark.parametrize("dialect", ["ik", "mainline"])
def test_run_and_parse(
    dialect: Dialect,
    engines: dict[str, EngineInfo],
    tiny_qwen3moe: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STANDIN_BENCH_FAIL", raising=False)
    engine = engines[dialect]
    spec = build_bench_spec(
        placed(tiny_qwen3moe, dialect, engine), engine, dialect=dialect, ctx=256, ubatch=64
    )
    seen: list[str] = []
    outcome = run_bench(spec, on_output=seen.append)
    assert outcome.exit.normal and not outcome.error, outcome.log
    assert [p.n_kv for p in outcome.points] == [0, 64, 128, 192]
    assert all(p.s_pp and p.s_tg for p in outcome.points)
    assert outcome.points[0].s_pp > outcome.points[-1].s_pp  # type: ignore[operator]
    assert "".join(seen).strip()
    kept = outcome.to_json()
    assert kept["tool"] == spec.tool.value and len(kept["points"]) == 4  # type: ignore[arg-type]


def test_cancel_keeps_the_rows_so_far(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.2")
    engine = engines["ik"]
    spec = build_bench_spec(
        placed(tiny_qwen3moe, "ik", engine), engine, dialect="ik", ctx=8192, ubatch=64
    )
    run = BenchRun(spec)
    text: list[str] = []
    outcome = run.run(
        cancelled=lambda: '"n_kv": 64' in "".join(text), on_output=text.append, poll=0.05
    )
    # Cancelled early, counted in steps rather than seconds: the sweep has 128 of them.
    assert len(outcome.points) < 128
    assert outcome.cancelled and outcome.exit.requested
    assert outcome.error.startswith("The benchmark was cancelled; the ")
    assert [p.n_kv for p in outcome.points][:2] == [0, 64]


def test_failed_run(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_FAIL", "1")
    engine = engines["ik"]
    spec = build_bench_spec(placed(tiny_qwen3moe, "ik", engine), engine, dialect="ik", ctx=256)
    outcome = run_bench(spec)
    assert outcome.result is None and outcome.points == ()
    assert outcome.error.startswith("llama-sweep-bench exited with status 1. Last lines: ")


def test_curve_from_llama_bench_files() -> None:
    ml = parse_llama_bench((BENCH_DATA / "ml_bench.jsonl").read_text())
    points = curve(ml)
    assert [p.n_kv for p in points] == [0, 128]
    assert all(p.s_pp is not None and p.s_tg is not None for p in points)
    ik = parse_llama_bench((BENCH_DATA / "ik_bench.json").read_text())
    by_depth = {p.n_kv: p for p in curve(ik)}
    assert by_depth[0].s_pp is not None and by_depth[0].s_tg is not None
    assert by_depth[128] == CurvePoint(128, None, by_depth[128].s_tg)  # -gp: tg at depth 128


def test_bench_argv_for_an_old_build(engines: dict[str, EngineInfo], tiny_qwen3moe: Path) -> None:
    engine = engines["ik"]
    # Build 3737: a bare -fa (no value) and -fmoe; the next flag is not taken as -fa's value.
    result = placed(tiny_qwen3moe, "ik", engine, engine_build=3737)
    assert result.command is not None and "-fmoe" in result.command.argv
    sweep = list(build_bench_spec(result, engine, dialect="ik", ctx=2048, ubatch=256).argv)
    at = sweep.index("-fa")
    assert sweep[at + 1] not in ("on", "off") and "-fmoe" in sweep
    assert "-b" in sweep and sweep[sweep.index("-b") + 1].isdigit()
    bench = list(build_bench_spec(result, engine, dialect="ik", tool=BenchTool.BENCH).argv)
    assert bench[bench.index("-fa") + 1] == "1" and bench[bench.index("-fmoe") + 1] == "1"
    # Builds 3928-3984: flash attention on by default, -no-fa turns it off.
    off = placed(tiny_qwen3moe, "ik", engine, engine_build=3950, flash_attn=False)
    bench = list(build_bench_spec(off, engine, dialect="ik", tool=BenchTool.BENCH).argv)
    assert bench[bench.index("-fa") + 1] == "0"
