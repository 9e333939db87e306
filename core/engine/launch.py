"""Starting, watching and stopping llama-server (and the benchmark tools) as child processes.

Pure parts, which a Qt ``ServerProcess`` over ``QProcess`` reuses as they are:

- :class:`LaunchSpec` / :func:`build_launch_spec`: the argv (never a shell string), the ``numactl``
  prefix the advisor asks for, and the environment added for this process only: the advice's and
  the command's variables, ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (so ``CUDA<n>`` is NVML's GPU ``n``)
  and the engine's own ``LD_LIBRARY_PATH`` when it needs one. Mainline prints its loader and
  buffer lines only from ``-lv 4``, so the *launched* argv gets it; exported commands do not.
- :func:`port_in_use`: who holds the port, to refuse a launch with a useful sentence.
- :class:`LogHistory`: merged output as a bounded list of lines that a log view attached later
  replays (:meth:`LogHistory.since`), with search and save.
- :func:`classify_exit`: a normal exit, a requested stop, a failure or a crash — and ik's heap
  abort at exit after ``--rpc`` (SIGABRT) after a requested stop is a normal stop (engines.md §11).

Blocking parts for the CLI: :class:`ManagedProcess` (``subprocess.Popen``, reader threads) and
:class:`ServerRun`.

No orphan servers. The child runs in its own session (``start_new_session``: the terminal's
Ctrl-C reaches only us, and a stop signals the whole process group), and on Linux it asks the
kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), which covers ``kill -9``
of MoE Studio. The prctl call runs in a ``preexec_fn``. Python warns that ``preexec_fn`` may
deadlock in a multi-threaded parent, because the child runs Python code between ``fork`` and
``exec``. Ours calls two pre-resolved functions (``prctl`` through ctypes and ``getppid``) and
allocates nothing that another thread could have locked: the only other threads here are our
reader threads, which hold no lock while they block in ``read``. A wrapper process (``setpriv
--pdeathsig``, or a Python trampoline) would avoid ``preexec_fn`` but needs a tool that is not
always installed, or a Python interpreter that a PyInstaller bundle does not have. Two limits:
the signal follows the death of the parent *thread* that started the child, so start servers from
a thread that lives as long as the app (the GUI thread, the CLI's main thread); and a server
that ignores SIGTERM survives its parent (a stop by us escalates to SIGKILL).

Windows has neither sessions nor PR_SET_PDEATHSIG: there, the GUI should put the child in a job
object created with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`` (the job handle closes when MoE Studio
dies, and the kernel kills every process in it); this module does not implement that.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType

from moe_studio.core.engine.discovery import EngineInfo, Flavour
from moe_studio.core.errors import EngineError
from moe_studio.core.plan.cmdline import shell_join, unlisted_options
from moe_studio.core.plan.planning import PlanResult
from moe_studio.core.plan.settings import Dialect

log = logging.getLogger(__name__)

DEFAULT_HISTORY_LINES = 20_000
STOP_TIMEOUT = 10.0
_VERBOSITY_FLAGS = ("-lv", "--verbosity", "--log-verbosity", "-v", "--verbose", "--log-verbose")
# glibc's messages when the heap check aborts (ik after --rpc prints the first one at exit).
_HEAP_ABORT = re.compile(
    r"double free or corruption|free\(\): invalid|corrupted (?:size|double-linked)|munmap_chunk"
)


# --- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """How to start one engine process.

    Attributes:
        argv: The engine's own argv; ``argv[0]`` is the binary.
        env: Variables added to the inherited environment, for this process only.
        prefix: A wrapper in front of ``argv`` (``numactl --cpunodebind=0 --membind=0``).
        cwd: The working folder (None: ours).
        host: Where the server listens (from ``--host``).
        port: Its port (from ``--port``).
        api_key: The key clients must send (from ``--api-key``; empty when none).
        dialect: The engine flavour the argv is written for.
        uses_rpc: The argv has ``--rpc``.
        notes: What the builder changed or could not do, as sentences.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    cwd: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    dialect: Flavour = "unknown"
    uses_rpc: bool = False
    notes: tuple[str, ...] = ()

    @property
    def full_argv(self) -> tuple[str, ...]:
        """What is executed: the prefix, then the engine's argv."""
        return (*self.prefix, *self.argv)

    def shell(self) -> str:
        """A POSIX shell rendering, for display and copying."""
        return shell_join(self.full_argv, dict(self.env))

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The complete environment of the process: ``base`` (default ``os.environ``) + ``env``."""
        out = dict(os.environ if base is None else base)
        out.update(self.env)
        return out


def option_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last ``NAME VALUE`` or ``--name=VALUE`` among ``argv``."""
    found: str | None = None
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            found = argv[i + 1]
        else:
            flag, eq, value = arg.partition("=")
            if eq and flag in names:
                found = value
    return found


