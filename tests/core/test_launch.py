"""Launching, watching and stopping a server: the stand-in engine as a real subprocess.

launch → loading progress → ready → test prompt → stop, for both dialects; SIGTERM ignored →
SIGKILL; ik's abort at exit after --rpc is a normal stop; a crash is a crash; a taken port is
refused with its holder's name; kill -9 of the launching process leaves no server behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from moe_studio.core.engine.discovery import EngineInfo, probe_engine
from moe_studio.core.engine.health import (
    HealthTracker,
    Phase,
    PollKind,
    fetch_metrics,
    poll_health,
    send_test_prompt,
)
from moe_studio.core.engine.launch import (
    ExitInfo,
    ExitKind,
    LaunchSpec,
    LogHistory,
    ManagedProcess,
    ServerRun,
    build_launch_spec,
    check_port,
    classify_exit,
    port_in_use,
    server_address,
)
from moe_studio.core.engine.log_events import LoadReport
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.errors import EngineError
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import HostInfo, Rig
from moe_studio.core.plan.advisor import Advice
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner, PlanResult
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import GiB
from tests.support.standin_tools import clean_env, install_standin

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineInfo]:
    base = tmp_path_factory.mktemp("engines")
    out = {}
    for dialect in ("ik", "mainline"):
        info = probe_engine(install_standin(base / dialect, dialect), environ=clean_env())
        assert info.usable, info.problem
        out[dialect] = info
    return out


def plan_result(model: Path, dialect: str, engine: EngineInfo, **settings: object) -> PlanResult:
    layout = catalog.load(str(model))
    s = Settings(dialect=dialect, ctx=512, port=free_port()).with_(**settings)  # type: ignore[arg-type]
    planner = Planner(layout, Rig("test", HostInfo(16 * GiB)), s)
    return planner.result(initial_plan(layout), executable=engine.path)


class Watch:
    """The CLI's loop in small: output → parser → tracker, /health polls."""

    def __init__(self, run: ServerRun, spec: LaunchSpec) -> None:
        self.run, self.spec = run, spec
        self.parser = EngineLogParser()
        self.tracker = HealthTracker()
        self.labels: list[str] = []
        self.polls: list[PollKind | int | None] = []

    def step(self, timeout: float = 0.05) -> None:
        for _, text in self.run.output(timeout):
            for event in self.parser.feed_text(text):
                if self.tracker.on_event(event):
                    self.labels.append(self.tracker.status.label)

    def _tick(self, poll: bool) -> None:
        self.step()
        info = self.run.poll()
        if info is not None:
            self.step(0)
            self.tracker.on_exit(info)
        if poll and not self.tracker.status.phase.final:
            outcome = poll_health(self.spec.host, self.spec.port, timeout=0.2)
            self.polls.append(outcome.status if outcome.kind is PollKind.HTTP else outcome.kind)
            if self.tracker.on_poll(outcome):
                self.labels.append(self.tracker.status.label)

    def until_polled(self, seen: PollKind | int, timeout: float = 120.0) -> None:
        """Poll until one /health poll came back as ``seen``."""
        end = time.monotonic() + timeout
        while seen not in self.polls:
            assert time.monotonic() < end, f"no {seen} in {self.polls}"
            self._tick(poll=True)

    def until(self, *phases: Phase, timeout: float = 120.0, poll: bool = True) -> Phase:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._tick(poll)
            if self.tracker.status.phase in phases:
                return self.tracker.status.phase
        raise AssertionError(
            f"still {self.tracker.status} after {timeout} s: {self.labels}\n"
            + self.run.history.text()[-2000:]
        )

    @property
    def report(self) -> LoadReport:
        return self.parser.report()


@pytest.fixture
def started() -> Iterator[list[ServerRun]]:
    """Runs started by a test; whatever is still running at the end is stopped."""
    runs: list[ServerRun] = []
    yield runs
    for run in runs:
        if run.pid is not None and run.exit is None:
            run.stop(timeout=2)


