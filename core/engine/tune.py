"""The tuner: measure configurations with the engine's own benchmark and keep the fastest.

:func:`tune` takes a :class:`~moe_studio.core.engine.tune_space.SearchSpace` (only what fits) and
runs it in two rungs of successive halving:

1. **Screening** at KV depth 0, baseline first, then by distance from it. With ``llama-bench``
   (when the engine folder has it) trials that share the model parameters run in one process
   with comma lists of ``-ub``/``-t`` — llama-bench reloads the model only when those change
   (engines.md §7.2) — so such trials share a load; ``llama-sweep-bench`` measures one
   configuration per load.
2. **Finals** at the user's depths: the baseline and the best screened third (at most
   ``finalists``), with ``llama-sweep-bench`` on ik (``-c`` up to the deepest depth, a stride so
   only the asked depths are timed) or mainline ``llama-bench -d``. A finalist whose speed at a
   depth falls clearly below the best finished one's is stopped early.

The best and the baseline are thus measured at the same depths in the same run. A trial that runs
out of memory (the engine's log says so, read by :mod:`moe_studio.core.engine.diagnosis`) is a
result with its sentence, and the run goes on. Time is the tuner's own ``clock`` (injected in
tests), with the budget split between the rungs; ``max_trials`` caps the count instead. Every
finished trial goes to a journal (JSON, written atomically after each one): a rerun with
``resume`` skips the trials it holds. Each trial's buffers, beside our estimate, go to the
calibration records (:mod:`moe_studio.core.engine.calibration`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from moe_studio.core.engine.bench_results import BenchFormatError, parse_sweep_bench
from moe_studio.core.engine.bench_run import (
    BenchOutcome,
    BenchSpec,
    BenchTool,
    CurvePoint,
    build_bench_spec,
    curve,
    run_bench,
)
from moe_studio.core.engine.calibration import append_record, make_record
from moe_studio.core.engine.diagnosis import compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.log_events import FailureKind
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.engine.preflight import Preflight, preflight
from moe_studio.core.engine.tune_journal import (
    OBJECTIVES,
    Journal,
    Objective,
    Status,
    Trial,
    fingerprint,
    journal_path_for,
    trial_key,
)
from moe_studio.core.engine.tune_space import Candidate, SearchSpace
from moe_studio.core.errors import EngineError
from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.plan.cmdline import Command
from moe_studio.core.plan.planning import Planner

log = logging.getLogger(__name__)

SCREEN_SHARE = 0.6  # of the budget (time or trials) for the screening rung
KEEP = 1 / 3  # screened candidates going on to the finals
FINALISTS = 4  # at most, besides the baseline
STOP_RATIO = 0.6  # a finalist below this share of the best finished one at a depth is stopped
_MEMORY = (
    FailureKind.DEVICE_OUT_OF_MEMORY,
    FailureKind.BUFFER_ALLOCATION,
    FailureKind.KV_CACHE,
    FailureKind.COMPUTE_BUFFERS,
)

Runner = Callable[[BenchSpec, Callable[[], bool], Callable[[str], None]], BenchOutcome]


def default_runner(
    spec: BenchSpec, cancelled: Callable[[], bool], on_output: Callable[[str], None]
) -> BenchOutcome:
    """Run the benchmark as a real process (:func:`moe_studio.core.engine.bench_run.run_bench`)."""
    return run_bench(spec, cancelled=cancelled, on_output=on_output)


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """How to tune.

    Attributes:
        depths: KV depths of the finals (the screening measures depth 0).
        budget_seconds: Wall time for the whole run (the tuner's clock), None for no limit.
        max_trials: Trials measured in this run at most (reused ones do not count).
        n_gen: Tokens generated per TG measurement.
        finalists: Screened candidates going on to the finals at most (besides the baseline).
        screen_tool: Force the screening tool (default: llama-bench when present, else
            llama-sweep-bench).
        stop_ratio: A finalist whose speed at a depth falls below this share of the best
            finished finalist's is stopped early (with ``early_stop``).
    """

    objective: Objective = "balanced"
    depths: tuple[int, ...] = (0,)
    budget_seconds: float | None = 20 * 60
    max_trials: int | None = None
    n_gen: int = 32
    finalists: int = FINALISTS
    screen_tool: BenchTool | None = None
    early_stop: bool = True
    stop_ratio: float = STOP_RATIO

    def planned_trials(self, n_candidates: int) -> int:
        """How many trials a run over ``n_candidates`` (the baseline included) takes at most:
        the screening of every candidate (up to its share of ``max_trials``), then the finals of
        the baseline and the best screened third (up to ``finalists``); ``max_trials`` caps the
        sum. The time budget or failed trials can end a run sooner."""
        screened = n_candidates
        if self.max_trials is not None:
            screened = min(screened, max(1, int(self.max_trials * SCREEN_SHARE)))
        finals = 1 + min(self.finalists, max(1, math.ceil(screened * KEEP))) if screened > 1 else 0
        total = screened + finals
        return min(total, self.max_trials) if self.max_trials is not None else total


@dataclass(frozen=True, slots=True)
class TuneResult:
    """What a run found.

    Attributes:
        best, baseline: Final-rung trials (best may be the baseline; None when the finals did
            not run, e.g. the budget ran out during the screening).
        loads: Model loads this run needed (reused trials need none).
        stop: ``done``, ``budget`` (time or trials ran out) or ``cancelled``.
    """

    trials: tuple[Trial, ...]
    best: Trial | None
    baseline: Trial | None
    loads: int
    stop: str
    best_command: Command | None = None
    best_candidate: Candidate | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def measured(self) -> tuple[Trial, ...]:
        """Trials measured in this run (not read from the journal)."""
        return tuple(t for t in self.trials if not t.reused)

    def gain(self, objective: Objective) -> float | None:
        """Best's score over the baseline's (1.0: no better), None when unknown."""
        if self.best is None or self.baseline is None:
            return None
        b, a = self.best.score(objective), self.baseline.score(objective)
        return b / a if a and b is not None else None


# --- measuring ------------------------------------------------------------------------------------


def _geomean(values: Sequence[float]) -> float | None:
    good = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not good or len(good) != len(values):
        return None
    return math.exp(sum(math.log(v) for v in good) / len(good))


def _at_depths(points: Sequence[CurvePoint], depths: Sequence[int]) -> list[CurvePoint]:
    """The measured point nearest each asked depth (each point once)."""
    out: list[CurvePoint] = []
    for d in depths:
        if not points:
            break
        best = min(points, key=lambda p: abs(p.n_kv - d))
        if best not in out:
            out.append(best)
    return out


def _speeds(
    points: Sequence[CurvePoint], depths: Sequence[int]
) -> tuple[float | None, float | None]:
    chosen = _at_depths(points, depths)
    if not chosen:
        return None, None
    pp = _geomean(
        [p.s_pp for p in chosen if p.s_pp is not None]
        if all(p.s_pp is not None for p in chosen)
        else []
    )
    tg = _geomean(
        [p.s_tg for p in chosen if p.s_tg is not None]
        if all(p.s_tg is not None for p in chosen)
        else []
    )
    return pp, tg


def _sweep_plan(depths: Sequence[int], ub: int, plan_ctx: int) -> tuple[int, int, tuple[int, ...]]:
    """``-c``, ``--sweep-stride`` and the N_KV timed for ``depths`` at this ``-ub``.

    sweep-bench times depths that are multiples of ``-ub``: each asked depth becomes the nearest
    one, within the plan's context (its KV cache is what the memory estimate allowed).
    """
    top = max(0, max(ub, plan_ctx) // ub - 1)
    steps = sorted({min(top, max(0, math.floor(d / ub + 0.5))) for d in depths})
    stride = 0
    for s in steps:
        stride = math.gcd(stride, s)
    stride = max(1, stride)
    ctx = (steps[-1] + 1) * ub
    return ctx, stride, tuple(s * ub for s in steps)


def _with_option(argv: Sequence[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (appended when absent, before the output option)."""
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
        return out
    tail = 2 if len(out) >= 2 and out[-2] in ("--output-format", "-o") else 0
    at = len(out) - tail
    return [*out[:at], flag, value, *out[at:]]


class _Budget:
    """Time and trials spent, counting those of the journal: the budget is the whole job's, so
    a resumed run only gets what the interrupted one left."""

    def __init__(
        self, options: TuneOptions, clock: Callable[[], float], earlier: Sequence[Trial] = ()
    ) -> None:
        self.options = options
        self.clock = clock
        self.start = clock()
        self.trials = len(earlier)
        self.before = sum(t.seconds for t in earlier)
        self.seconds: dict[int, list[float]] = {0: [], 1: []}
        for t in earlier:
            self.seconds[1 if t.rung else 0].append(t.seconds)

    def elapsed(self) -> float:
        return self.clock() - self.start + self.before

    def allows(self, rung: int, count: int = 1) -> bool:
        """Whether ``count`` more trials of ``rung`` may start."""
        o = self.options
        share = SCREEN_SHARE if rung == 0 else 1.0
        if o.max_trials is not None and self.trials + count > max(1, int(o.max_trials * share)):
            return False
        if o.budget_seconds is None:
            return True
        past = self.seconds[rung] or self.seconds[0]
        expect = (sum(past) / len(past)) * count if past else 0.0
        return self.elapsed() + expect <= o.budget_seconds * share

    def spent(self, rung: int, seconds: float, count: int = 1) -> None:
        self.trials += count
        self.seconds[rung].extend([seconds / max(1, count)] * count)


@dataclass
class _Context:
    planner: Planner
    engine: EngineInfo
    options: TuneOptions
    runner: Runner
    journal: Journal
    budget: _Budget
    cancelled: Callable[[], bool]
    on_trial: Callable[[Trial], None]
    progress: Callable[[str], None]
    calibration: Path | None
    trials: list[Trial] = field(default_factory=list)
    loads: int = 0  # numbering of loads, continued from the journal
    run_loads: int = 0  # loads of this run
    notes: list[str] = field(default_factory=list)


def tune(
    space: SearchSpace,
    planner: Planner,
    engine: EngineInfo,
    options: TuneOptions = TuneOptions(),
    *,
    journal: Journal | None = None,
    runner: Runner = default_runner,
    clock: Callable[[], float] = time.monotonic,
    cancelled: Callable[[], bool] = lambda: False,
    on_trial: Callable[[Trial], None] = lambda trial: None,
    progress: Callable[[str], None] = lambda text: None,
    calibration: str | os.PathLike[str] | None = None,
    check: Callable[[Sequence[str]], Preflight] | None = preflight,
) -> TuneResult:
    """Measure ``space`` and return the best configuration (see the module docstring).

    Args:
        planner: The model, rig and base settings the space was built from.
        engine: The engine whose benchmark tools run the trials.
        journal: Finished trials of an earlier run to reuse, and where to keep this run's.
        runner: Runs one benchmark (a real process by default).
        clock: Seconds, for the budget.
        cancelled: Polled between trials and during them; True stops the run.
        on_trial: Called after each trial (measured or reused).
        progress: A line of what is happening now.
        calibration: The calibration file (None: no records).
        check: The pre-launch check of the rig's RPC endpoints (None skips it): an endpoint that
            does not answer, or a single-client rpc-server that already serves someone, would
            make every trial fail or wait forever.

    Raises:
        EngineError: the engine has no benchmark tool, an RPC device is not usable, or the first
            trials fail for a reason other than memory (a broken engine, a model it cannot load).
    """
    dialect = planner.settings.dialect
    if engine.helper("sweep-bench") is None and engine.helper("bench") is None:
        raise EngineError(
            f"Neither llama-sweep-bench nor llama-bench was found beside {engine.path}; build "
            "one of them (target llama-sweep-bench on ik_llama.cpp) to tune."
        )
    endpoints = [d.endpoint for d in planner.rig.devices if d.kind is DeviceKind.RPC and d.endpoint]
    ready = check(["--rpc", ",".join(endpoints)]) if endpoints and check is not None else None
    if ready is not None and not ready.ok:
        raise EngineError(f"Not tuned: {ready.sentence()}")
    if journal is None:
        journal = Journal(None, fingerprint(planner, engine, options.n_gen), resume=False)
    ctx = _Context(
        planner,
        engine,
        options,
        runner,
        journal,
        _Budget(options, clock, tuple(journal.trials.values())),
        cancelled,
        on_trial,
        progress,
        Path(calibration) if calibration is not None else None,
    )
    ctx.loads = journal.loads
    if ready is not None:
        ctx.notes.extend(ready.warnings)
    if journal.note:
        ctx.notes.append(journal.note)
    screen_tool = options.screen_tool or (
        BenchTool.BENCH if engine.helper("bench") else BenchTool.SWEEP
    )
    if screen_tool is BenchTool.SWEEP and dialect != "ik":
        screen_tool = BenchTool.BENCH
    final_tool = (
        BenchTool.SWEEP if dialect == "ik" and engine.helper("sweep-bench") else BenchTool.BENCH
    )
    if final_tool is BenchTool.BENCH and dialect == "ik" and any(options.depths):
        ctx.notes.append(
            "ik's llama-bench measures at depth 0 only and llama-sweep-bench is missing: the "
            "finals measure depth 0."
        )
    stop = _screen(ctx, space, screen_tool)
    if stop != "cancelled" and _screened(ctx) >= 2:
        # The finals compare the baseline with the best screened: worth it with two or more.
        finals = _finals(ctx, space, final_tool)
        stop = finals if finals != "done" else stop
    return _result(ctx, space, stop)


def _screen(ctx: _Context, space: SearchSpace, tool: BenchTool) -> str:
    """Measure the candidates at depth 0; ``done``, ``budget`` (ran out) or ``cancelled``."""
    for group in _groups(space.candidates, tool):
        todo = []
        for c in group:
            reused = ctx.journal.trials.get(trial_key(c.knobs, 0, (0,)))
            if reused is None:
                todo.append(c)
            else:
                ctx.trials.append(reused)
                ctx.on_trial(reused)
        if not todo:
            continue
        if ctx.cancelled():
            return "cancelled"
        # A group the budget cannot afford whole is measured one by one while it can.
        batches = [todo] if ctx.budget.allows(0, len(todo)) else [[c] for c in todo]
        for batch in batches:
            if not ctx.budget.allows(0, len(batch)):
                return "budget"
            if ctx.cancelled():
                return "cancelled"
            _measure(ctx, batch, 0, (0,), tool)
            _check_broken(ctx)
    return "done"


def _screened(ctx: _Context) -> int:
    return sum(1 for t in ctx.trials if t.rung == 0)


def _check_broken(ctx: _Context) -> None:
    """Stop when the first trials all failed for a reason other than memory."""
    first = [t for t in ctx.trials if t.rung == 0 and not t.reused][:2]
    if (
        len(first) == 2
        and all(t.status == "failed" for t in first)
        and not any(t.status == "ok" for t in ctx.trials)
    ):
        raise EngineError(f"The benchmark fails for every configuration: {first[0].error}")


def _finals(ctx: _Context, space: SearchSpace, tool: BenchTool) -> str:
    objective = ctx.options.objective
    screened = {t.knobs.key: t for t in ctx.trials if t.rung == 0}
    ranked = sorted(
        (t for t in screened.values() if t.score(objective) is not None),
        key=lambda t: -(t.score(objective) or 0.0),
    )
    keep = min(ctx.options.finalists, max(1, math.ceil(len(ranked) * KEEP)))
    base_key = space.baseline.knobs.key
    chosen = [base_key, *[t.knobs.key for t in ranked if t.knobs.key != base_key][:keep]]
    depths = ctx.options.depths
    for key in chosen:
        candidate = space.find(key)
        if candidate is None:
            continue
        reused = ctx.journal.trials.get(trial_key(candidate.knobs, 1, depths))
        if reused is not None:
            ctx.trials.append(reused)
            ctx.on_trial(reused)
            continue
        if ctx.cancelled():
            return "cancelled"
        if key != base_key and not ctx.budget.allows(1):
            return "budget"
        _measure(ctx, [candidate], 1, depths, tool)
    return "done"


def _groups(candidates: Sequence[Candidate], tool: BenchTool) -> list[list[Candidate]]:
    """Trials that can share one process (and so one model load), in the candidates' order."""
    if tool is BenchTool.SWEEP:
        return [[c] for c in candidates]
    by_load: dict[tuple[object, ...], list[Candidate]] = {}
    for c in candidates:
        k = c.knobs
        by_load.setdefault((k.load_key, k.amb, k.cache, k.offload_batch), []).append(c)
    out: list[list[Candidate]] = []
    for group in by_load.values():
        ubs = sorted({c.knobs.ubatch for c in group})
        threads = sorted({c.knobs.threads or 0 for c in group})
        pairs = {(c.knobs.ubatch, c.knobs.threads or 0) for c in group}
        if len(pairs) == len(ubs) * len(threads) == len(group):
            out.append(group)  # llama-bench runs the product of the lists: exactly these
        else:
            for t in threads:
                out.append([c for c in group if (c.knobs.threads or 0) == t])
    # Keep the search order: a group runs where its first member stood.
    first = {id(c): i for i, c in enumerate(candidates)}
    out.sort(key=lambda g: first[id(g[0])])
    return out


def _spec(
    ctx: _Context, group: Sequence[Candidate], rung: int, depths: Sequence[int], tool: BenchTool
) -> tuple[BenchSpec, tuple[int, ...]]:
    """The benchmark of ``group`` (one candidate for sweep-bench) and the N_KV it times."""
    lead = group[0]
    result = Planner(ctx.planner.layout, ctx.planner.rig, lead.settings).result(
        lead.plan, executable=ctx.engine.path
    )
    if result.command is None:
        raise EngineError(f"No command for {lead.knobs.label()}: {result.command_error}")
    ub = lead.knobs.ubatch
    dialect = lead.settings.dialect
    if tool is BenchTool.SWEEP:
        c, stride, timed = _sweep_plan(depths, ub, lead.settings.ctx)
        spec = build_bench_spec(
            result,
            ctx.engine,
            dialect=dialect,
            tool=tool,
            ctx=c,
            ubatch=ub,
            n_gen=ctx.options.n_gen,
        )
        argv = list(spec.argv)
        if stride > 1:
            argv = _with_option(argv, "--sweep-stride", str(stride))
        return replace(spec, argv=tuple(argv)), timed
    ubs = sorted({c.knobs.ubatch for c in group})
    threads = sorted({c.knobs.threads for c in group if c.knobs.threads})
    bench_depths = [0] if dialect == "ik" else sorted(set(depths))
    spec = build_bench_spec(
        result,
        ctx.engine,
        dialect=dialect,
        tool=tool,
        ubatch=ub,
        n_gen=ctx.options.n_gen,
        depths=bench_depths,
        repetitions=1 if rung == 0 else 2,
    )
    argv = _with_option(spec.argv, "-ub", ",".join(map(str, ubs)))
    argv = _with_option(argv, "-p", str(max(ubs)))
    argv = _with_option(argv, "-b", str(max(c.knobs.batch for c in group)))
    if threads:
        argv = _with_option(argv, "-t", ",".join(map(str, threads)))
    return replace(spec, argv=tuple(argv)), tuple(bench_depths)


def _measure(
    ctx: _Context, group: Sequence[Candidate], rung: int, depths: tuple[int, ...], tool: BenchTool
) -> None:
    spec, timed = _spec(ctx, group, rung, depths, tool)
    label = group[0].knobs.label() if len(group) == 1 else f"{len(group)} configurations"
    what = "screening" if rung == 0 else "finals"
    ctx.progress(f"{what}: {label}")
    watch = _EarlyStop(ctx, rung, timed) if len(group) == 1 else None
    t0 = ctx.budget.clock()

    def stop() -> bool:
        return ctx.cancelled() or (watch is not None and watch.triggered)

    outcome = ctx.runner(spec, stop, watch.feed if watch is not None else lambda text: None)
    seconds = max(0.0, ctx.budget.clock() - t0)
    ctx.budget.spent(rung, seconds, len(group))
    ctx.loads += 1
    ctx.run_loads += 1
    if outcome.cancelled and ctx.cancelled():
        return  # not a result: the user stopped it; the journal does not keep it
    _calibrate(ctx, group[0], outcome, spec)
    if len(group) > 1 and outcome.error:
        # llama-bench stops at the first context that fails (an out-of-memory at the largest
        # -ub …): keep what it measured, then run the others alone to tell which failed.
        measured = [c for c in group if all(_speeds(_rows_for(c, outcome), timed))]
        for candidate in measured:
            _record(ctx, _trial(ctx, candidate, outcome, spec, rung, depths, timed, seconds))
        for candidate in group:
            if candidate not in measured and not ctx.cancelled():
                _measure(ctx, [candidate], rung, depths, tool)
        return
    for candidate in group:
        trial = _trial(ctx, candidate, outcome, spec, rung, depths, timed, seconds / len(group))
        if watch is not None and watch.triggered and trial.status != "oom":
            trial = replace(trial, status="stopped", error=watch.reason)
        _record(ctx, trial)


def _record(ctx: _Context, trial: Trial) -> None:
    ctx.trials.append(trial)
    ctx.journal.add(trial)
    ctx.on_trial(trial)


def _rows_for(candidate: Candidate, outcome: BenchOutcome) -> tuple[CurvePoint, ...]:
    """This candidate's curve out of a (possibly shared) llama-bench result."""
    result = outcome.result
    if not isinstance(result, tuple):
        return outcome.points  # sweep-bench: one configuration per run
    k = candidate.knobs
    mine = [
        r
        for r in result
        if _config_int(r.config.get("n_ubatch")) in (None, k.ubatch)
        and (k.threads is None or _config_int(r.config.get("n_threads")) in (None, k.threads))
    ]
    return curve(mine)


def _config_int(value: str | None) -> int | None:
    """A llama-bench config field as a number (json fields arrive as text: ``"512"``)."""
    if value is None:
        return None
    try:
        return int(str(value).strip().strip('"'))
    except ValueError:
        return None


def _trial(
    ctx: _Context,
    candidate: Candidate,
    outcome: BenchOutcome,
    spec: BenchSpec,
    rung: int,
    depths: tuple[int, ...],
    timed: tuple[int, ...],
    seconds: float,
) -> Trial:
    points = _rows_for(candidate, outcome)
    pp, tg = _speeds(points, timed)
    status: Status = "ok"
    error = ""
    measured = pp is not None and tg is not None
    if outcome.error and not outcome.cancelled and not measured:
        # A shared llama-bench run that failed later still measured its earlier contexts.
        status, error = _failure(ctx, candidate, outcome)
    elif not measured and not outcome.cancelled:
        status = "failed"
        error = outcome.error or "The benchmark printed no speeds for this configuration."
    return Trial(
        knobs=candidate.knobs,
        rung=rung,
        depths=depths,
        status=status,
        pp=pp if status == "ok" or outcome.cancelled else None,
        tg=tg if status == "ok" or outcome.cancelled else None,
        points=points,
        seconds=seconds,
        load=ctx.loads,
        error=error,
        argv=spec.full_argv,
    )


def _failure(ctx: _Context, candidate: Candidate, outcome: BenchOutcome) -> tuple[Status, str]:
    """``("oom", sentence)`` when the log shows an out-of-memory, else ``("failed", error)``."""
    parser = EngineLogParser(ctx.planner.settings.dialect)
    parser.feed_text(outcome.log)
    parser.finish()
    report = parser.report()
    failure = report.failure
    if failure is None:
        return "failed", outcome.error
    p = ctx.planner
    diagnosis = diagnose(
        failure, p.layout, candidate.plan, p.rig, candidate.settings, report=report
    )
    if failure.kind in _MEMORY or diagnosis.device:
        return "oom", diagnosis.sentence
    return "failed", diagnosis.sentence


def _calibrate(ctx: _Context, candidate: Candidate, outcome: BenchOutcome, spec: BenchSpec) -> None:
    """The trial's buffers beside our estimate (for the benchmark's own context size)."""
    if ctx.calibration is None:
        return
    argv = list(spec.argv)
    settings = candidate.settings
    if "-c" in argv:
        with contextlib.suppress(ValueError):
            settings = settings.with_(ctx=int(argv[argv.index("-c") + 1]))
    parser = EngineLogParser(settings.dialect)
    parser.feed_text(outcome.log)
    parser.finish()
    report = parser.report()
    planner = Planner(ctx.planner.layout, ctx.planner.rig, settings)
    rows = compare(planner.estimate(candidate.plan)[1], report)
    if spec.tool is BenchTool.BENCH:
        # llama-bench sizes its contexts by -p/-n and makes one per -ub: only the weights
        # compare with the plan.
        rows = [
            replace(
                r, predicted_kv=None, predicted_compute=None, actual_kv=None, actual_compute=None
            )
            for r in rows
        ]
    if not any(r.actual_weights or r.actual_kv or r.actual_compute for r in rows):
        return
    try:
        append_record(
            make_record(planner.layout, planner.settings, rows, engine=ctx.engine.version),
            ctx.calibration,
        )
    except EngineError as exc:
        ctx.notes.append(str(exc))


class _EarlyStop:
    """Watches a finals sweep as its rows arrive; stops it once a depth is clearly worse than
    the best finished finalist's at the same depth."""

    def __init__(self, ctx: _Context, rung: int, timed: tuple[int, ...]) -> None:
        self.ctx = ctx
        self.text: list[str] = []
        self.triggered = False
        self.reason = ""
        self.best: dict[int, float] = {}
        objective = ctx.options.objective
        finished = [t for t in ctx.trials if t.rung == rung and t.status == "ok"]
        if rung == 1 and ctx.options.early_stop and finished:
            leader = max(finished, key=lambda t: t.score(objective) or 0.0)
            for p in _at_depths(leader.points, timed):
                value = _objective_point(p, objective)
                if value is not None:
                    self.best[p.n_kv] = value

    def feed(self, text: str) -> None:
        if not self.best or self.triggered:
            return
        self.text.append(text)
        try:
            rows = parse_sweep_bench("".join(self.text)).rows
        except BenchFormatError:
            return
        objective = self.ctx.options.objective
        for row in rows:
            value = _objective_point(CurvePoint(row.n_kv, row.s_pp, row.s_tg), objective)
            best = self.best.get(row.n_kv)
            if value is not None and best and value < self.ctx.options.stop_ratio * best:
                self.triggered = True
                self.reason = (
                    f"Stopped early: at N_KV {row.n_kv} it reached {value:.1f} against the best "
                    f"finalist's {best:.1f}."
                )
                return


def _objective_point(p: CurvePoint, objective: Objective) -> float | None:
    if objective == "pp":
        return p.s_pp
    if objective == "tg":
        return p.s_tg
    if p.s_pp is None or p.s_tg is None or p.s_pp <= 0 or p.s_tg <= 0:
        return None
    return math.sqrt(p.s_pp * p.s_tg)


def _result(ctx: _Context, space: SearchSpace, stop: str) -> TuneResult:
    objective = ctx.options.objective
    finals = [t for t in ctx.trials if t.rung == 1 and t.score(objective) is not None]
    base_key = space.baseline.knobs.key
    baseline = next((t for t in finals if t.knobs.key == base_key), None)
    best = max(finals, key=lambda t: t.score(objective) or 0.0) if finals else None
    command = None
    candidate = space.find(best.knobs.key) if best is not None else None
    if candidate is not None:
        planner = Planner(ctx.planner.layout, ctx.planner.rig, candidate.settings)
        command = planner.result(candidate.plan, executable=ctx.engine.path).command
    notes = list(ctx.notes)
    if best is None:
        notes.append(
            "The finals did not run (the budget ran out or the run was stopped during the "
            "screening); rerun with --resume and a larger budget to finish."
        )
    return TuneResult(
        tuple(ctx.trials),
        best,
        baseline,
        ctx.run_loads,
        stop,
        command,
        candidate,
        tuple(notes),
    )


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """The trials no other beats in both PP and TG, by rising PP (the PP-vs-TG trade-off)."""
    measured = [t for t in trials if t.pp is not None and t.tg is not None and t.status == "ok"]
    front = [
        t
        for t in measured
        if not any(
            (o.pp or 0) >= (t.pp or 0)
            and (o.tg or 0) >= (t.tg or 0)
            and ((o.pp or 0) > (t.pp or 0) or (o.tg or 0) > (t.tg or 0))
            for o in measured
        )
    ]
    return sorted(front, key=lambda t: (t.pp or 0.0, -(t.tg or 0.0)))


__all__ = [
    "OBJECTIVES",
    "Journal",
    "Objective",
    "Trial",
    "TuneOptions",
    "TuneResult",
    "default_runner",
    "fingerprint",
    "journal_path_for",
    "pareto_front",
    "trial_key",
    "tune",
]
