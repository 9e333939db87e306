"""One ``llama-server`` run over ``QProcess``, driven by signals (qutebrowser ``GUIProcess``).

The executable is resolved first for a precise error; a taken port is refused naming its holder;
``FailedToStart`` is reported on its own (no ``finished`` follows). Output (stdout and stderr
merged) goes into a bounded :class:`moe_studio.core.engine.launch.LogHistory` that a log view can
replay when attached later, and through :class:`moe_studio.core.engine.log_parser.EngineLogParser`
into a :class:`moe_studio.core.engine.health.HealthTracker`; ``/health`` is polled off the GUI
thread until the server is ready, and no longer after (ik logs every poll).

Stop is SIGTERM to the server's process group, then SIGKILL after ``STOP_TIMEOUT_MS``. No orphan
servers: the server runs in its own session and, on Linux, under ``setpriv --pdeathsig TERM`` so
the kernel stops it when MoE Studio dies without cleaning up (``kill -9``). On Windows the same
guarantee needs a job object with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`` (not implemented: MoE
Studio targets Linux servers).
"""

from __future__ import annotations

import logging
import signal
import sys

from PySide6.QtCore import (
    QObject,
    QProcess,
    QProcessEnvironment,
    QTimer,
    Signal,
)

from moe_studio.core.engine.health import HealthStatus, HealthTracker, Phase, poll_health
from moe_studio.core.engine.launch import (
    LaunchSpec,
    LogHistory,
    check_port,
    classify_exit,
    connect_host,
    pdeathsig_prefix,
    resolve_program,
    signal_group,
)
from moe_studio.core.engine.log_events import Event, LoadReport
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.engine.preflight import preflight
from moe_studio.core.errors import EngineError
from moe_studio.gui.tasks import Background

log = logging.getLogger(__name__)
STOP_TIMEOUT_MS = 5000
POLL_MS = 500