def start(started: list[ServerRun], spec: LaunchSpec, **env: str) -> tuple[ServerRun, Watch]:
    run = ServerRun(spec, base_env=clean_env(**env))
    started.append(run)
    run.start()
    return run, Watch(run, spec)


# --- the whole way -------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["ik", "mainline"])
def test_launch_progress_ready_prompt_stop(
    dialect: str,
    tmp_path: Path,
    engines: dict[str, EngineInfo],
    tiny_qwen3moe: Path,
    started: list[ServerRun],
) -> None:
    engine = engines[dialect]
    result = plan_result(tiny_qwen3moe, dialect, engine, metrics=True)
    spec = build_launch_spec(result, engine, dialect=dialect)  # type: ignore[arg-type]
    assert spec.argv[0] == engine.path
    assert ("-lv" in spec.argv) == (dialect == "mainline")  # mainline's loader lines need -lv 4
    gate = tmp_path / "gate"  # the stand-in's load waits here until the test opens it
    run, watch = start(started, spec, STANDIN_LOAD_SECONDS="0.6", STANDIN_LOAD_GATE=str(gate))
    # During the load ik's /health hangs (our poll times out) and never says 503; mainline
    # answers 503.
    watch.until_polled(PollKind.TIMEOUT if dialect == "ik" else 503)
    gate.touch()

    assert watch.until(Phase.READY) is Phase.READY
    loading = [label for label in watch.labels if label.startswith("loading (")]
    percents = [int(label.split("(")[1].split()[0]) for label in loading]
    # How many dots arrive per read depends on scheduling, so count none: progress was shown
    # and never went back (one label per growing dot line is test_engine_log's
    # test_dots_of_a_pending_line_report_progress, fed byte by byte).
    assert percents and percents == sorted(percents), watch.labels
    if dialect == "ik":
        assert 503 not in watch.polls
    # /health may answer before we have read the last log lines: read until they come.
    while not watch.report.compute_buffers:
        assert run.running, run.history.text()[-2000:]
        watch.step(0.1)
    cpu = watch.report.devices["CPU"]  # buffers read back (mainline: thanks to -lv 4)
    assert cpu.model > 0 and cpu.kv > 0 and cpu.compute > 0

    answer = send_test_prompt(spec.host, spec.port, "The quick brown fox", n_predict=8)
    assert answer.predicted_tokens == 8 and answer.predicted_tokens_per_second > 0
    assert "tokens/s" in answer.summary
    metrics = fetch_metrics(spec.host, spec.port)
    assert metrics["llamacpp:tokens_predicted_total"] == 8

    watch.tracker.on_stop_requested()
    # The grace before SIGKILL only catches a hang: a busy machine may take seconds to exit.
    info = run.stop(timeout=120)
    watch.tracker.on_exit(info)
    assert info.kind is ExitKind.STOPPED and info.normal and not info.killed
    assert watch.tracker.status.phase is Phase.STOPPED
    assert run.history.total > 10 and not run.running


def test_metrics_need_the_flag(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, started: list[ServerRun]
) -> None:
    engine = engines["ik"]
    spec = build_launch_spec(plan_result(tiny_qwen3moe, "ik", engine), engine, dialect="ik")
    run, watch = start(started, spec)
    watch.until(Phase.READY)
    with pytest.raises(EngineError, match="--metrics"):
        fetch_metrics(spec.host, spec.port)
    run.stop()


# --- stopping ------------------------------------------------------------------------------------


