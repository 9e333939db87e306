"""The tuner against the stand-in benchmark tools (real subprocesses, no wall clock).

The stand-in plants an optimum (STANDIN_BENCH_PLANT): its speeds peak at ``-ub 1024``, 2 threads
and one expert layer on the CPU (3 of the tiny model's 4 on CUDA0), with 2 % seeded noise.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from moe_studio.core.engine.bench_run import BenchOutcome, BenchSpec, BenchTool
from moe_studio.core.engine.calibration import read_records
from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.engine.tune import (
    Journal,
    Trial,
    TuneOptions,
    default_runner,
    fingerprint,
    pareto_front,
    trial_key,
    tune,
)
from moe_studio.core.engine.tune_space import Knobs, build_space, fits_with_margin, no_larger
from moe_studio.core.errors import EngineError
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig, rpc_name
from moe_studio.core.plan.planning import Planner, apply_pin
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB, MiB
from tests.support.standin_bench import cpu_expert_layers
from tests.support.standin_tools import clean_env, install_standin

PLANT = {"ub": 1024, "threads": 2, "cpu_layers": 1, "noise": 0.02, "seed": 3}
OPTIMUM = (1024, 2, (("CUDA0", 3),))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineInfo]:
    base = tmp_path_factory.mktemp("tune-engines")
    both = probe_engine(install_standin(base / "both", "ik"), environ=clean_env())
    mainline = probe_engine(install_standin(base / "mainline", "mainline"), environ=clean_env())
    sweep_server = install_standin(base / "sweep", "ik")
    (base / "sweep" / "llama-bench").unlink()
    sweep = probe_engine(sweep_server, environ=clean_env())
    assert both.helper("bench") and both.helper("sweep-bench")
    assert sweep.helper("bench") is None and sweep.helper("sweep-bench")
    return {"both": both, "sweep": sweep, "mainline": mainline}


@pytest.fixture
def bench_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The planted optimum on, and a log of every stand-in run (one line per model load)."""
    for key in [k for k in clean_env() if k.startswith("STANDIN_")]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STANDIN_BENCH_PLANT", json.dumps(PLANT))
    runs = tmp_path / "runs.jsonl"
    monkeypatch.setenv("STANDIN_BENCH_LOG", str(runs))
    return runs


def planner_for(model: Path, gpu: int = 1 * GiB, cores: int = 4) -> Planner:
    layout = catalog.load(str(model))
    rig = Rig(
        "test", HostInfo(16 * GiB, cores_physical=cores), (Device("CUDA0", DeviceKind.CUDA, gpu),)
    )
    return Planner(layout, rig, Settings(ctx=4096))


def optimum(knobs: Knobs) -> tuple[object, ...]:
    return (knobs.ubatch, knobs.threads, knobs.expert_layers)


