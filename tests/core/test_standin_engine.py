"""The scripted stand-in llama-server (tests/support/standin_engine.py) as a real subprocess.

It must behave like the engines where our launch and monitor code looks: the /health sequence of
each dialect, /completion timings, /metrics, exit statuses and signals, and log lines that
core.engine_log reads the same way as the real ones (compared with real captures of the same
tiny model in tests/data/logs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moe_studio.core.engine.log_events import BufferKind, FailureKind, LoadPhase, LoadReport
from moe_studio.core.engine.log_parser import parse_log
from moe_studio.core.gguf.model import open_model
from moe_studio.core.units import MiB

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standin_engine.py"
LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path  # stdout and stderr merged, as the GUI reads them, unless separate=True
    err: Path

    def text(self) -> str:
        return self.out.read_text(encoding="utf-8") + self.err.read_text(encoding="utf-8")

    def report(self) -> LoadReport:
        return parse_log(self.text().splitlines())

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)


@contextmanager
def standin(
    tmp_path: Path,
    *args: str,
    separate: bool = False,
    env: Mapping[str, str] | None = None,
    **more_env: str,
) -> Iterator[Run]:
    """Start the stand-in with ``args`` (``--host``/``--port`` added); kill it on the way out."""
    port = free_port()
    out, err = tmp_path / f"out-{port}.log", tmp_path / f"err-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    environ.update({"STANDIN_LOAD_SECONDS": "0.05", **(env or {}), **more_env})
    argv = [sys.executable, str(STANDIN), *args, "--host", "127.0.0.1", "--port", str(port)]
    with out.open("wb") as fo, err.open("wb") as fe:
        stderr = fe if separate else subprocess.STDOUT
        proc = subprocess.Popen(argv, stdout=fo, stderr=stderr, env=environ)
    try:
        yield Run(proc, port, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def http(
    port: int, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(port: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if http(port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError("the stand-in never became ready")


def stop(run: Run) -> int:
    run.proc.send_signal(signal.SIGTERM)
    return run.wait()


# --------------------------------------------------------------------------------------------


def test_ik_health_hangs_during_the_load_then_ok(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    """ik binds before loading; a /health sent during the load waits and then answers 200 (the
    real ik: tests/data/logs, health_during_load_big). The load is held at a gate file while the
    request is on its way, so no timing decides the outcome."""
    args = ("-m", str(tiny_qwen3moe), "-c", "512")
    gate = tmp_path / "gate"
    with standin(tmp_path, *args, separate=True, STANDIN_LOAD_GATE=str(gate)) as run:
        while True:  # ik binds before loading
            try:
                probe = socket.create_connection(("127.0.0.1", run.port), timeout=10)
                break
            except ConnectionRefusedError:
                time.sleep(0.01)
        with probe:
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert "model loaded" not in run.out.read_text()  # the load is held at the gate
            gate.touch()
            reply = b""
            while chunk := probe.recv(65536):
                reply += chunk
        head, _, body = reply.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200"), head
        assert json.loads(body) == {"status": "ok", "slots_idle": 1, "slots_processing": 0}
        status, body = http(
            run.port, "/completion", {"prompt": "The quick brown fox", "n_predict": 8}
        )
        assert status == 200
        answer = json.loads(body)
        assert answer["content"] and answer["tokens_predicted"] == 8
        timings = answer["timings"]
        assert set(timings) >= {
            "prompt_n",
            "prompt_ms",
            "prompt_per_second",
            "predicted_n",
            "predicted_ms",
            "predicted_per_second",
        }
        assert http(run.port, "/metrics")[0] == 501  # no --metrics
        assert http(run.port, "/nowhere")[0] == 404
        assert stop(run) == 0

    # Streams as in ik: server_log on stdout, the library on stderr.
    assert run.out.read_text().startswith("INFO [                    main] build info | tid=")
    assert "llm_load_tensors:        CPU buffer size =" in run.err.read_text()
    report = run.report()
    assert report.dialect == "ik" and report.ready and not report.failures
    layout = open_model(tiny_qwen3moe)
    assert abs(report.model_buffers["CPU"] - layout.total_bytes) <= 0.005 * MiB
    (timing,) = report.timings
    assert (timing.prompt_tokens, timing.eval_tokens) == (timings["prompt_n"], 8)
    assert timing.eval_ms == round(timings["predicted_ms"], 2)
    assert report.listening is not None and report.listening.port == run.port


def test_mainline_health_503_while_loading_and_metrics(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    args = ("-m", str(tiny_qwen3moe), "-c", "512", "--metrics", "-lv", "4")
    env = {"STANDIN_DIALECT": "mainline", "STANDIN_LOAD_SECONDS": "0.6"}
    with standin(tmp_path, *args, separate=True, env=env) as run:
        seen: list[tuple[int, str]] = []
        while not seen or seen[-1][0] != 200:
            try:
                seen.append(http(run.port, "/health"))
            except OSError:
                time.sleep(0.01)
        assert json.loads(seen[0][1]) == {
            "error": {"message": "Loading model", "type": "unavailable_error", "code": 503}
        }
        assert seen[0][0] == 503
        assert json.loads(seen[-1][1]) == {"status": "ok"}
        status, body = http(run.port, "/completion", {"prompt": "hello world", "n_predict": 4})
        timings = json.loads(body)["timings"]
        status, metrics = http(run.port, "/metrics")
        assert status == 200
        assert f"llamacpp:prompt_tokens_total {timings['prompt_n']}" in metrics.splitlines()
        assert "llamacpp:tokens_predicted_total 4" in metrics.splitlines()
        assert stop(run) == 0
    assert run.out.read_text() == ""  # mainline logs everything to stderr
    report = run.report()
    assert report.dialect == "mainline" and report.ready
    assert set(report.model_buffers) == {"CPU_Mapped"}
    assert report.kv_total == 1 * MiB
    assert report.timings[0].eval_tokens == 4


@pytest.mark.parametrize(
    ("dialect", "line"),
    [("ik", "error: unknown argument: -fmoe"), ("mainline", "error: invalid argument: -fmoe")],
)
def test_unknown_argument(tmp_path: Path, dialect: str, line: str) -> None:
    with standin(tmp_path, "-m", "x.gguf", "-fmoe", STANDIN_DIALECT=dialect) as run:
        assert run.wait() == 1
    assert run.text().splitlines()[0] == line
    failure = run.report().failure
    assert failure is not None
    assert (failure.kind, failure.argument) == (FailureKind.UNKNOWN_ARGUMENT, "-fmoe")


@pytest.mark.parametrize("dialect", ["ik", "mainline"])
def test_unknown_buffer_type(tmp_path: Path, dialect: str) -> None:
    args = ("-m", "x.gguf", "-ot", "exps=FOO")
    with standin(tmp_path, *args, separate=True, STANDIN_DIALECT=dialect) as run:
        assert run.wait() == 1
    listing = (run.err if dialect == "ik" else run.out).read_text()
    assert listing.startswith("Available buffer types:\n  CPU\n")
    failure = run.report().failure
    assert failure is not None
    assert failure.kind is FailureKind.UNKNOWN_BUFFER_TYPE and failure.available == ("CPU",)


def test_missing_model(tmp_path: Path) -> None:
    with standin(tmp_path, "-m", str(tmp_path / "missing.gguf")) as run:
        assert run.wait() == 1
    report = run.report()
    assert report.failure is not None and report.failure.kind is FailureKind.MODEL_LOAD
    assert "No such file or directory" in report.failure.message


@pytest.mark.parametrize(
    ("dialect", "fail", "purpose"),
    [
        ("ik", "oom", BufferKind.MODEL),
        ("ik", "oom-kv", BufferKind.KV),
        ("ik", "oom-compute", BufferKind.COMPUTE),
        ("mainline", "oom", BufferKind.MODEL),
    ],
)
def test_cuda_out_of_memory(
    tmp_path: Path, tiny_qwen3moe: Path, dialect: str, fail: str, purpose: BufferKind
) -> None:
    env = {"STANDIN_DIALECT": dialect, "STANDIN_CUDA_MIB": "24000", "STANDIN_FAIL": fail}
    with standin(
        tmp_path, "-m", str(tiny_qwen3moe), "-ngl", "99", STANDIN_OOM_MIB="12345", env=env
    ) as run:
        assert run.wait() == 1
    report = run.report()
    assert report.phase is LoadPhase.FAILED
    failure = report.failure
    assert failure is not None
    assert (failure.kind, failure.device, failure.buffer, failure.nbytes, failure.purpose) == (
        FailureKind.DEVICE_OUT_OF_MEMORY,
        0,
        "CUDA0",
        12345 * MiB,
        purpose,
    )


def test_crash_after_loading(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    with standin(tmp_path, "-m", str(tiny_qwen3moe), STANDIN_FAIL="crash") as run:
        assert run.wait() == -signal.SIGSEGV
    assert run.report().model_loaded


def test_ignoring_sigterm_needs_sigkill(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    with standin(tmp_path, "-m", str(tiny_qwen3moe), STANDIN_IGNORE_SIGTERM="1") as run:
        wait_ready(run.port)
        run.proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            run.wait(0.3)
        run.proc.kill()
        assert run.wait() == -signal.SIGKILL


def test_abort_at_exit_after_rpc(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    with standin(tmp_path, "-m", str(tiny_qwen3moe), STANDIN_ABORT_AT_EXIT="1") as run:
        wait_ready(run.port)
        assert stop(run) == -signal.SIGABRT
    report = run.report()
    assert report.failure is not None
    assert report.failure.kind is FailureKind.ABORT_AT_EXIT and report.failure.benign_after_stop
    assert report.ready


# --------------------------------------------------------------------------------------------
# The same numbers as the real engines on the same model


def _load_only(tmp_path: Path, *args: str, **env: str) -> LoadReport:
    with standin(tmp_path, *args, env=env) as run:
        wait_ready(run.port)
        assert stop(run) in (0, -signal.SIGABRT)
    return run.report()


@pytest.mark.parametrize(
    ("capture", "args", "dialect"),
    [
        ("ik/cap_tiny_models_qwen3moe.log", ("-c", "512", "-t", "1"), "ik"),
        (
            "ik/cap_tiny_models_qwen3moe_rpc2_ot.log",
            (
                "-c",
                "512",
                "--rpc",
                "127.0.0.1:50052,127.0.0.1:50053",
                "-ngl",
                "99",
                "-ot",
                "exps=CPU",
            ),
            "ik",
        ),
        ("mainline/cap_tiny_models_qwen3moe_lv4.log", ("-c", "512", "-lv", "4"), "mainline"),
    ],
)
def test_buffers_match_the_real_engine(
    tmp_path: Path, tiny_qwen3moe: Path, capture: str, args: tuple[str, ...], dialect: str
) -> None:
    real = parse_log((LOGS / capture).read_text(encoding="utf-8").splitlines())
    fake = _load_only(tmp_path, "-m", str(tiny_qwen3moe), *args, STANDIN_DIALECT=dialect)
    assert fake.dialect == real.dialect == dialect
    assert fake.model_buffers == real.model_buffers
    assert fake.kv_buffers == real.kv_buffers
    assert fake.kv_parts == real.kv_parts
    assert fake.output_buffers == real.output_buffers
    assert set(fake.compute_buffers) == set(real.compute_buffers)
    # The same overrides (ik prints them in its own tensor order).
    assert {(o.tensor, o.buffer, o.nbytes) for o in fake.overrides} == {
        (o.tensor, o.buffer, o.nbytes) for o in real.overrides
    }
    assert fake.metadata is not None and real.metadata is not None
    assert fake.metadata.n_tensors == real.metadata.n_tensors


def test_cuda_placement_follows_ngl_and_ot(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    report = _load_only(
        tmp_path,
        "-m",
        str(tiny_qwen3moe),
        "-c",
        "1024",
        "-ngl",
        "99",
        "-ot",
        "exps=CPU",
        STANDIN_CUDA_MIB="24000,24000",
    )
    layout = open_model(tiny_qwen3moe)
    experts = sum(t.nbytes for t in layout.tensors if "_exps" in t.name)
    embd = sum(t.nbytes for t in layout.tensors if t.name.startswith("token_embd"))
    assert abs(report.model_buffers["CPU"] - (experts + embd)) <= 0.005 * MiB
    gpu = report.model_buffers["CUDA0"] + report.model_buffers["CUDA1"]
    assert abs(gpu - (layout.total_bytes - experts - embd)) <= 0.01 * MiB
    assert {o.buffer for o in report.overrides} == {"CUDA_Host"}  # =CPU in a CUDA build
    assert len(report.overrides) == 3 * layout.n_layer
    assert report.kv_buffers["CUDA0"] == report.kv_buffers["CUDA1"] == 1 * MiB
    assert set(report.devices) == {"CUDA0", "CUDA1", "CPU"}
    assert sorted(report.layer_devices.values()) == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(("dialect", "help_status"), [("ik", 1), ("mainline", 0)])
def test_version_and_help(tmp_path: Path, dialect: str, help_status: int) -> None:
    env = {"STANDIN_DIALECT": dialect}
    with standin(tmp_path, "--version", separate=True, env=env) as run:
        assert run.wait() == 0
    assert run.err.read_text().startswith(
        "version: 4840 (8337e4cd3)\n" if dialect == "ik" else "version: 0.6.0-dev"
    )
    with standin(tmp_path, "--help", separate=True, env=env) as run:
        assert run.wait() == help_status
    options = run.out.read_text().split()
    # what engines.md §10 tells a configurator to look for
    assert ("-no-fmoe" in options, "-lm" in options) == (dialect == "ik", dialect == "mainline")
