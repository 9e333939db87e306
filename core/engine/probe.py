"""Check a plan with the engine: run its command with ik's ``--dry-run`` and read the buffers.

ik_llama.cpp's ``-dr/--dry-run`` skips reading tensor data but still allocates every buffer and
prints the usual ``… buffer size = X MiB`` lines (engines.md §1.1, ``src/llama.cpp``), so the
real weights, KV cache and compute buffer of every device are known within seconds instead of a
multi-minute load. :func:`run_probe` starts the planned command with ``--dry-run`` on a free port,
feeds the output to :class:`~moe_studio.core.engine.log_parser.EngineLogParser`, and stops the
process as soon as the compute buffers are printed (the ``graph nodes`` line follows them), or
when it fails, exits, or takes longer than the timeout. Every ending is a :class:`ProbeResult`
with a sentence; a probe that runs out of memory is an answer too: the engine's allocation, with
the diagnosis of :mod:`moe_studio.core.engine.diagnosis`.

Mainline llama.cpp has no ``--dry-run`` for ``llama-server``. Its ``llama-fit-params`` tool does a
no-allocation load and prints ``common_memory_breakdown_print`` rows (model, context and compute
per device, in whole MiB), but it takes the common options only (no ``--host``/``--port``/``-np``)
and there is no mainline build here to test a driver against; the probe says that it needs
ik_llama.cpp instead.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from moe_studio.core.engine.diagnosis import CompareRow, Diagnosis, compare, diagnose
from moe_studio.core.engine.discovery import EngineInfo
from moe_studio.core.engine.launch import LaunchSpec, ServerRun
from moe_studio.core.engine.log_events import BufferKind
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.errors import EngineError
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.units import format_bytes

DEFAULT_TIMEOUT = 120.0
DRY_RUN_FLAG = "--dry-run"
# ik prints "graph nodes"/"graph splits" right after the last compute buffer; mainline
# "sched_reserve: graph: nodes = …". Either means every compute buffer line is out.
_BUFFERS_DONE = re.compile(r"graph (?:nodes|splits)\s*=|graph: nodes =")


class ProbeOutcome(StrEnum):
    MEASURED = "measured"  # every buffer printed
    OUT_OF_MEMORY = "out_of_memory"  # an allocation failed: what the engine asked for
    FAILED = "failed"  # the engine refused the command or crashed before its buffers
    TIMED_OUT = "timed_out"
    UNSUPPORTED = "unsupported"  # this engine cannot do a dry run


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a dry run said.

    Attributes:
        outcome: How it ended.
        sentence: One sentence for the user (what was measured, or why not).
        rows: Estimate beside the engine's figures per device (empty without figures).
        diagnosis: For an out-of-memory probe: the allocation and the fixes.
        engine: The engine's label.
        seconds: How long the probe ran.
        tail: The last lines of the engine's output (for a failure).
    """

    outcome: ProbeOutcome
    sentence: str
    rows: tuple[CompareRow, ...] = ()
    diagnosis: Diagnosis | None = None
    engine: str = ""
    seconds: float = 0.0
    tail: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.outcome is ProbeOutcome.MEASURED

    def as_json(self) -> dict[str, object]:
        """The ``measured`` section of ``plan --json``."""
        d = self.diagnosis
        return {
            "outcome": str(self.outcome),
            "sentence": self.sentence,
            "engine": self.engine,
            "seconds": round(self.seconds, 2),
            "devices": [
                {
                    "name": r.device,
                    "weights": r.actual_weights,
                    "kv": r.actual_kv,
                    "compute": r.actual_compute,
                    "estimate": {
                        "weights": r.predicted_weights,
                        "kv": r.predicted_kv,
                        "compute": r.predicted_compute,
                    },
                }
                for r in self.rows
            ],
            "out_of_memory": {
                "device": d.device,
                "requested": d.requested,
                "missing": d.missing,
                "fixes": [f.label for f in d.fixes],
            }
            if d is not None and d.out_of_memory
            else None,
        }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def unsupported_reason(engine: EngineInfo, dialect: str) -> str:
    """Why ``engine`` cannot run the probe ("" when it can)."""
    if dialect == "mainline" or engine.flavour == "mainline":
        return (
            "The check with the engine needs ik_llama.cpp: mainline llama-server has no "
            "--dry-run (its llama-fit-params tool measures with a no-allocation load, which "
            "MoE Studio does not drive yet), so the figures shown are the estimate."
        )
    if engine.has_option(DRY_RUN_FLAG) is False:
        return (
            f"{engine.label} has no {DRY_RUN_FLAG} (older ik_llama.cpp builds lack it); update the "
            "engine to check the plan with it. The figures shown are the estimate."
        )
    return ""


def probe_spec(spec: LaunchSpec, port: int) -> LaunchSpec:
    """``spec`` with ``--dry-run`` added and ``--port`` moved to ``port`` (a running server on
    the planned port does not stop the probe; ik binds the port before it loads)."""
    argv = list(spec.argv)
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            argv[i + 1] = str(port)
    if "--port" not in argv:
        argv += ["--port", str(port)]
    if DRY_RUN_FLAG not in argv and "-dr" not in argv:
        argv.append(DRY_RUN_FLAG)
    return replace(spec, argv=tuple(argv), port=port)