def test_server_ignoring_sigterm_is_killed(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, started: list[ServerRun]
) -> None:
    engine = engines["ik"]
    spec = build_launch_spec(plan_result(tiny_qwen3moe, "ik", engine), engine, dialect="ik")
    run, watch = start(started, spec, STANDIN_IGNORE_SIGTERM="1")
    watch.until(Phase.READY)
    # stop() must not wait for an engine that ignores SIGTERM: it kills it after its timeout.
    # (A thread with a generous join detects a hang; nothing is asserted about durations.)
    stopped: list[ExitInfo] = []
    stopper = threading.Thread(target=lambda: stopped.append(run.stop(timeout=0.5)))
    stopper.start()
    stopper.join(120)
    assert stopped, "stop() hung on an engine that ignores SIGTERM"
    info = stopped[0]
    assert info.killed and info.kind is ExitKind.STOPPED and info.signal_name == "SIGKILL"
    assert "killed" in info.message
    assert not psutil.pid_exists(run.pid or 0) or psutil.Process(run.pid).status() == "zombie"


def test_abort_at_exit_after_requested_stop_with_rpc_is_normal(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, started: list[ServerRun]
) -> None:
    engine = engines["ik"]
    result = plan_result(tiny_qwen3moe, "ik", engine, extra_args=("--rpc", "127.0.0.1:50052"))
    spec = build_launch_spec(result, engine, dialect="ik")
    assert spec.uses_rpc
    run, watch = start(started, spec, STANDIN_ABORT_AT_EXIT="1")
    watch.until(Phase.READY)
    watch.tracker.on_stop_requested()
    info = run.stop(timeout=120)  # a SIGKILL after a short grace on a busy machine is not an abort
    assert info.signal_name == "SIGABRT"
    assert info.kind is ExitKind.STOPPED and info.normal
    assert "normal" in info.message
    watch.step(0)
    assert any("double free" in line for line in run.history.lines())
    watch.tracker.on_exit(info)
    assert watch.tracker.status.phase is Phase.STOPPED  # the logged abort is not a failure


def test_crash_is_reported_with_its_signal(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path, started: list[ServerRun]
) -> None:
    engine = engines["ik"]
    spec = build_launch_spec(plan_result(tiny_qwen3moe, "ik", engine), engine, dialect="ik")
    run, watch = start(started, spec, STANDIN_FAIL="crash", STANDIN_CRASH_SECONDS="0.3")
    watch.until(Phase.READY)
    assert watch.until(Phase.FAILED, poll=False) is Phase.FAILED
    info = watch.tracker.status.exit
    assert info is not None and info.kind is ExitKind.CRASHED, run.history.text()[-2000:]
    assert info.signal_name == "SIGSEGV"
    assert "crashed" in watch.tracker.status.detail


@pytest.mark.parametrize(
    ("code", "requested", "rpc", "abort", "kind"),
    [
        (0, False, False, False, ExitKind.EXITED),
        (1, False, False, False, ExitKind.FAILED),
        (-signal.SIGSEGV, False, False, False, ExitKind.CRASHED),
        (-signal.SIGABRT, False, True, True, ExitKind.CRASHED),  # abort nobody asked for
        (-signal.SIGABRT, True, True, False, ExitKind.STOPPED),
        (-signal.SIGABRT, True, False, True, ExitKind.STOPPED),  # the heap message was logged
        (-signal.SIGABRT, True, False, False, ExitKind.CRASHED),
        (-signal.SIGTERM, True, False, False, ExitKind.STOPPED),
        (1, True, False, False, ExitKind.STOPPED),
        (-signal.SIGSEGV, True, False, False, ExitKind.CRASHED),
    ],
)
def test_classify_exit(code: int, requested: bool, rpc: bool, abort: bool, kind: ExitKind) -> None:
    info = classify_exit(code, stop_requested=requested, uses_rpc=rpc, heap_abort_seen=abort)
    assert info.kind is kind
    assert info.message.endswith(".")


# --- no orphans ----------------------------------------------------------------------------------


