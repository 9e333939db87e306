"""Opt-in tests against a real llama-server: set MOE_STUDIO_ENGINE to its path to run them."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"
# Every tiny model loads in well under a second with these. One thread: with -t 2 on a two-core
# machine that was busy compiling, ik's spinning worker threads stretched an 8-token completion
# from a few ms to 3 s.
DEFAULT_ARGS = ("-c", "512", "-t", "1")


def engine_environment() -> dict[str, str]:
    """The environment for engine processes: $MOE_STUDIO_ENGINE_LIBRARY_PATH (the mainline
    wheel's library folder) becomes their LD_LIBRARY_PATH, never the test process's own."""
    env = dict(os.environ)
    library = os.environ.get("MOE_STUDIO_ENGINE_LIBRARY_PATH")
    if library:
        env["LD_LIBRARY_PATH"] = library
    return env


@pytest.fixture(scope="session")
def engine_flavour(engine: Path) -> str:
    """``ik`` or ``mainline``, from the engine's own --version/--help."""
    from moe_studio.core.engine.discovery import probe_engine

    info = probe_engine(engine, library_path=os.environ.get("MOE_STUDIO_ENGINE_LIBRARY_PATH", ""))
    return str(info.flavour)


@pytest.fixture
def ik_engine(engine: Path, engine_flavour: str) -> Path:
    """The engine, when it is ik_llama.cpp; skips with the reason otherwise."""
    if engine_flavour != "ik":
        pytest.skip(f"needs ik_llama.cpp; MOE_STUDIO_ENGINE is {engine_flavour} llama.cpp")
    return engine


@pytest.fixture(scope="session")
def engine() -> Path:
    """The llama-server binary named by MOE_STUDIO_ENGINE; skips the test when it is unset."""
    value = os.environ.get("MOE_STUDIO_ENGINE")
    if not value:
        pytest.skip(
            "MOE_STUDIO_ENGINE is not set: point it at a llama-server binary "
            "to run the real-engine tests"
        )
    path = Path(value)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"MOE_STUDIO_ENGINE is {value!r}, which is not an executable file")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """A llama-server process on 127.0.0.1 for the duration of a ``with`` block.

    Entering starts it (argv list, no shell, a free port) and waits for its "listening" log
    line and a 200 from ``/health``; leaving terminates it, then kills it if it has not gone
    after 10 s. stdout and stderr go merged into ``log_path`` (ik writes its server log to
    stdout and the rest to stderr); :attr:`output` reads it back, during the run or after.
    """

    def __init__(
        self,
        binary: Path,
        model: Path,
        args: Sequence[str] = DEFAULT_ARGS,
        *,
        log_path: Path,
        ready_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.argv = [str(binary), "-m", str(model), "--host", HOST, "--port", str(self.port)]
        self.argv += args
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_argv(
        cls, argv: Sequence[str], *, port: int, log_path: Path, ready_timeout: float = 60.0
    ) -> LlamaServer:
        """A server for a complete command line (``moe_studio.core.plan.cmdline.build_command``'s
        argv), which already names the binary, the model, ``--host 127.0.0.1`` and ``--port
        port``."""
        server = cls(Path(argv[0]), Path(), (), log_path=log_path, ready_timeout=ready_timeout)
        server.port = port
        server.argv = list(argv)
        return server

    @property
    def output(self) -> str:
        """Merged stdout and stderr so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def __enter__(self) -> LlamaServer:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=engine_environment(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        listening = False
        while True:
            code = self._proc.poll()
            if code is not None:
                raise AssertionError(
                    f"llama-server exited with status {code} before it was ready:\n"
                    f"{self.output[-4000:]}"
                )
            # Ask /health only once the log says the server listens: ik binds its port before
            # loading and answers nothing until loaded, so earlier requests just hang.
            listening = listening or "listening" in self.output
            if listening:
                try:
                    status, _ = self.request("GET", "/health", timeout=5.0)
                    if status == 200:  # mainline answers 503 while it loads
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"llama-server was not ready after {self.ready_timeout:.0f} s:\n"
                    f"{self.output[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server (kill it after 10 s); safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def request(
        self, method: str, path: str, payload: object = None, *, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        """One HTTP request; returns the status and the body (any status, no exception)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


StartServer = Callable[..., LlamaServer]


@pytest.fixture
def llama_server(engine: Path, engine_flavour: str, tmp_path: Path) -> StartServer:
    """``llama_server(model, *args)`` → a :class:`LlamaServer` to use in a ``with`` block.

    ``args`` replace the defaults ``-c 512 -t 1`` when given. Logs go to the test's tmp_path.
    Mainline gets ``-lv 4``: at its default verbosity it prints no loader or buffer lines.
    """
    count = 0
    verbosity = ("-lv", "4") if engine_flavour == "mainline" else ()

    def start(model: Path, *args: str, ready_timeout: float = 60.0) -> LlamaServer:
        nonlocal count
        count += 1
        return LlamaServer(
            engine,
            model,
            (*(args or DEFAULT_ARGS), *verbosity),
            log_path=tmp_path / f"llama-server-{count}.log",
            ready_timeout=ready_timeout,
        )

    return start


@pytest.fixture
def launch_log(llama_server: StartServer) -> Callable[..., str]:
    """``launch_log(model, *args)``: start llama-server, wait until ready, stop it; its output."""

    def run(model: Path, *args: str) -> str:
        with llama_server(model, *args) as server:
            pass
        return server.output

    return run


# --- rpc-server ----------------------------------------------------------------------------------


class RpcServers:
    """``count`` ``rpc-server`` processes on 127.0.0.1 for the duration of a ``with`` block.

    Entering starts them (``-H 127.0.0.1 -p PORT`` on free ports, one thread each) and waits until
    each has accepted a probe connection; leaving terminates them (kills after 10 s).
    :attr:`endpoints` are their ``host:port`` strings in start order.

    A free port can be taken again before the server binds it (or a probe to a port nobody
    listens on yet can connect to itself), so a server that exits or never logs the probe is
    started again on another port, up to three times.
    """

    ATTEMPTS = 3

    def __init__(
        self, binary: Path, count: int, *, log_dir: Path, ready_timeout: float = 30.0
    ) -> None:
        self.binary = binary
        self.count = count
        self.endpoints: list[str] = []
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> RpcServers:
        try:
            for _ in range(self.count):
                self.endpoints.append(self._start_one())
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_one(self) -> str:
        problems = []
        for _ in range(self.ATTEMPTS):
            port = free_port()
            log_path = self.log_dir / f"rpc-server-{port}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [str(self.binary), "-H", HOST, "-p", str(port), "-t", "1"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=engine_environment(),
                )
            self._procs.append(proc)
            problem = self._wait_accepting(port, proc, log_path)
            if problem is None:
                return f"{HOST}:{port}"
            problems.append(problem)
            self._stop_proc(proc)
            self._procs.remove(proc)
        raise AssertionError("rpc-server did not start: " + "; ".join(problems))

    def _wait_accepting(
        self, port: int, proc: subprocess.Popen[bytes], log_path: Path
    ) -> str | None:
        """None once the server logged our probe connection, else what went wrong."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                tail = log_path.read_text(errors="replace")[-300:]
                return f"port {port}: exited with status {code}: {tail!r}"
            try:
                socket.create_connection((HOST, port), timeout=1.0).close()
            except OSError:
                time.sleep(0.05)
                continue
            for _ in range(100):  # the server logs the accept right after it happens
                if "Accepted client connection" in log_path.read_text(errors="replace"):
                    return None
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
        return f"port {port}: accepted no probe connection in {self.ready_timeout:.0f} s"

    @staticmethod
    def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Terminate every server (kill after 10 s); safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            self._stop_proc(proc)
        self._procs = []


@pytest.fixture(scope="session")
def rpc_server_binary(engine: Path) -> Path:
    """``rpc-server`` beside the llama-server binary; skips the test when there is none."""
    path = engine.with_name("rpc-server")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.skip(
            f"no rpc-server beside {engine}: build ik_llama.cpp with -DGGML_RPC=ON "
            "to run the RPC tests"
        )
    return path


@pytest.fixture(scope="module")
def rpc_endpoints(
    rpc_server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two ``rpc-server`` processes on 127.0.0.1, shared by a module's tests; their endpoints.

    An rpc-server serves one client after another, so the module's llama-servers reuse them.
    """
    log_dir = tmp_path_factory.mktemp("rpc-servers")
    with RpcServers(rpc_server_binary, 2, log_dir=log_dir) as servers:
        yield servers.endpoints
