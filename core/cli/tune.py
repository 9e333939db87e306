"""``moe-studio tune``: find the fastest configuration that fits, by measuring it.

Plans the model (same options as ``plan``/``launch``, or a profile), builds the search space
(:mod:`moe_studio.core.engine.tune_space`), runs the trials with the engine's benchmark tools
(:mod:`moe_studio.core.engine.tune`), prints a line per trial, then the table of trials, the best
against the baseline (auto-place + the advisor's choices, measured in the same run at the same
depths) and the best's command line. ``--json`` prints one object instead.

The journal (``PROFILE.tune.json`` beside a profile, else in the user cache folder) keeps every
finished trial: after Ctrl-C, the same command with ``--resume`` goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from typing import TextIO

from moe_studio.core.engine.discovery import EngineStore
from moe_studio.core.engine.tune import (
    OBJECTIVES,
    Journal,
    Objective,
    Trial,
    TuneOptions,
    TuneResult,
    fingerprint,
    journal_path_for,
    tune,
)
from moe_studio.core.engine.tune_space import build_space, describe_skipped
from moe_studio.core.errors import CommandError

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_budget(text: str) -> tuple[float | None, int | None]:
    """``20m``, ``1h30m``, ``90s``, ``300`` (seconds) or ``12 trials`` / ``12t``.

    Raises:
        CommandError: anything else.
    """
    t = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"(\d+)(?:t|trials?)", t)
    if m:
        return None, max(1, int(m.group(1)))
    m = _DURATION.match(t)
    if not t or not m or not any(m.groups()):
        raise CommandError(
            f"--budget {text!r}: give a time (20m, 1h30m, 90s) or a number of trials (30trials)."
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise CommandError(f"--budget {text!r}: the budget must be more than nothing.")
    return total, None


def parse_depths(text: str) -> tuple[int, ...]:
    """``0,8192`` → ``(0, 8192)``.

    Raises:
        CommandError: not a comma list of whole numbers ≥ 0.
    """
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise CommandError(f"--depths {text!r}: give KV depths as whole numbers, e.g. 0,8192.")
    return values


def _int_list(flag: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise CommandError(f"{flag} {text!r}: give whole numbers ≥ 1 separated by commas.")
    return values


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from moe_studio.core.cli.launch import _OVERRIDES
    from moe_studio.core.cli.plan import add_plan_arguments

    p = sub.add_parser(
        "tune",
        help="measure configurations with the engine's benchmark and print the fastest",
        description="Search -ub/-b, threads, expert layers per GPU (and -amb, -sm graph) for the "
        "fastest configuration that fits, measuring each with llama-sweep-bench/llama-bench; "
        "compare it with the auto-place + advisor baseline measured in the same run.",
    )
    add_plan_arguments(p)
    p.set_defaults(dialect=None)
    t = p.add_argument_group("tuning")
    t.add_argument(
        "--budget",
        default="20m",
        help="time (20m, 1h, 90s) or trials (30trials) for the whole run (default 20m)",
    )
    t.add_argument("--objective", choices=OBJECTIVES, default="balanced", help="what to maximize")
    t.add_argument("--depths", default="0", help="KV depths of the final measurements, e.g. 0,8192")
    t.add_argument("--resume", action="store_true", help="reuse the trials of an earlier run")
    t.add_argument("--journal", metavar="FILE", help="where finished trials are kept")
    t.add_argument(
        "--allow-cache",
        action="store_true",
        help="also try a q8_0 KV cache (changes the output slightly)",
    )
    t.add_argument("--try-ubatch", metavar="LIST", help="-ub values to try, e.g. 512,1024,2048")
    t.add_argument("--try-threads", metavar="LIST", help="thread counts to try, e.g. 16,32")
    t.add_argument("--n-gen", type=int, default=32, help="tokens generated per TG measurement")
    t.add_argument(
        "--no-calibration",
        action="store_true",
        help="do not add the trials' measured memory to the calibration file",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=_cmd_tune, plan_defaults={k: p.get_default(k) for k in _OVERRIDES})


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _trial_line(trial: Trial, index: int) -> str:
    rung = "screen" if trial.rung == 0 else "final "
    what = f"PP {_speed(trial.pp):>9}  TG {_speed(trial.tg):>7}"
    if trial.status != "ok":
        what = f"{trial.status.upper()}: {trial.error}"
    reused = " (from the journal)" if trial.reused else f" (load {trial.load})"
    return f"[{index:3d}] {rung} {trial.knobs.label():<44} {what}{reused}"


def print_table(result: TuneResult, objective: Objective, out: TextIO) -> None:
    w = out.write
    w(f"\n{'rung':<7}{'configuration':<46}{'PP t/s':>10}{'TG t/s':>9}{'score':>10}  status\n")
    order = sorted(
        result.trials, key=lambda t: (-t.rung, -(t.score(objective) or -1.0), t.knobs.key)
    )
    for t in order:
        score = t.score(objective)
        w(
            f"{'final' if t.rung else 'screen':<7}{t.knobs.label()[:45]:<46}{_speed(t.pp):>10}"
            f"{_speed(t.tg):>9}{_speed(score):>10}  {t.status}\n"
        )


def print_summary(result: TuneResult, objective: Objective, out: TextIO) -> None:
    w = out.write
    measured = len(result.measured)
    reused = len(result.trials) - measured
    from_journal = f" ({reused} from the journal)" if reused else ""
    w(
        f"\n{measured} trials measured with {result.loads} model loads{from_journal}; "
        f"stopped: {result.stop}.\n"
    )
    base, best = result.baseline, result.best
    if base is not None:
        w(f"baseline: {base.knobs.label()}: PP {_speed(base.pp)}, TG {_speed(base.tg)} t/s\n")
    if best is not None:
        w(f"best:     {best.knobs.label()}: PP {_speed(best.pp)}, TG {_speed(best.tg)} t/s\n")
        gain = result.gain(objective)
        if gain is not None:
            w(f"{objective} score: {gain:.2f}× the baseline's\n")
    if result.best_command is not None:
        w(f"\n{result.best_command.shell()}\n")
    for note in result.notes:
        w(f"note: {note}\n")


def result_json(result: TuneResult, objective: Objective) -> dict[str, object]:
    def one(t: Trial | None) -> dict[str, object] | None:
        return None if t is None else {**t.to_json(), "score": t.score(objective)}

    return {
        "objective": objective,
        "stop": result.stop,
        "loads": result.loads,
        "trials_measured": len(result.measured),
        "trials": [one(t) for t in result.trials],
        "baseline": one(result.baseline),
        "best": one(result.best),
        "gain": result.gain(objective),
        "argv": list(result.best_command.argv) if result.best_command else None,
        "env": dict(result.best_command.env) if result.best_command else {},
        "notes": list(result.notes),
    }


def _cmd_tune(args: argparse.Namespace) -> int:
    from moe_studio.core.cli.launch import prepare

    out = sys.stdout
    budget_seconds, max_trials = parse_budget(args.budget)
    depths = parse_depths(args.depths)
    if args.n_gen < 1:
        raise CommandError("--n-gen must be at least 1.")
    ubatches = _int_list("--try-ubatch", args.try_ubatch)
    threads = _int_list("--try-threads", args.try_threads)
    engine, planner, plan, notes = prepare(args, defaults=args.plan_defaults, store=EngineStore())
    host = planner.rig.host
    if not host.cores_physical:
        # A rig from --gpu/--ram or a file may not say; the benchmark runs here, so count ours.
        import psutil

        cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
        planner.update(rig=replace(planner.rig, host=replace(host, cores_physical=cores)))
    space = build_space(
        planner, plan, ubatches=ubatches, threads=threads, allow_cache=args.allow_cache
    )
    options = TuneOptions(
        objective=args.objective,
        depths=depths,
        budget_seconds=budget_seconds,
        max_trials=max_trials,
        n_gen=args.n_gen,
    )
    path = args.journal or journal_path_for(args.model)
    journal = Journal(path, fingerprint(planner, engine, options.n_gen), resume=args.resume)
    say = (lambda text: None) if args.json else (lambda text: (out.write(text + "\n"), out.flush()))
    say(f"{engine.label} at {engine.path}")
    say(
        f"{len(space.candidates)} configurations fit ({len(space.skipped)} left out by the "
        f"memory estimate); budget {args.budget}, objective {args.objective}, depths "
        f"{','.join(map(str, depths))}; journal {path}"
    )
    for line in describe_skipped(space.skipped, limit=3):
        say(f"  left out: {line}")
    for note in [*notes, *space.notes]:
        say(f"note: {note}")
    count = [0]

    def on_trial(trial: Trial) -> None:
        count[0] += 1
        say(_trial_line(trial, count[0]))

    calibration = None
    if not args.no_calibration:
        from moe_studio.core.engine.calibration import default_path

        calibration = default_path()
    t0 = time.monotonic()
    try:
        result = tune(
            space, planner, engine, options, journal=journal, on_trial=on_trial,
            calibration=calibration,
        )  # fmt: skip
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\ninterrupted after {count[0]} trials; the finished ones are in {path}: run the "
            "same command with --resume to go on.\n"
        )
        return 130
    if args.json:
        json.dump(result_json(result, args.objective), out, indent=1)
        out.write("\n")
        return 0
    print_table(result, args.objective, out)
    print_summary(result, args.objective, out)
    say(f"({time.monotonic() - t0:.0f} s)")
    return 0