def logged_runs(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Counting:
    """The real runner, counted; it may advance a fake clock, or fail on call ``fail_at``."""

    def __init__(self, clock: list[float] | None = None, step: float = 10.0, fail_at: int = 0):
        self.calls = 0
        self.clock = clock
        self.step = step
        self.fail_at = fail_at

    def __call__(
        self, spec: BenchSpec, cancelled: Callable[[], bool], on_output: Callable[[str], None]
    ) -> BenchOutcome:
        self.calls += 1
        if self.fail_at and self.calls == self.fail_at:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during this trial
        outcome = default_runner(spec, cancelled, on_output)
        if self.clock is not None:
            self.clock[0] += self.step
        return outcome


def test_planted_optimum_found_with_shared_loads(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path, tmp_path: Path
) -> None:
    planner = planner_for(tiny_qwen3moe)
    space = build_space(planner, planner.initial())
    assert len(space.candidates) > 20
    calibration = tmp_path / "calibration.jsonl"
    result = tune(
        space,
        planner,
        engines["both"],
        TuneOptions(objective="balanced", depths=(0, 2048), max_trials=60),
        calibration=calibration,
    )
    assert result.best is not None and result.baseline is not None
    assert optimum(result.best.knobs) == OPTIMUM
    assert result.gain("balanced") is not None and result.gain("balanced") > 1.5
    # Screening with llama-bench: trials that differ in -ub/-t share one process (one load).
    runs = logged_runs(bench_env)
    assert result.loads == len(runs)
    assert len(result.measured) >= 2 * result.loads
    screening = [t for t in result.trials if t.rung == 0]
    assert len({t.load for t in screening}) < len(screening)
    assert any(r[0] == "bench" and "," in r[r.index("-ub") + 1] for r in runs)
    # Finals: the baseline and the best measured at the asked depths by llama-sweep-bench.
    finals = [t for t in result.trials if t.rung == 1]
    assert finals[0].knobs == space.baseline.knobs
    assert all(t.depths == (0, 2048) and t.points[0].n_kv == 0 for t in finals)
    assert [p.n_kv for p in result.best.points] == [0, 2048]
    assert result.best_command is not None
    argv = result.best_command.argv
    assert argv[argv.index("-ub") + 1] == "1024" and argv[argv.index("-t") + 1] == "2"
    assert cpu_expert_layers(list(argv)) == 1
    # Every load's buffers went to the calibration records.
    assert len(read_records(calibration)) == result.loads


def test_time_budget_on_the_tuners_clock(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path
) -> None:
    planner = planner_for(tiny_qwen3moe)
    space = build_space(planner, planner.initial(), ubatches=[512, 1024, 2048], threads=[4, 2])
    clock = [0.0]
    runner = Counting(clock, step=10.0)
    options = TuneOptions(objective="pp", depths=(0,), budget_seconds=600)
    result = tune(space, planner, engines["sweep"], options, runner=runner, clock=lambda: clock[0])
    assert result.best is not None and optimum(result.best.knobs) == OPTIMUM
    assert clock[0] <= 600 and result.stop == "done"
    # llama-sweep-bench measures one configuration per load.
    assert result.loads == runner.calls == len(logged_runs(bench_env)) == len(result.measured)

    clock[0] = 0.0
    small = Counting(clock, step=10.0)
    result = tune(
        space,
        planner,
        engines["sweep"],
        TuneOptions(objective="pp", budget_seconds=100),
        runner=small,
        clock=lambda: clock[0],
    )
    assert clock[0] <= 100 and small.calls <= 10
    assert result.baseline is not None  # the finals still compare with the baseline


def test_oom_trial_is_a_result_and_the_run_goes_on(
    engines: dict[str, EngineInfo],
    tiny_qwen3moe: Path,
    bench_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_OOM_UB", "2048")
    planner = planner_for(tiny_qwen3moe)
    space = build_space(
        planner, planner.initial(), ubatches=[512, 1024, 2048, 4096], threads=[2], layer_steps=1
    )
    for engine, tool in ((engines["sweep"], BenchTool.SWEEP), (engines["both"], BenchTool.BENCH)):
        result = tune(space, planner, engine, TuneOptions(objective="pp", max_trials=40))
        screening = [t for t in result.trials if t.rung == 0]
        oom = [t for t in screening if t.status == "oom"]
        assert oom and all(t.knobs.ubatch >= 2048 for t in oom), tool
        assert all("CUDA0" in t.error and "out of memory" in t.error for t in oom)
        ok = [t for t in screening if t.status == "ok"]
        assert {t.knobs.ubatch for t in ok} == {512, 1024}
        # Trials after the first out-of-memory ran: the run went on.
        first_oom = screening.index(oom[0])
        assert any(t.status == "ok" for t in screening[first_oom + 1 :])
        assert result.best is not None and result.best.knobs.ubatch == 1024


def test_never_tries_what_the_estimate_says_does_not_fit(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path
) -> None:
    # Every layer pinned to a small GPU: auto-place cannot make room for a larger -ub there.
    planner = planner_for(tiny_qwen3moe, gpu=760 * MiB)
    planner.update(settings=planner.settings.with_(ubatch=512))
    pinned = apply_pin(planner.layout, planner.initial(), "L:0-3=CUDA0").after
    space = build_space(
        planner, pinned, ubatches=[512, 1024, 2048, 4096], threads=[2], layer_steps=1
    )
    assert space.skipped, "the small GPU must rule some configurations out"
    assert any(k.ubatch == 4096 for k, _ in space.skipped)
    assert all(c.knobs.ubatch != 4096 for c in space.candidates[1:])
    tune(space, planner, engines["sweep"], TuneOptions(objective="pp", max_trials=30))
    tried = {
        (int(r[r.index("-ub") + 1]), min(4, cpu_expert_layers(r))) for r in logged_runs(bench_env)
    }
    allowed = {(c.knobs.ubatch, 4 - dict(c.knobs.expert_layers)["CUDA0"]) for c in space.candidates}
    assert tried and tried <= allowed


def test_interrupted_run_resumes_without_redoing_trials(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path, tmp_path: Path
) -> None:
    planner = planner_for(tiny_qwen3moe)
    space = build_space(
        planner, planner.initial(), ubatches=[512, 1024], threads=[4, 2], layer_steps=1
    )
    engine = engines["sweep"]
    options = TuneOptions(objective="balanced", depths=(0, 1024), max_trials=40)
    stamp = fingerprint(planner, engine, options.n_gen)
    path = tmp_path / "tiny.tune.json"

    full = Counting()
    reference = tune(space, planner, engine, options, runner=full)

    interrupted = Counting(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        tune(
            space, planner, engine, options, runner=interrupted, journal=Journal(path, stamp, True)
        )
    kept = json.loads(path.read_text())["trials"]
    assert len(kept) == 3

    rest = Counting()
    resumed = tune(space, planner, engine, options, runner=rest, journal=Journal(path, stamp, True))
    assert len([t for t in resumed.trials if t.reused]) == 3
    assert rest.calls == full.calls - 3
    assert len(resumed.trials) == len(reference.trials)
    assert resumed.best is not None and reference.best is not None
    assert resumed.best.knobs == reference.best.knobs
    # Nothing measured twice: the second run's trials are new keys.
    first = {trial.key for trial in map(Trial.from_json, kept) if trial is not None}
    assert len(first) == 3
    assert not first & {t.key for t in resumed.trials if not t.reused}

    # A journal of another setup is not reused.
    other = Journal(path, "another-fingerprint", True)
    assert not other.trials and "another model" in other.note


def test_pareto_front_keeps_the_trade_offs() -> None:
    def trial(ub: int, pp: float, tg: float, status: str = "ok") -> Trial:
        return Trial(Knobs(ub, ub, 1), 0, (0,), status, pp, tg)  # type: ignore[arg-type]

    a, b, c = trial(256, 100, 50), trial(512, 200, 40), trial(1024, 150, 30)
    d, e = trial(2048, 300, 10), trial(4096, 999, 999, "oom")
    assert pareto_front([a, b, c, d, e]) == [a, b, d]


def test_journal_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "tune" / "model.tune.json"
    journal = Journal(path, "stamp", resume=True)
    journal.add(Trial(Knobs(512, 2048, 2), 0, (0,), "ok", 10.0, 2.0))
    again = Journal(path, "stamp", resume=True)
    assert list(again.trials) == list(journal.trials) and again.trials[journal_key(512)].reused


def journal_key(ub: int) -> str:
    return trial_key(Knobs(ub, 2048, 2), 0, (0,))


def test_a_clearly_worse_finalist_is_stopped_early(
    engines: dict[str, EngineInfo],
    tiny_qwen3moe: Path,
    bench_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_BENCH_STEP_SECONDS", "0.2")
    planner = planner_for(tiny_qwen3moe)
    space = build_space(planner, planner.initial(), ubatches=[512, 1024], threads=[4, 2])
    # Any finalist below the best finished one at a depth stops (a strict ratio, for the test).
    options = TuneOptions(objective="pp", depths=(0, 1024, 2048, 3072), stop_ratio=0.999)
    result = tune(space, planner, engines["sweep"], options)
    finals = [t for t in result.trials if t.rung == 1]
    stopped = [t for t in finals if t.status == "stopped"]
    assert stopped and all(t.error.startswith("Stopped early: at N_KV") for t in stopped)
    assert finals[0].status == "ok"  # the baseline always runs to its end
    assert result.best is not None and result.best.status == "ok"
    assert all(t.score("pp") is None for t in stopped)


def test_cancel_ends_the_run_and_keeps_what_was_measured(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path
) -> None:
    planner = planner_for(tiny_qwen3moe)
    space = build_space(planner, planner.initial(), ubatches=[512, 1024], threads=[4, 2])
    seen: list[Trial] = []
    result = tune(
        space,
        planner,
        engines["sweep"],
        TuneOptions(),
        on_trial=seen.append,
        cancelled=lambda: len(seen) >= 3,
    )
    assert result.stop == "cancelled" and len(result.trials) == 3 and result.best is None
    assert result.notes and "--resume" in result.notes[-1]


def test_space_tries_the_advised_offload_threshold_and_keeps_what_fits() -> None:
    layout = catalog.load_catalog("qwen3-235b-a22b")
    gpu = Device("CUDA0", DeviceKind.CUDA, 24 * GiB, pcie_gen=4, pcie_width=16)
    rig = Rig("big", HostInfo(512 * GiB, cores_physical=128), (gpu,))
    planner = Planner(layout, rig, Settings(ctx=8192))
    space = build_space(planner, planner.initial())
    base = space.baseline
    offload = [c for c in space.candidates if c.knobs.offload_batch]
    assert offload and base.knobs.offload_batch is None
    twin = next(c for c in offload if c.knobs.differences(base.knobs) == 1)
    command = Planner(layout, rig, twin.settings).result(twin.plan).command
    assert command is not None
    value = f"offload-batch-size={twin.knobs.offload_batch}"
    assert command.argv[command.argv.index("-cuda") + 1] == value
    assert Knobs.from_json(twin.knobs.to_json()) == twin.knobs
    # Everything tried fits with the margin; what does not is left out with a reason.
    # Everything tried fits with the margin, or needs no more memory than the baseline (which
    # runs anyway); what does not is left out with a reason.
    assert base.estimate.fits
    assert all(
        not fits_with_margin(c.estimate) or no_larger(c.estimate, base.estimate)
        for c in space.candidates
    )
    assert all(why for _, why in space.skipped)


def test_mainline_uses_llama_bench_with_depths(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path
) -> None:
    layout = catalog.load(str(tiny_qwen3moe))
    planner = Planner(layout, planner_for(tiny_qwen3moe).rig, Settings("mainline", ctx=4096))
    space = build_space(planner, planner.initial(), ubatches=[512, 1024, 2048], threads=[4, 2])
    options = TuneOptions(objective="balanced", depths=(0, 2048), max_trials=40)
    result = tune(space, planner, engines["mainline"], options)
    assert result.best is not None and optimum(result.best.knobs) == OPTIMUM
    assert [p.n_kv for p in result.best.points] == [0, 2048]
    runs = logged_runs(bench_env)
    assert all(r[0] == "bench" for r in runs) and result.loads == len(runs)
    assert result.loads < len(result.measured)


def test_an_rpc_device_that_does_not_answer_stops_the_run_before_any_trial(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, bench_env: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    planner = planner_for(tiny_qwen3moe)
    rpc = Device(rpc_name(endpoint), DeviceKind.RPC, 1 * GiB, endpoint=endpoint)
    planner = Planner(planner.layout, replace(planner.rig, devices=(*planner.rig.devices, rpc)),
                      planner.settings)  # fmt: skip
    space = build_space(planner, planner.initial())
    with pytest.raises(EngineError, match=f"Not tuned: .*RPC device {endpoint} does not answer"):
        tune(space, planner, engines["both"], TuneOptions(max_trials=10))
    assert logged_runs(bench_env) == []  # no benchmark was started