class ServerProcess(QObject):
    """Signals:
    started(pid), lines_received(list[str]), event_received(Event), status_changed(HealthStatus),
    start_failed(str), finished(ExitInfo).
    """

    started = Signal(int)
    lines_received = Signal(list)
    event_received = Signal(object)
    status_changed = Signal(object)
    start_failed = Signal(str)
    finished = Signal(object)

    def __init__(self, parent: QObject | None = None, *, max_lines: int = 20000) -> None:
        super().__init__(parent)
        self.history = LogHistory(max_lines)
        self.parser = EngineLogParser()
        self.tracker = HealthTracker()
        self.spec: LaunchSpec | None = None
        self.background = Background(self)
        self._process: QProcess | None = None
        self._stop_requested = False
        self._killed = False
        self._polling = False
        self._poll_timer = QTimer(self)
        self._poll_timer.setInterval(POLL_MS)
        self._poll_timer.timeout.connect(self._on_poll_timer_timeout)
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._on_kill_timer_timeout)
        self.notes: list[str] = []

    # --- state ---------------------------------------------------------------------------------

    @property
    def status(self) -> HealthStatus:
        return self.tracker.status

    @property
    def running(self) -> bool:
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    @property
    def pid(self) -> int | None:
        if self._process is None:
            return None
        pid = int(self._process.processId())
        return pid or None

    def report(self) -> LoadReport:
        return self.parser.report()

    # --- start / stop --------------------------------------------------------------------------

    def start(self, spec: LaunchSpec) -> None:
        """Start the server; problems that can be known before starting raise EngineError."""
        if self.running:
            raise EngineError("A server is already running; stop it first.")
        resolved = resolve_program(spec.full_argv[0])
        check_port(connect_host(spec.host), spec.port)
        # On the GUI thread, but short: the RPC connects run at once with a 0.5 s timeout.
        checked = preflight(spec.full_argv)
        if not checked.ok:
            raise EngineError(checked.sentence())
        self.spec = spec
        self.history = LogHistory(self.history.max_lines)
        self.parser = EngineLogParser(None if spec.dialect == "unknown" else spec.dialect)
        self.tracker = HealthTracker()
        self._stop_requested = False
        self._killed = False
        self._poll_timer.setInterval(POLL_MS)
        self.notes = list(checked.warnings)
        prefix = pdeathsig_prefix()
        if not prefix and sys.platform.startswith("linux"):
            self.notes.append(
                "setpriv is not installed: a server started now may outlive MoE Studio if MoE "
                "Studio is killed (it is still stopped on a normal exit)."
            )
        argv = [*prefix, resolved, *spec.full_argv[1:]]
        process = QProcess(self)
        process.setProgram(argv[0])
        process.setArguments(argv[1:])
        env = QProcessEnvironment()
        for key, value in spec.environment().items():
            env.insert(key, value)
        process.setProcessEnvironment(env)
        if spec.cwd:
            process.setWorkingDirectory(spec.cwd)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        # Its own session: one signal to the group reaches the server and anything it spawned.
        process.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
        process.readyReadStandardOutput.connect(self._on_process_ready_read)
        process.started.connect(self._on_process_started)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._process = process
        self._set_status_changed()
        process.start()

    def stop(self) -> None:
        """Terminate (SIGTERM to the group), then kill after ``STOP_TIMEOUT_MS``."""
        if not self.running or self._process is None:
            return
        self._stop_requested = True
        if self.tracker.on_stop_requested():
            self._set_status_changed()
        self._signal_group(signal.SIGTERM)
        self._kill_timer.start(STOP_TIMEOUT_MS)

    def kill(self) -> None:
        if self.running:
            self._stop_requested = True
            self._killed = True
            self._signal_group(signal.SIGKILL)

    def wait_stopped(self, msecs: int = 10000) -> bool:
        """Block until the process ended (tests and application shutdown only)."""
        if self._process is None:
            return True
        return (
            self._process.state() == QProcess.ProcessState.NotRunning
            or self._process.waitForFinished(msecs)
        )

    def _signal_group(self, sig: int) -> None:
        if self.pid is not None:
            signal_group(self.pid, sig)

    # --- process signals -----------------------------------------------------------------------

    def _on_process_started(self) -> None:
        if self._stop_requested:  # stopped while it was starting: it had no pid to signal then
            self._signal_group(signal.SIGTERM)
        self._poll_timer.start()
        self.started.emit(self.pid or 0)

    def _on_process_ready_read(self) -> None:
        if self._process is None:
            return
        # Decoded once, incrementally: a UTF-8 character split across reads stays whole.
        text = self.history.decode(bytes(self._process.readAllStandardOutput().data()))
        lines = self.history.feed_text(text)
        self._handle_events(self.parser.feed_text(text))
        if lines:
            self.lines_received.emit(lines)

    def _handle_events(self, events: list[Event]) -> None:
        changed = False
        for event in events:
            self.event_received.emit(event)
            changed |= self.tracker.on_event(event)
        if changed:
            self._set_status_changed()

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self._process is not None:
            message = (
                f"{self._process.program()} could not be started: {self._process.errorString()}."
            )
            self._poll_timer.stop()
            self._process.deleteLater()
            self._process = None
            self.start_failed.emit(message)

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._poll_timer.stop()
        self._kill_timer.stop()
        lines = self.history.finish()
        self._handle_events(self.parser.finish())
        if lines:
            self.lines_received.emit(lines)
        # Qt reports the signal number as the exit code of a crashed process.
        returncode = -exit_code if exit_status == QProcess.ExitStatus.CrashExit else exit_code
        report = self.parser.report()
        info = classify_exit(
            returncode,
            stop_requested=self._stop_requested,
            killed=self._killed,
            uses_rpc=bool(self.spec and self.spec.uses_rpc),
            heap_abort_seen=any(f.benign_after_stop for f in report.failures),
        )
        if self.tracker.on_exit(info):
            self._set_status_changed()
        # This QProcess is done; a new one is made per launch.
        if self._process is not None:
            self._process.deleteLater()
            self._process = None
        self.finished.emit(info)

    def _on_kill_timer_timeout(self) -> None:
        if self.running:
            log.warning("the server ignored SIGTERM for %d ms; killing it", STOP_TIMEOUT_MS)
            self._killed = True
            self._signal_group(signal.SIGKILL)

    # --- health --------------------------------------------------------------------------------

    @property
    def polling(self) -> bool:
        """Whether ``/health`` is still being asked (only until the server is ready)."""
        return self._poll_timer.isActive()

    def _on_poll_timer_timeout(self) -> None:
        if self._polling or self.spec is None or self.tracker.status.phase.final:
            return
        if self.tracker.status.phase is Phase.READY:
            self._poll_timer.stop()
            return
        self._polling = True
        host, port, key = connect_host(self.spec.host), self.spec.port, self.spec.api_key
        self.background.call(
            lambda: poll_health(host, port, api_key=key), self._on_poll_done, self._on_poll_error
        )

    def _on_poll_done(self, outcome: object) -> None:
        self._polling = False
        if self.tracker.on_poll(outcome):  # type: ignore[arg-type]
            self._set_status_changed()

    def _on_poll_error(self, error: BaseException) -> None:
        self._polling = False
        log.debug("health poll failed: %s", error)

    def _set_status_changed(self) -> None:
        if self.tracker.status.phase in (Phase.READY, Phase.STOPPING):
            # Once ready, polls would only make ik log three lines every time ("slot data",
            # "all slots are idle", the request); the process's exit says when it ends.
            self._poll_timer.stop()
        self.status_changed.emit(self.tracker.status)
