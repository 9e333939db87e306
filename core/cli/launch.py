"""``moe-studio launch``: start llama-server for a plan (or a profile) and watch it.

Prints the command, starts the server (never through a shell), shows the loading progress and the
ready line, the predicted-vs-actual memory table once the engine has printed its buffers, and
optionally a test prompt's speed; then keeps the server running until Ctrl-C (or SIGTERM), which
stops it cleanly. A failure prints one sentence of diagnosis and the fixes, as options to launch
again with, and exits with status 1. ``--check`` stops once the server is ready (a smoke test).

The engine is ``--engine PATH``, else the profile's, else ``$MOE_STUDIO_ENGINE``, else the one
remembered in the settings, else the first found
(:func:`moe_studio.core.engine.discovery.resolve_engine`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from moe_studio.core.cli.report import print_compare, print_diagnosis
from moe_studio.core.engine.diagnosis import compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo, EngineStore, Flavour, resolve_engine
from moe_studio.core.engine.health import HealthTracker, Phase, poll_health, send_test_prompt
from moe_studio.core.engine.launch import LaunchSpec, ServerRun, build_launch_spec, connect_host
from moe_studio.core.engine.log_events import BufferKind
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.engine.log_patterns import expected_load_dots
from moe_studio.core.engine.preflight import preflight
from moe_studio.core.errors import EngineError
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import exposure_warning

POLL_INTERVAL = 0.5
EXIT_FAILED = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from moe_studio.core.cli.plan import add_plan_arguments

    p = sub.add_parser(
        "launch",
        help="start llama-server for a plan or profile and watch it load",
        description="Plan a model (same options as `plan`) or open a profile, start "
        "llama-server with that command, show progress, memory (predicted vs actual) and "
        "readiness, and keep it running until Ctrl-C. A failure is explained, with fixes.",
    )
    add_plan_arguments(p)
    p.set_defaults(dialect=None)  # from the engine unless given
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the command and what would run; start nothing (with --probe: only the check)",
    )
    p.add_argument(
        "--gguf",
        metavar="PATH",
        help="with a profile: the local model file to bind it to (the download of the remote "
        "model it was planned from, or the file moved); the plan is kept and the profile saved",
    )
    p.add_argument("--test-prompt", metavar="TEXT", help="once ready, send TEXT and show tokens/s")
    p.add_argument(
        "--check",
        action="store_true",
        help="stop once ready (after the test prompt): a smoke test of the plan",
    )
    p.add_argument("--show-log", action="store_true", help="echo the engine's output to stderr")
    p.add_argument(
        "--ready-timeout",
        type=float,
        metavar="SECONDS",
        help="give up when not ready after this long (default: wait)",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="do not add this run's predicted-vs-actual sizes to the calibration file",
    )
    # What the plan options default to, to tell which ones a user typed (they win over a profile).
    p.set_defaults(func=_cmd_launch, plan_defaults={k: p.get_default(k) for k in _OVERRIDES})


# --- preparing --------------------------------------------------------------------------------


def _is_profile(target: str) -> bool:
    return target.lower().endswith(".json")


_OVERRIDES = (
    "ctx",
    "cache",
    "cache_k",
    "cache_v",
    "ubatch",
    "batch",
    "no_fa",
    "mla",
    "amb",
    "threads",
    "parallel",
    "host",
    "port",
    "api_key",
    "no_mmap",
    "extra",
)


def _from_profile(
    args: argparse.Namespace, defaults: dict[str, object]
) -> tuple[Planner, Plan, list[str], str]:
    """Planner and plan of a profile, with the plan options the user gave on top."""
    from moe_studio.core.cli.plan import _rig, _settings
    from moe_studio.core.gguf import catalog
    from moe_studio.core.plan.planning import apply_pin
    from moe_studio.core.profiles.plans import planner_from_profile, require_model
    from moe_studio.core.profiles.schema import load_profile

    profile = load_profile(args.model)
    notes = list(profile.warnings)
    if getattr(args, "gguf", None):
        from moe_studio.core.profiles.plans import bind_model
        from moe_studio.core.profiles.schema import save_profile

        layout = catalog.load(args.gguf)
        before = profile.model.source
        profile = bind_model(profile, layout)
        if profile.model.source != before:
            save_profile(args.model, profile)
            notes.append(
                f"Bound {args.model} to {profile.model.source} (planned from {before}); "
                "its placement and settings are kept."
            )
    else:
        from moe_studio.core.profiles.plans import require_local

        require_local(profile, args.model)
        layout = catalog.load(profile.model.source)
    require_model(profile, layout)
    planner, plan = planner_from_profile(profile, layout)
    given = {k for k in _OVERRIDES if getattr(args, k, None) != defaults.get(k)}
    if given:
        # The plan options the user typed win over the profile's settings.
        wanted = _settings(args, planner.settings)
        changes = {}
        fields = {
            "ctx": ("ctx",),
            "cache": ("cache_type_k", "cache_type_v"),
            "cache_k": ("cache_type_k",),
            "cache_v": ("cache_type_v",),
            "ubatch": ("ubatch",),
            "batch": ("batch",),
            "no_fa": ("flash_attn",),
            "mla": ("mla",),
            "amb": ("amb",),
            "threads": ("threads",),
            "parallel": ("parallel",),
            "host": ("host",),
            "port": ("port",),
            "api_key": ("api_key",),
            "no_mmap": ("no_mmap",),
            "extra": ("extra_args",),
        }
        for key in given:
            for name in fields[key]:
                changes[name] = getattr(wanted, name)
        planner.update(settings=planner.settings.with_(**changes))
    exposed = exposure_warning(planner.settings.host, planner.settings.api_key)
    if exposed:
        notes.append(exposed)
    if args.gpu or args.rpc or args.ram or args.rig:
        planner.update(rig=_rig(args))
    for rule in args.pin:
        plan = apply_pin(layout, plan, rule).after
    engine = profile.engine if profile.engine not in ("", "llama-server") else ""
    return planner, plan, notes, engine


def _require_local_model(args: argparse.Namespace) -> None:
    """Refuse a remote model (launch needs the file) and ``--gguf`` without a profile."""
    from moe_studio.core.remote.urls import is_remote

    if getattr(args, "gguf", None):
        raise EngineError("--gguf goes with a profile: moe-studio launch PROFILE.json --gguf PATH.")
    if is_remote(args.model):
        from moe_studio.core.remote.quants import download_hint

        command, path = download_hint(args.model)
        raise EngineError(
            f"launch needs the model on disk, and {args.model} is remote. Download it "
            f"({command}) and launch {path}; or save the plan now (moe-studio plan {args.model} "
            "--save PROFILE.json) and bind it to the download later with --gguf."
        )


def prepare(
    args: argparse.Namespace,
    *,
    defaults: dict[str, object] | None = None,
    store: EngineStore | None = None,
) -> tuple[EngineInfo, Planner, Plan, list[str]]:
    """The engine, planner, plan and notes of a ``launch`` command line.

    Raises:
        EngineError, ProfileError, PlanError…: what cannot be used, as a sentence.
    """
    defaults = defaults or {}
    profile_engine = ""
    planner: Planner | None = None
    if not _is_profile(args.model):
        _require_local_model(args)
    if _is_profile(args.model):
        planner, plan, notes, profile_engine = _from_profile(args, defaults)
        flavour: Flavour | None = args.dialect or planner.settings.dialect
    else:
        flavour = args.dialect
    engine = resolve_engine(args.engine or profile_engine or None, store=store, flavour=flavour)
    dialect = args.dialect or (engine.flavour if engine.flavour != "unknown" else "ik")
    if engine.flavour not in ("unknown", dialect):
        raise EngineError(
            f"--dialect {dialect} does not match {engine.path}, which is {engine.label}; "
            "leave --dialect out to follow the engine."
        )
    build = getattr(args, "engine_build", None)
    if build is None and engine.flavour in ("ik", "mainline"):
        build = args.engine_build = engine.build  # plan for the build that will run
    if planner is None:
        from moe_studio.core.cli.plan import make_plan

        args.dialect = dialect
        planner, plan, notes = make_plan(args)
    elif planner.settings.dialect != dialect:
        notes.append(
            f"The profile was planned for {planner.settings.dialect}; the command is written for "
            f"{dialect}, the engine's dialect."
        )
        planner.update(settings=planner.settings.with_(dialect=dialect))
    if planner.settings.engine_build != build:
        planner.update(settings=planner.settings.with_(engine_build=build))
    return engine, planner, plan, notes


# --- running ----------------------------------------------------------------------------------


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the server cleanly, like Ctrl-C (main thread only)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Watcher:
    """The CLI's loop over one server run: output → parser → tracker, polls, printing."""

    def __init__(
        self,
        run: ServerRun,
        spec: LaunchSpec,
        planner: Planner,
        plan: Plan,
        engine: EngineInfo,
        args: argparse.Namespace,
        out: TextIO,
    ) -> None:
        layout = planner.layout
        self.run, self.spec, self.planner, self.plan = run, spec, planner, plan
        self.engine, self.args, self.out = engine, args, out
        self.parser = EngineLogParser(
            spec.dialect if spec.dialect != "unknown" else None,
            expected_dots=expected_load_dots(t.nbytes for t in layout.tensors if t.loaded),
        )
        self.tracker = HealthTracker()
        self.estimate = planner.estimate(plan, learned=False)[1]  # the model's own figures
        self.shown_label = ""
        self.shown_table = False
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def pump(self, timeout: float) -> None:
        for _, text in self.run.output(timeout):
            if self.args.show_log:
                sys.stderr.write(text)
                sys.stderr.flush()
            for event in self.parser.feed_text(text):
                self.tracker.on_event(event)
        self._show_progress()

    def _show_progress(self) -> None:
        status = self.tracker.status
        label = status.label
        if status.phase is Phase.LOADING and status.progress is not None:
            label = f"loading ({int(status.progress * 10) * 10} %)"  # a line per 10 %
        if label != self.shown_label and status.phase is Phase.LOADING:
            self.shown_label = label
            self._say(f"{label}: {status.detail}")
        report = self.parser.report()
        if not self.shown_table and report.buffers(BufferKind.COMPUTE):
            self.shown_table = True
            print_compare(compare(self.estimate, report), self.out)

    def until_ready(self) -> bool:
        """Loop until ready (True) or failed (False)."""
        deadline = self.args.ready_timeout
        last_poll = 0.0
        while True:
            self.pump(0.1)
            phase = self.tracker.status.phase
            if phase is Phase.READY:
                return True
            info = self.run.poll()
            if info is not None:
                self.pump(0)
                self.tracker.on_exit(info)
                return False
            if phase is Phase.FAILED:
                # The log said why; give the engine a moment to exit by itself.
                info = self.run.wait(5.0) or self.run.stop()
                self.pump(0)
                self.tracker.on_exit(info)
                return False
            now = time.monotonic()
            if now - last_poll >= POLL_INTERVAL:
                last_poll = now
                self.tracker.on_poll(
                    poll_health(
                        connect_host(self.spec.host), self.spec.port, api_key=self.spec.api_key
                    )
                )
            if deadline is not None and now - self.t0 > deadline:
                self.tracker.on_stop_requested()
                self.tracker.on_exit(self.run.stop())
                raise EngineError(
                    f"llama-server was not ready after {deadline:g} s "
                    f"({self.tracker.status.label}); it was stopped."
                )

    def report_failure(self) -> None:
        status = self.tracker.status
        report = self.parser.report()
        failure = report.failure or status.failure
        if failure is not None:
            p = self.planner
            diagnosis = diagnose(failure, p.layout, self.plan, p.rig, p.settings, report=report)
            print_diagnosis(diagnosis, self.out)
        else:
            self._say(f"\nfailed: {status.detail}")
        tail = self.run.history.tail(12)
        if tail:
            self.out.write("last lines of the engine's output:\n")
            for line in tail:
                self.out.write(f"  | {line}\n")

    def calibrate(self) -> None:
        from moe_studio.core.engine.calibration import append_record, make_record

        report = self.parser.report()
        rows = compare(self.estimate, report)
        if not rows:
            return
        record = make_record(
            self.planner.layout, self.planner.settings, rows, engine=self.engine.version
        )
        try:
            append_record(record)
        except EngineError as exc:
            self._say(f"note: {exc}")


