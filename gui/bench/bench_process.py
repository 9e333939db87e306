"""One benchmark run over ``QProcess``: started from a
:class:`moe_studio.core.engine.bench_run.BenchSpec`, read without blocking, parsed by core,
cancellable.

The program and its arguments go to ``QProcess`` as a list (never a shell), with the spec's
variables added to our environment. Output is read as it arrives: sweep-bench's table is on stderr
among the loader's lines, so its channels are merged; llama-bench's results must be read from
stdout alone, so there both channels are read and stdout is also kept apart
(:attr:`BenchSpec.merge_stderr`). The lines go into a bounded
:class:`moe_studio.core.engine.launch.LogHistory`; :meth:`BenchProcess.points` parses what arrived
so far (a live curve), and the end is parsed by
:func:`moe_studio.core.engine.bench_run.bench_outcome`, the same function the CLI uses.

Cancel is SIGTERM to the tool's process group, then SIGKILL after :attr:`kill_timeout_ms`. The
tool runs in its own session and, on Linux, under ``setpriv --pdeathsig TERM`` so that it does
not keep a GPU busy after MoE Studio was killed.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from moe_studio.core.engine.bench_results import (
    BenchFormatError,
    parse_llama_bench,
    parse_sweep_bench,
)
from moe_studio.core.engine.bench_run import (
    BenchOutcome,
    BenchSpec,
    BenchTool,
    CurvePoint,
    bench_outcome,
    curve,
)
from moe_studio.core.engine.launch import (
    ExitInfo,
    ExitKind,
    LogHistory,
    classify_exit,
    pdeathsig_prefix,
    resolve_program,
    signal_group,
)
from moe_studio.core.engine.preflight import preflight
from moe_studio.core.errors import EngineError

log = logging.getLogger(__name__)
KILL_TIMEOUT_MS = 5000


class BenchProcess(QObject):
    """A benchmark tool running in the background.

    Signals:
        lines_received(list[str]): output lines, as they complete.
        finished(BenchOutcome): the run ended (also after a cancel, or when it could not start).
    """

    lines_received = Signal(list)
    finished = Signal(object)

    def __init__(self, parent: QObject | None = None, *, max_lines: int = 20_000) -> None:
        super().__init__(parent)
        self.kill_timeout_ms = KILL_TIMEOUT_MS
        self.spec: BenchSpec | None = None
        self.notes: list[str] = []  # what the pre-launch checks warned of (GPUs in use)
        self.history = LogHistory(max_lines)
        self._stdout = LogHistory(max_lines)  # llama-bench's results (separate channels only)
        self._err = LogHistory(max_lines)
        self._process: QProcess | None = None
        self._cancelled = False
        self._killed = False
        self._t0 = 0.0
        self._kill_timer = QTimer(self)
        self._kill_timer.setObjectName("bench_kill_timer")
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._on_kill_timer_timeout)

    # --- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    @property
    def pid(self) -> int | None:
        if self._process is None:
            return None
        return int(self._process.processId()) or None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    def points(self) -> tuple[CurvePoint, ...]:
        """S_PP and S_TG against N_KV measured so far (empty until the first row)."""
        if self.spec is None:
            return ()
        try:
            if self.spec.tool is BenchTool.SWEEP:
                return curve(parse_sweep_bench(self.history.lines()))
            return curve(parse_llama_bench(self._stdout.lines()))
        except BenchFormatError:
            return ()  # nothing yet, or ik's json array not closed yet

    # --- start / cancel ------------------------------------------------------------------------

    def start(self, spec: BenchSpec) -> None:
        """Start ``spec``; what can be known before starting raises :class:`EngineError`."""
        if self.running:
            raise EngineError("A benchmark is already running; cancel it first.")
        program = resolve_program(spec.full_argv[0])
        checked = preflight(spec.full_argv)
        if not checked.ok:
            raise EngineError(checked.sentence())
        self.notes = list(checked.warnings)
        self.spec = spec
        self.history = LogHistory(self.history.max_lines)
        self._stdout = LogHistory(self._stdout.max_lines)
        self._err = LogHistory(self._err.max_lines)
        self._cancelled = False
        self._killed = False
        argv = [*pdeathsig_prefix(), program, *spec.full_argv[1:]]
        process = QProcess(self)
        process.setProgram(argv[0])
        process.setArguments(argv[1:])
        env = QProcessEnvironment.systemEnvironment()
        for key, value in spec.env.items():
            env.insert(key, value)
        process.setProcessEnvironment(env)
        if spec.cwd:
            process.setWorkingDirectory(spec.cwd)
        process.setStandardInputFile(QProcess.nullDevice())
        if spec.merge_stderr:
            process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        else:
            process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
            process.readyReadStandardError.connect(self._on_process_ready_read_standard_error)
        # Its own session: one signal to the group reaches the tool and anything it spawned.
        process.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
        process.readyReadStandardOutput.connect(self._on_process_ready_read_standard_output)
        process.started.connect(self._on_process_started)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error_occurred)
        self._process = process
        self._t0 = time.monotonic()
        process.start()

    def cancel(self) -> None:
        """SIGTERM now, SIGKILL after :attr:`kill_timeout_ms`; ``finished`` follows."""
        if not self.running:
            return
        self._cancelled = True
        if self.pid is not None:  # else _on_process_started sends it
            self._signal_group(signal.SIGTERM)
        self._kill_timer.start(self.kill_timeout_ms)

    def shutdown(self, msecs: int = 3000) -> None:
        """Kill a running tool and wait for it, without reporting (closing the window, tests)."""
        process = self._process
        if process is None or process.state() == QProcess.ProcessState.NotRunning:
            return
        self._kill_timer.stop()
        self.blockSignals(True)
        try:
            self._cancelled = self._killed = True
            self._signal_group(signal.SIGKILL)
            if not process.waitForFinished(msecs):
                log.warning("the benchmark did not end %d ms after SIGKILL", msecs)
        finally:
            self.blockSignals(False)

    def _signal_group(self, sig: int) -> None:
        if self.pid is not None:
            signal_group(self.pid, sig)

    # --- process signals -----------------------------------------------------------------------

    def _on_process_started(self) -> None:
        if self._cancelled:  # cancelled while it was starting
            self._signal_group(signal.SIGTERM)

    def _on_process_ready_read_standard_output(self) -> None:
        if self._process is None or self.spec is None:
            return
        data = bytes(self._process.readAllStandardOutput().data())
        if self.spec.merge_stderr:
            self._add_lines(self.history.feed_bytes(data))
        else:
            self._add_lines(self._stdout.feed_bytes(data), history=True)

    def _on_process_ready_read_standard_error(self) -> None:
        if self._process is None:
            return
        data = bytes(self._process.readAllStandardError().data())
        self._add_lines(self._err.feed_bytes(data), history=True)

    def _add_lines(self, lines: list[str], *, history: bool = False) -> None:
        """Pass completed lines on; with separate channels each stream completes its own lines,
        which then go into the common history in the order they completed."""
        if not lines:
            return
        if history:
            self.history.feed_text("".join(line + "\n" for line in lines))
        self.lines_received.emit(lines)

    def _on_process_error_occurred(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self._process is None:
            return
        assert self.spec is not None
        message = (
            f"{Path(self.spec.full_argv[0]).name} could not be started: "
            f"{self._process.errorString()}."
        )
        self._process = None
        info = ExitInfo(ExitKind.FAILED, -1, message)
        self.finished.emit(BenchOutcome(self.spec, info, None, (), "", message))

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        spec = self.spec
        assert spec is not None
        if spec.merge_stderr:
            self._add_lines(self.history.finish())
        else:
            self._add_lines(self._stdout.finish(), history=True)
            self._add_lines(self._err.finish(), history=True)
        # Qt reports the signal number as the exit code of a crashed process.
        returncode = -exit_code if exit_status == QProcess.ExitStatus.CrashExit else exit_code
        info = classify_exit(
            returncode,
            stop_requested=self._cancelled,
            killed=self._killed,
            uses_rpc=any(a in ("--rpc", "-rpc") for a in spec.argv),
            name=Path(spec.argv[0]).name,
        )
        outcome = bench_outcome(
            spec,
            info,
            self.history.text(),
            "\n".join(self._stdout.lines()),
            cancelled=self._cancelled,
            seconds=self.elapsed,
        )
        self.finished.emit(outcome)

    def _on_kill_timer_timeout(self) -> None:
        if self.running:
            log.warning("the benchmark ignored SIGTERM for %d ms; killing it", self.kill_timeout_ms)
            self._killed = True
            self._signal_group(signal.SIGKILL)