def server_address(argv: Sequence[str]) -> tuple[str, int]:
    """``(host, port)`` a llama-server argv listens on (defaults 127.0.0.1:8080)."""
    host = option_value(argv, "--host") or "127.0.0.1"
    port_text = option_value(argv, "--port") or "8080"
    try:
        port = int(port_text)
    except ValueError:
        raise EngineError(f"--port {port_text!r} is not a port number.") from None
    return host, port


def connect_host(host: str) -> str:
    """The address to connect to for a server bound to ``host`` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def build_launch_spec(
    result: PlanResult,
    engine: EngineInfo,
    *,
    dialect: Dialect,
    cwd: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> LaunchSpec:
    """The process to start for a plan's command on ``engine``.

    Args:
        result: The planner's result; its command must exist.
        engine: The probed engine; it must be usable and of the plan's dialect.
        dialect: The dialect the command was built for (the planner's settings).
        cwd: Working folder of the process.
        extra_env: More variables for this process (the user's own).
        which: Finds ``numactl`` on PATH.

    Raises:
        EngineError: no command, an unusable engine, an engine of the other dialect, or quant
            types the dialect's engine does not have.
    """
    engine.require_usable()
    command = result.command
    if command is None:
        raise EngineError(
            f"There is no command to run: {result.command_error or 'the plan is incomplete'}"
        )
    if result.engine_problem:
        raise EngineError(f"Not launched: {result.engine_problem}")
    if engine.flavour not in ("unknown", dialect):
        plan_name = "ik_llama.cpp" if dialect == "ik" else "mainline llama.cpp"
        raise EngineError(
            f"The command is written for {plan_name}, but {engine.path} is {engine.label}; "
            f"switch the dialect to {engine.flavour} or choose another engine."
        )
    notes: list[str] = []
    argv = [engine.path, *command.argv[1:]]
    unlisted = unlisted_options(argv, engine.options, dialect)
    if unlisted:
        notes.append(unlisted)
    if dialect == "mainline" and not any(a in _VERBOSITY_FLAGS for a in argv):
        if engine.has_option("-lv") is False:
            notes.append(
                "This llama.cpp has no -lv, so its log shows no buffer sizes to compare with "
                "the estimate."
            )
        else:
            # Mainline prints load_tensors / llama_kv_cache / sched_reserve lines only from
            # verbosity 4; the monitor needs them (launched argv only, never exports).
            argv += ["-lv", "4"]
    prefix: tuple[str, ...] = ()
    advice = result.advice
    if advice is not None and advice.numactl:
        found = which(advice.numactl[0])
        if found:
            prefix = (found, *advice.numactl[1:])
        else:
            notes.append(
                f"numactl is not installed, so the server runs without the binding the advisor "
                f"suggests ({' '.join(advice.numactl)})."
            )
    env: dict[str, str] = {}
    if advice is not None:
        env.update(advice.env)
    env.update(command.env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env.update(engine.env)
    env.update(extra_env or {})
    host, port = server_address(argv)
    return LaunchSpec(
        argv=tuple(argv),
        env=MappingProxyType(env),
        prefix=prefix,
        cwd=cwd,
        host=host,
        port=port,
        api_key=option_value(argv, "--api-key") or "",
        dialect=dialect,
        uses_rpc="--rpc" in argv,
        notes=tuple(notes),
    )


# --- the port -----------------------------------------------------------------------------------


def port_holder(port: int) -> str:
    """Who listens on TCP ``port``: ``"llama-server (pid 4242)"``, or "something" when the
    system does not tell us (another user's process, no permission)."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return "something"
    pids = sorted(
        {
            c.pid
            for c in connections
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
        }
    )
    for pid in pids:
        try:
            name = psutil.Process(pid).name()
        except (psutil.Error, OSError):
            continue
        return f"{name} (pid {pid})"
    return "something"


def port_in_use(host: str, port: int) -> str | None:
    """``None`` when a server could listen on ``host:port``, else who holds it (a short name)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # llama-server sets SO_REUSEADDR too, so a port in TIME_WAIT is not "taken".
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except PermissionError:
            return "the system (a privileged port)"
        except OSError as exc:
            if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                return port_holder(port)
            raise EngineError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
    return None


def check_port(host: str, port: int) -> None:
    """Raise :class:`EngineError` naming the holder when ``host:port`` is taken."""
    holder = port_in_use(host, port)
    if holder is not None:
        raise EngineError(
            f"Port {port} on {host} is already in use by {holder}; stop it or choose another "
            "port (--port)."
        )


# --- output history -------------------------------------------------------------------------------


class LogHistory:
    """The last ``max_lines`` lines of a process's output, numbered from 0 as they arrive.

    Feed raw bytes (:meth:`feed_bytes`, decoded as UTF-8 across chunk boundaries) or text. A view
    attached late calls :meth:`since` with 0 and then with the number it got back. Thread-safe.
    """

    def __init__(self, max_lines: int = DEFAULT_HISTORY_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._total = 0
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()

    @property
    def max_lines(self) -> int:
        return self._lines.maxlen or 0

    @property
    def total(self) -> int:
        """Lines appended so far (including those dropped from the front)."""
        return self._total

    @property
    def dropped(self) -> int:
        return self._total - len(self._lines)

    @property
    def pending(self) -> str:
        """The line being written (the engines print loading dots without a newline)."""
        return self._partial

    def decode(self, data: bytes) -> str:
        """Decode a chunk as UTF-8, keeping a character split across chunks for the next one.
        Feed the result to :meth:`feed_text` (and to anything else that reads the output)."""
        return self._decoder.decode(data)

    def feed_bytes(self, data: bytes) -> list[str]:
        return self.feed_text(self.decode(data))

    def feed_text(self, text: str) -> list[str]:
        """Append output; returns the lines it completed."""
        with self._lock:
            parts = (self._partial + text).split("\n")
            self._partial = parts.pop()
            done = [p.removesuffix("\r") for p in parts]
            self._lines.extend(done)
            self._total += len(done)
            return done

    def finish(self) -> list[str]:
        """End of output: the unfinished line (if any) becomes a line."""
        tail = self._decoder.decode(b"", final=True)
        with self._lock:
            text, self._partial = self._partial + tail, ""
            if not text:
                return []
            self._lines.append(text)
            self._total += 1
            return [text]

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def since(self, seq: int) -> tuple[list[str], int]:
        """Lines numbered ``seq`` and later that are still kept, and the next number to ask for."""
        with self._lock:
            first = self._total - len(self._lines)
            start = max(0, seq - first)
            return list(self._lines)[start:], self._total

    def tail(self, n: int) -> list[str]:
        with self._lock:
            return list(self._lines)[-n:] if n > 0 else []

    def search(
        self, pattern: str, *, regex: bool = False, ignore_case: bool = True
    ) -> list[tuple[int, str]]:
        """``(line number, line)`` of the kept lines containing ``pattern`` (or matching it).

        Raises:
            EngineError: ``pattern`` is not a valid regular expression.
        """
        flags = re.IGNORECASE if ignore_case else 0
        try:
            rx = re.compile(pattern if regex else re.escape(pattern), flags)
        except re.error as exc:
            raise EngineError(f"The filter {pattern!r} is not a valid pattern: {exc}.") from None
        with self._lock:
            first = self._total - len(self._lines)
            return [(first + i, line) for i, line in enumerate(self._lines) if rx.search(line)]

    def text(self) -> str:
        with self._lock:
            body = "\n".join(self._lines)
            return body + ("\n" if self._lines else "") + self._partial

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the kept lines to ``path`` (atomically)."""
        from moe_studio.core.fsutil import atomic_write_text

        atomic_write_text(path, self.text(), backup=False, error=EngineError)


# --- exits ----------------------------------------------------------------------------------------


class ExitKind(StrEnum):
    STOPPED = "stopped"  # we asked it to stop (including a kill after the timeout)
    EXITED = "exited"  # it ended by itself with status 0
    FAILED = "failed"  # it ended by itself with a non-zero status
    CRASHED = "crashed"  # a signal nobody here sent ended it


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a process ended, with one sentence for the user."""

    kind: ExitKind
    returncode: int
    message: str
    signal_name: str = ""
    requested: bool = False
    killed: bool = False

    @property
    def normal(self) -> bool:
        """A requested stop or an exit with status 0: nothing to diagnose."""
        return self.kind in (ExitKind.STOPPED, ExitKind.EXITED)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify_exit(
    returncode: int,
    *,
    stop_requested: bool,
    killed: bool = False,
    uses_rpc: bool = False,
    heap_abort_seen: bool = False,
    name: str = "llama-server",
) -> ExitInfo:
    """How a process ended (``returncode`` as ``Popen`` reports it: ``-N`` for signal N).

    After a requested stop every ending is a stop, except a crash we did not cause: a SIGABRT
    counts as a stop only when the run used ``--rpc`` or the log showed glibc's heap abort (ik
    aborts at exit after ``--rpc``, engines.md §11).
    """
    signum = -returncode if returncode < 0 else 0
    sig = _signal_name(signum) if signum else ""
    if stop_requested:
        if killed:
            return ExitInfo(
                ExitKind.STOPPED,
                returncode,
                f"{name} did not stop after SIGTERM and was killed.",
                sig,
                True,
                True,
            )
        if signum == signal.SIGABRT and (uses_rpc or heap_abort_seen):
            return ExitInfo(
                ExitKind.STOPPED,
                returncode,
                f"{name} stopped (it aborts at exit after --rpc, which is normal for "
                "ik_llama.cpp).",
                sig,
                True,
            )
        if signum in (0, signal.SIGTERM, signal.SIGKILL, signal.SIGINT) or returncode >= 0:
            return ExitInfo(ExitKind.STOPPED, returncode, f"{name} stopped.", sig, True)
    if signum:
        what = signal.strsignal(signum) or sig
        return ExitInfo(
            ExitKind.CRASHED,
            returncode,
            f"{name} crashed: it was ended by {sig} ({what.lower()}).",
            sig,
            stop_requested,
        )
    if returncode == 0:
        return ExitInfo(ExitKind.EXITED, 0, f"{name} exited by itself (status 0).")
    return ExitInfo(ExitKind.FAILED, returncode, f"{name} exited with status {returncode}.")


# --- processes ------------------------------------------------------------------------------------


def resolve_program(program: str) -> str:
    """The executable ``program`` names (a path, or a name on PATH).

    Raises:
        EngineError: it does not exist or is not executable.
    """
    resolved = shutil.which(program) if os.sep not in program else program
    if not resolved or not Path(resolved).is_file():
        raise EngineError(
            f"{program} does not exist; build it, or choose the engine in the Server tab "
            "(or with --engine / MOE_STUDIO_ENGINE)."
        )
    if not os.access(resolved, os.X_OK):
        raise EngineError(f"{resolved} is not executable (chmod +x it, or choose another binary).")
    return resolved


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads (its own session), or to ``pid`` alone when
    there is no such group; a process already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig TERM --`` where util-linux has it (Linux), else ``()``.

    For processes started by Qt (``QProcess`` has no pre-exec hook): ``setpriv`` asks the
    kernel to send SIGTERM to the child when MoE Studio dies, even by SIGKILL, then execs the
    real program under the same pid.
    """
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "TERM", "--") if setpriv else ()


PR_SET_PDEATHSIG = 1


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the child when we die (Linux), or
    None where that does not exist. See the module docstring for why this is safe here."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    getppid, exit_now = os.getppid, os._exit

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if getppid() != parent:  # we died between fork and prctl: nobody will stop the child
            exit_now(1)

    return preexec


Output = tuple[str, str]  # (stream: "out" or "err", text)


class ManagedProcess:
    """One child process with its output read by background threads (blocking API, for the CLI).

    Args:
        argv: What to execute (never through a shell).
        env: The complete environment (None: ours).
        cwd: Working folder.
        merge_stderr: stderr into stdout (the engines split their log over both, engines.md §4.5);
            otherwise both are read, stdout is also kept apart (:attr:`stdout_text`).
        history: Where output lines go (a new :class:`LogHistory` by default).
        name: For messages.
        death_signal: Sent to the child by the kernel when this process dies (Linux).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        merge_stderr: bool = True,
        history: LogHistory | None = None,
        name: str = "",
        uses_rpc: bool = False,
        death_signal: int = signal.SIGTERM,
    ) -> None:
        self.argv = tuple(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.merge_stderr = merge_stderr
        self.history = history if history is not None else LogHistory()
        self.name = name or Path(self.argv[0]).name
        self.uses_rpc = uses_rpc
        self.death_signal = death_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[Output | None] = queue.Queue()
        # Output collected when the process ended (_drain), not yet handed out by output().
        self._pending: list[Output] = []
        self._open_streams = 0
        self._stdout: list[str] = []
        self._stop_requested = False
        self._killed = False
        self._exit: ExitInfo | None = None
        self.started_at: float | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process.

        Raises:
            EngineError: it cannot be executed (missing, not executable, bad format).
        """
        if self._proc is not None:
            raise EngineError(f"{self.name} was already started.")
        posix = os.name == "posix"
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.merge_stderr else subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                start_new_session=posix,
                # Safe here despite threads: see the module docstring.
                preexec_fn=parent_death_preexec(self.death_signal) if posix else None,  # noqa: PLW1509
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )
        except OSError as exc:
            raise EngineError(
                f"{self.argv[0]} could not be started: {exc.strerror or exc}.",
                details=shell_join(self.argv),
            ) from exc
        self.started_at = time.monotonic()
        streams: list[tuple[str, object]] = [("out", self._proc.stdout)]
        if not self.merge_stderr:
            streams.append(("err", self._proc.stderr))
        self._open_streams = len(streams)
        for label, stream in streams:
            t = threading.Thread(
                target=self._read, args=(label, stream), name=f"{self.name}-{label}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _read(self, label: str, stream: object) -> None:
        reader = stream  # a BufferedReader; read1 returns what the pipe has (loading dots too)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                data = reader.read1(65536)  # type: ignore[attr-defined]
                if not data:
                    break
                text = decoder.decode(data)
                if text:
                    self._queue.put((label, text))
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            tail = decoder.decode(b"", final=True)
            if tail:
                self._queue.put((label, tail))
            with contextlib.suppress(OSError):
                reader.close()  # type: ignore[attr-defined]
            self._queue.put(None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def output(self, timeout: float = 0.0) -> list[Output]:
        """Output that arrived since the last call, waiting up to ``timeout`` for the first piece.

        Each piece also goes to :attr:`history`. An empty list: nothing new (or all streams ended,
        see :attr:`output_done`).
        """
        out, self._pending = self._pending, []
        block = timeout > 0 and not out
        while self._open_streams:
            try:
                item = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                break
            block = False
            if item is None:
                self._open_streams -= 1
                continue
            stream, text = item
            self.history.feed_text(text)
            if stream == "out" and not self.merge_stderr:
                self._stdout.append(text)
            out.append(item)
        if not self._open_streams and self._queue.empty():
            self.history.finish()
        return out

    @property
    def output_done(self) -> bool:
        """Every stream reached its end and was read."""
        return self._open_streams == 0

    @property
    def stdout_text(self) -> str:
        """stdout alone (only with ``merge_stderr=False``), as read so far."""
        return "".join(self._stdout)

    def poll(self) -> ExitInfo | None:
        """How the process ended, or None while it runs."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is None:
            return None
        return self._finish(code)

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        """Wait for the end (None when ``timeout`` passed first)."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self._finish(code)

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return  # reaped: its pid (and group) may belong to someone else by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.name == "posix":
                os.killpg(proc.pid, sig)  # the session leader's pid is its group's id
            else:
                proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> ExitInfo:
        """SIGTERM to the process group, wait up to ``timeout`` s, then SIGKILL; how it ended."""
        if self._proc is None:
            raise EngineError(f"{self.name} was never started.")
        if self._proc.poll() is None:
            self._stop_requested = True
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killed = True
                self._signal(signal.SIGKILL)
                self._proc.wait()
        return self._finish(self._proc.returncode)

    def _finish(self, code: int) -> ExitInfo:
        if self._exit is None:
            self._drain()
            abort = any(_HEAP_ABORT.search(line) for line in self.history.tail(50))
            self._exit = classify_exit(
                code,
                stop_requested=self._stop_requested,
                killed=self._killed,
                uses_rpc=self.uses_rpc,
                heap_abort_seen=abort,
                name=self.name,
            )
        return self._exit

    def _drain(self) -> None:
        """Collect the rest of the output (after the process ended)."""
        for t in self._threads:
            t.join(timeout=2.0)
            if t.is_alive():
                # A grandchild still holds the pipe open; stop waiting rather than hang.
                log.warning("%s: output pipe still open after exit", self.name)
        # Kept for the next output() call: whoever watches the log (a parser) must still get the
        # last lines, often the ones that say why the engine ended.
        self._pending = self.output()

    @property
    def exit(self) -> ExitInfo | None:
        return self._exit

    def __enter__(self) -> ManagedProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self.stop()


class ServerRun(ManagedProcess):
    """A llama-server started from a :class:`LaunchSpec` (blocking helper for the CLI).

    ``start`` refuses when the port is taken (naming the holder); the output is merged.
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        history: LogHistory | None = None,
        base_env: Mapping[str, str] | None = None,
        check_port_first: bool = True,
    ) -> None:
        super().__init__(
            spec.full_argv,
            env=spec.environment(base_env),
            cwd=spec.cwd,
            history=history,
            name=Path(spec.argv[0]).name,
            uses_rpc=spec.uses_rpc,
        )
        self.spec = spec
        self.check_port_first = check_port_first

    def start(self) -> None:
        if self.check_port_first:
            check_port(self.spec.host, self.spec.port)
        super().start()

    def __enter__(self) -> ServerRun:
        super().__enter__()
        return self