def _cmd_launch(args: argparse.Namespace) -> int:
    out = sys.stdout
    engine, planner, plan, notes = prepare(args, defaults=args.plan_defaults, store=EngineStore())
    from moe_studio.core.cli.plan import learn
    from moe_studio.core.engine.discovery import build_types_note, estimate_build_note

    learn(planner, engine)
    type_ids = (t.type_id for t in planner.layout.tensors if t.loaded)
    for build_note in (build_types_note(engine, type_ids), estimate_build_note(engine)):
        if build_note:
            notes.append(build_note)
    result = planner.result(plan, executable=engine.path)
    spec = build_launch_spec(result, engine, dialect=planner.settings.dialect)
    out.write(f"{engine.label} at {engine.path}\n{spec.shell()}\n")
    command_notes = list(result.command.notes) if result.command else []
    for note in [*notes, *command_notes, *spec.notes]:
        out.write(f"note: {note}\n")
    if args.probe:
        from moe_studio.core.cli.report import print_probe, probe
        from moe_studio.core.engine.probe import ProbeOutcome

        out.flush()
        checked = probe(
            planner, plan, result, engine, timeout=args.probe_timeout,
            record=not args.no_calibration,
        )  # fmt: skip
        print_probe(checked, out)
        if checked.outcome is ProbeOutcome.OUT_OF_MEMORY:
            out.write("not started: the engine's dry run ran out of memory.\n")
            return EXIT_FAILED
    if args.dry_run:
        return 0
    ready = preflight(spec.full_argv)
    for warning in ready.warnings:
        out.write(f"warning: {warning}\n")
    if not ready.ok:
        raise EngineError(f"Not launched: {ready.sentence()}")
    out.flush()
    with _sigterm_as_interrupt():
        run = ServerRun(spec)
        run.start()
        watcher = _Watcher(run, spec, planner, plan, engine, args, out)
        try:
            if not watcher.until_ready():
                watcher.report_failure()
                return EXIT_FAILED
            elapsed = time.monotonic() - watcher.t0
            out.write(
                f"ready: http://{connect_host(spec.host)}:{spec.port} "
                f"after {elapsed:.1f} s (pid {run.pid})\n"
            )
            watcher.pump(0.2)  # buffers printed just before "listening"
            if not watcher.shown_table:
                print_compare(compare(watcher.estimate, watcher.parser.report()), out)
                watcher.shown_table = True
            if not args.no_calibration:
                watcher.calibrate()
            if args.test_prompt:
                try:
                    answer = send_test_prompt(
                        connect_host(spec.host), spec.port, args.test_prompt, api_key=spec.api_key
                    )
                    out.write(f"test prompt: {answer.summary}\n")
                except EngineError as exc:
                    out.write(f"test prompt failed: {exc}\n")
            if args.check:
                watcher.tracker.on_stop_requested()
                info = run.stop()
                out.write(f"{info.message}\n")
                return 0 if info.normal else EXIT_FAILED
            out.write("running; press Ctrl-C to stop\n")
            out.flush()
            while True:
                watcher.pump(0.5)
                ended = run.poll()
                if ended is not None:
                    watcher.pump(0)
                    watcher.tracker.on_exit(ended)
                    watcher.report_failure()
                    return EXIT_FAILED
        except KeyboardInterrupt:
            watcher.tracker.on_stop_requested()
            out.write("\nstopping…\n")
            out.flush()
            info = run.stop()
            out.write(f"{info.message}\n")
            return 0 if info.normal else EXIT_FAILED
        finally:
            if run.running:
                run.stop()