def test_no_server_survives_kill_9_of_its_launcher(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path
) -> None:
    engine = engines["ik"]
    spec = build_launch_spec(plan_result(tiny_qwen3moe, "ik", engine), engine, dialect="ik")
    data = {
        "argv": list(spec.argv),
        "env": dict(spec.env),
        "host": spec.host,
        "port": spec.port,
        "base_env": clean_env(),
    }
    child = subprocess.Popen(
        [sys.executable, str(SUPPORT / "launch_child.py"), json.dumps(data)],
        stdout=subprocess.PIPE,
        env=clean_env(),
    )
    server_pid = 0
    try:
        assert child.stdout is not None
        server_pid = int(child.stdout.readline())
        server = psutil.Process(server_pid)
        assert server.ppid() == child.pid
        end = (
            time.monotonic() + 60
        )  # the wrapper script is still exec-ing the stand-in (a hang guard)
        while "standin_engine.py" not in " ".join(server.cmdline()):
            assert time.monotonic() < end, server.cmdline()
            time.sleep(0.02)
        child.kill()
        child.wait(60)
        end = time.monotonic() + 60  # waits for the exit; the deadline only catches a hang
        while time.monotonic() < end:
            if not psutil.pid_exists(server_pid) or server.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the server outlived the process that launched it")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()
        if server_pid and psutil.pid_exists(server_pid):
            with contextlib.suppress(ProcessLookupError):  # never leave one behind
                os.kill(server_pid, signal.SIGKILL)


# --- the port ------------------------------------------------------------------------------------