def _tail(run: ServerRun, n: int = 12) -> tuple[str, ...]:
    return tuple(run.history.tail(n))


def run_probe(
    spec: LaunchSpec,
    engine: EngineInfo,
    planner: Planner,
    plan: Plan,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[float, str], None] | None = None,
) -> ProbeResult:
    """Dry-run ``spec`` (the planned launch) and compare the engine's buffers with the estimate.

    Never raises for an engine that fails; the result says what happened. Blocking: run it in a
    worker (the GUI's task runner) or the CLI's main thread.
    """
    label = engine.label
    reason = unsupported_reason(engine, spec.dialect)
    if reason:
        return ProbeResult(ProbeOutcome.UNSUPPORTED, reason, engine=label)
    probe = probe_spec(spec, free_port())
    layout = planner.layout
    _, estimate = planner.estimate(plan, learned=False)  # the model's own, as records keep
    parser = EngineLogParser(spec.dialect if spec.dialect != "unknown" else None)
    run = ServerRun(probe, check_port_first=False)
    t0 = time.monotonic()
    try:
        run.start()
    except EngineError as exc:  # the executable is gone or cannot be run
        return ProbeResult(
            ProbeOutcome.FAILED,
            f"The engine's dry run could not start: {exc} The figures shown are the estimate.",
            engine=label,
        )
    window = ""  # the output since the first compute buffer line, for the end marker
    done = False
    outcome: ProbeOutcome | None = None
    try:
        while True:
            for _, text in run.output(0.1):
                parser.feed_text(text)
                if parser.report().buffers(BufferKind.COMPUTE):
                    window = (window + text)[-4096:]
                    done = done or bool(_BUFFERS_DONE.search(window))
            report = parser.report()
            if progress is not None:
                progress(min(0.95, (time.monotonic() - t0) / timeout), "engine dry run")
            if done or report.model_loaded or report.listening is not None:
                break
            if report.failed:
                run.wait(5.0)  # the log said why; let it exit by itself
                break
            if run.poll() is not None:
                break
            if cancelled():
                outcome = ProbeOutcome.FAILED
                break
            if time.monotonic() - t0 > timeout:
                outcome = ProbeOutcome.TIMED_OUT
                break
    finally:
        info = run.poll() or run.stop()
        for _, text in run.output(0):
            parser.feed_text(text)
        parser.finish()
    seconds = time.monotonic() - t0
    report = parser.report()
    tail = _tail(run)
    if outcome is ProbeOutcome.TIMED_OUT:
        return ProbeResult(
            outcome,
            f"The engine's dry run printed no compute buffers within {timeout:g} s and was "
            "stopped; the figures shown are the estimate.",
            engine=label,
            seconds=seconds,
            tail=tail,
        )
    if outcome is ProbeOutcome.FAILED:
        return ProbeResult(outcome, "The check was cancelled.", engine=label, seconds=seconds)
    failure = report.failure if report.failed else None
    if failure is not None:
        diagnosis = diagnose(failure, layout, plan, planner.rig, planner.settings, report=report)
        rows = tuple(compare(estimate, report))
        if diagnosis.out_of_memory:
            return ProbeResult(
                ProbeOutcome.OUT_OF_MEMORY,
                f"The engine's dry run: {diagnosis.sentence}",
                rows,
                diagnosis,
                label,
                seconds,
                tail,
            )
        return ProbeResult(
            ProbeOutcome.FAILED,
            f"The engine's dry run failed: {diagnosis.sentence} The figures shown are the "
            "estimate.",
            rows,
            diagnosis,
            label,
            seconds,
            tail,
        )
    if not report.buffers(BufferKind.COMPUTE):
        return ProbeResult(
            ProbeOutcome.FAILED,
            f"The engine's dry run ended before it printed its compute buffers "
            f"({info.message.rstrip('.')}); "
            "ik's --dry-run crashes on some models (DeepSeek MLA in some builds), so the figures "
            "shown are the estimate.",
            engine=label,
            seconds=seconds,
            tail=tail,
        )
    rows = tuple(compare(estimate, report))
    sentence = f"Measured by the engine's dry run ({label}) in {seconds:.1f} s."
    unprinted = max((d.unprinted_compute for d in estimate.devices), default=0)
    if unprinted:
        sentence += (
            f" The compute figures leave out the inputs -sm graph copies between GPUs (up to "
            f"{format_bytes(unprinted)} per GPU), which ik allocates only once it runs; the "
            "bars include them."
        )
    return ProbeResult(
        ProbeOutcome.MEASURED,
        sentence,
        rows,
        engine=label,
        seconds=seconds,
    )


def measured_report(rows: Sequence[CompareRow]) -> dict[str, dict[str, int]]:
    """Device → ``{"weights", "kv", "compute"}`` bytes the engine printed (figures it gave)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        parts = {"weights": r.actual_weights, "kv": r.actual_kv, "compute": r.actual_compute}
        out[r.device] = {k: v for k, v in parts.items() if v is not None}
    return out