def test_taken_port_is_refused_naming_its_holder(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use("127.0.0.1", port) == f"{psutil.Process().name()} (pid {os.getpid()})"
        engine = engines["ik"]
        result = plan_result(tiny_qwen3moe, "ik", engine, port=port)
        spec = build_launch_spec(result, engine, dialect="ik")
        run = ServerRun(spec)
        with pytest.raises(EngineError, match=rf"Port {port} .* in use by .*pid {os.getpid()}"):
            run.start()
        assert run.pid is None  # nothing was started
    assert port_in_use("127.0.0.1", port) is None
    check_port("127.0.0.1", port)


def test_server_address() -> None:
    assert server_address(["x", "--host", "0.0.0.0", "--port", "9"]) == ("0.0.0.0", 9)
    assert server_address(["x", "--port=7"]) == ("127.0.0.1", 7)
    assert server_address(["x"]) == ("127.0.0.1", 8080)
    with pytest.raises(EngineError, match="not a port"):
        server_address(["x", "--port", "http"])


# --- the spec ------------------------------------------------------------------------------------


def _result_with(result: PlanResult, advice: Advice) -> PlanResult:
    from dataclasses import replace

    return replace(result, advice=advice)


def test_spec_environment_numactl_and_library_path(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path
) -> None:
    from dataclasses import replace

    engine = replace(engines["mainline"], library_path="/opt/ml-libs")
    result = plan_result(tiny_qwen3moe, "mainline", engine)
    advice = Advice(
        512,
        2048,
        numactl=("numactl", "--cpunodebind=1", "--membind=1"),
        env={"GGML_OP_OFFLOAD_MIN_BATCH": "700"},
    )
    spec = build_launch_spec(
        _result_with(result, advice),
        engine,
        dialect="mainline",
        which=lambda name: f"/usr/bin/{name}",
    )
    assert spec.prefix == ("/usr/bin/numactl", "--cpunodebind=1", "--membind=1")
    assert spec.full_argv[: len(spec.prefix) + 1] == (*spec.prefix, engine.path)
    assert spec.env["GGML_OP_OFFLOAD_MIN_BATCH"] == "700"
    assert spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert spec.env["LD_LIBRARY_PATH"] == "/opt/ml-libs"  # this engine's process only
    assert "LD_LIBRARY_PATH" not in os.environ or os.environ["LD_LIBRARY_PATH"] != "/opt/ml-libs"
    assert spec.shell().startswith("GGML_OP_OFFLOAD_MIN_BATCH=700 ")
    assert spec.argv.count("-lv") == 1
    # The exported command stays as the planner wrote it.
    assert result.command is not None and "-lv" not in result.command.argv

    missing = build_launch_spec(
        _result_with(result, advice), engine, dialect="mainline", which=lambda name: None
    )
    assert missing.prefix == ()
    assert any("numactl is not installed" in n for n in missing.notes)

    ik_spec = build_launch_spec(
        plan_result(tiny_qwen3moe, "ik", engines["ik"]), engines["ik"], dialect="ik"
    )
    assert "LD_LIBRARY_PATH" not in ik_spec.env and "-lv" not in ik_spec.argv


def test_spec_keeps_a_verbosity_the_user_chose(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path
) -> None:
    engine = engines["mainline"]
    result = plan_result(tiny_qwen3moe, "mainline", engine, extra_args=("-v",))
    spec = build_launch_spec(result, engine, dialect="mainline")
    assert "-lv" not in spec.argv and "-v" in spec.argv


def test_spec_refuses_the_wrong_engine_and_unusable_ones(
    engines: dict[str, EngineInfo], tiny_qwen3moe: Path
) -> None:
    result = plan_result(tiny_qwen3moe, "ik", engines["ik"])
    with pytest.raises(EngineError, match=r"written for ik_llama\.cpp.*is llama\.cpp"):
        build_launch_spec(result, engines["mainline"], dialect="ik")
    broken = EngineInfo("/nowhere/llama-server", problem="/nowhere/llama-server does not exist.")
    with pytest.raises(EngineError, match="does not exist"):
        build_launch_spec(result, broken, dialect="ik")


def test_start_failure_is_an_engine_error(tmp_path: Path) -> None:
    spec = LaunchSpec(argv=(str(tmp_path / "missing"),), port=free_port())
    with pytest.raises(EngineError, match="could not be started"):
        ServerRun(spec).start()


# --- history -------------------------------------------------------------------------------------


def test_log_history_is_bounded_and_replays_for_late_viewers(tmp_path: Path) -> None:
    h = LogHistory(max_lines=3)
    assert h.feed_text("a\nb") == ["a"]
    assert h.pending == "b"
    h.feed_bytes(b"c\r\nd\ne\n")
    assert h.lines() == ["bc", "d", "e"] and h.total == 4 and h.dropped == 1
    lines, nxt = h.since(0)  # a view attached now sees what is kept
    assert lines == ["bc", "d", "e"] and nxt == 4
    h.feed_text("f\n")
    assert h.since(nxt) == (["f"], 5)
    h.feed_text("....")
    assert h.finish() == ["...."]
    assert [n for n, _ in h.search("E")] == [3]
    assert h.search(r"^\.+$", regex=True) == [(5, "....")]
    with pytest.raises(EngineError, match="not a valid pattern"):
        h.search("(", regex=True)
    h.save(tmp_path / "log.txt")
    assert (tmp_path / "log.txt").read_text() == "e\nf\n....\n"


def test_log_history_decodes_utf8_split_across_chunks() -> None:
    h = LogHistory()
    data = "µ-Größe\n".encode()
    for i in range(len(data)):
        h.feed_bytes(data[i : i + 1])
    assert h.lines() == ["µ-Größe"]


def test_the_last_lines_are_handed_out_after_the_process_ended() -> None:
    """A watcher that learns of the end (poll/wait) before reading the rest still gets the lines
    that say why it ended: ending must not swallow them into the history alone."""
    script = "import sys\nfor i in range(200): print(f'line {i}')\nprint('the reason')\nsys.exit(3)"
    run = ManagedProcess([sys.executable, "-c", script], name="child")
    run.start()
    info = run.wait(120)  # ended, and nothing read yet
    assert info is not None and info.returncode == 3
    texts = "".join(text for _, text in run.output())
    assert "line 0" in texts and texts.rstrip().endswith("the reason")
    assert run.output() == [] and run.output_done
