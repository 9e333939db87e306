"""The health state machine (pure) and the small HTTP helpers' parsing."""

from __future__ import annotations

import http.server
import json
import math
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from moe_studio.core.engine.health import (
    HealthTracker,
    Phase,
    PollKind,
    PollOutcome,
    parse_metrics,
    poll_health,
    send_test_prompt,
)
from moe_studio.core.engine.launch import ExitKind, classify_exit
from moe_studio.core.engine.log_events import (
    BufferKind,
    BufferSize,
    Failure,
    FailureKind,
    Listening,
    LoadProgress,
    MetadataLoaded,
    ModelLoaded,
)
from moe_studio.core.engine.log_parser import EngineLogParser
from moe_studio.core.errors import EngineError

REFUSED = PollOutcome(PollKind.REFUSED)
HANGS = PollOutcome(PollKind.TIMEOUT)
OK_IK = PollOutcome(PollKind.HTTP, 200, '{"status":"ok","slots_idle":1,"slots_processing":0}')
LOADING_503 = PollOutcome(
    PollKind.HTTP,
    503,
    '{"error":{"message":"Loading model","type":"unavailable_error","code":503}}',
)


def test_ik_sequence_refused_then_hanging_then_ok() -> None:
    t = HealthTracker()
    assert t.status.phase is Phase.STARTING and t.status.label == "starting"
    assert not t.on_poll(REFUSED)
    assert t.on_event(MetadataLoaded(27, 51, "m.gguf", "GGUF V3"))
    assert t.status.phase is Phase.LOADING
    assert t.on_event(BufferSize(BufferKind.MODEL, "CPU", 100))
    assert t.on_event(LoadProgress(0.5, 50, False))
    half = t.status.progress
    assert half is not None and 0.4 < half < 0.6
    assert t.status.label == f"loading ({half * 100:.0f} %)"
    t.on_poll(HANGS)
    assert t.status.progress == half  # a hanging request says "loading", not how far
    t.on_event(LoadProgress(0.2, 20, False))
    assert t.status.progress == half  # never backwards
    assert t.on_poll(OK_IK)
    assert t.status.phase is Phase.READY and t.status.progress == 1.0
    assert not t.on_poll(REFUSED)  # the exit will tell
    assert t.on_stop_requested() and t.status.phase is Phase.STOPPING
    assert t.on_exit(classify_exit(0, stop_requested=True))
    assert t.status.phase is Phase.STOPPED and t.status.phase.final
    assert not t.on_event(MetadataLoaded(1, 1, "x", "y"))


def test_mainline_503_while_loading_and_log_readiness() -> None:
    t = HealthTracker()
    assert t.on_poll(LOADING_503)
    assert t.status.phase is Phase.LOADING and t.status.progress is None
    assert t.status.label == "loading"
    assert t.on_event(ModelLoaded())
    assert t.status.phase is Phase.LOADING and t.status.detail == "model loaded"
    assert t.on_event(Listening("127.0.0.1", 8080))
    assert t.status.phase is Phase.READY
    busy = PollOutcome(PollKind.HTTP, 200, '{"status":"no slot available"}')
    assert t.on_poll(busy) and "no slot" in t.status.detail


def test_failure_in_the_log_then_exit() -> None:
    t = HealthTracker()
    t.on_event(MetadataLoaded(1, 1, "m", "v"))
    oom = Failure(FailureKind.DEVICE_OUT_OF_MEMORY, "out of memory", 0, "CUDA0", 2**30)
    assert t.on_event(oom)
    assert t.status.phase is Phase.FAILED and t.status.failure is oom
    assert "CUDA0 ran out of memory" in t.status.detail
    later = Failure(FailureKind.MODEL_LOAD, "unable to load model", consequence=True)
    assert not t.on_event(later)  # the first failure is the cause
    assert t.on_exit(classify_exit(1, stop_requested=False))
    assert t.status.phase is Phase.FAILED and t.status.exit is not None
    assert t.status.exit.kind is ExitKind.FAILED


def test_abort_at_exit_is_not_a_failure_and_exits_decide() -> None:
    t = HealthTracker()
    t.on_poll(OK_IK)
    assert not t.on_event(Failure(FailureKind.ABORT_AT_EXIT, "double free or corruption (!prev)"))
    assert t.status.phase is Phase.READY
    t.on_exit(classify_exit(-11, stop_requested=False))
    assert t.status.phase is Phase.FAILED and "SIGSEGV" in t.status.detail

    early = HealthTracker()
    early.on_exit(classify_exit(0, stop_requested=False))
    assert early.status.phase is Phase.FAILED and "before it was ready" in early.status.detail

    ended = HealthTracker()
    ended.on_poll(OK_IK)
    ended.on_exit(classify_exit(0, stop_requested=False))
    assert ended.status.phase is Phase.STOPPED


def test_server_error_while_loading() -> None:
    t = HealthTracker()
    t.on_poll(PollOutcome(PollKind.HTTP, 500, '{"error":{"message":"Model failed to load"}}'))
    assert t.status.phase is Phase.FAILED and "Model failed to load" in t.status.detail


def test_tracker_follows_a_recorded_log() -> None:
    from pathlib import Path

    log = Path(__file__).resolve().parents[1] / "data" / "logs" / "ik" / "ref_qwen3moe_base.log"
    parser, t = EngineLogParser(), HealthTracker()
    progress = []
    for line in log.read_text().splitlines():
        for event in parser.feed(line):
            t.on_event(event)
            if t.status.progress is not None:
                progress.append(t.status.progress)
    assert t.status.phase is Phase.READY
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_parse_metrics() -> None:
    text = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 42\n"
        "llamacpp:predicted_tokens_seconds 17.5\n"
        'http_requests{code="200",path="/health"} 3\n'
        "llamacpp:bad value\n"
        "llamacpp:nan_value NaN\n"
    )
    m = parse_metrics(text)
    assert m["llamacpp:prompt_tokens_total"] == 42.0
    assert m["llamacpp:predicted_tokens_seconds"] == 17.5
    assert m['http_requests{code="200",path="/health"}'] == 3.0
    assert "llamacpp:bad" not in m and math.isnan(m["llamacpp:nan_value"])


class _Handler(http.server.BaseHTTPRequestHandler):
    replies: ClassVar[dict[str, tuple[int, str]]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self) -> None:
        status, body = self.replies.get(self.path, (404, "{}"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply()


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield "127.0.0.1", httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_http_helpers_against_canned_answers(server: tuple[str, int]) -> None:
    host, port = server
    _Handler.replies = {
        "/health": (503, LOADING_503.body),
        "/completion": (500, '{"error":{"code":500,"message":"invalid UTF-8"}}'),
    }
    outcome = poll_health(host, port)
    assert (outcome.kind, outcome.status) == (PollKind.HTTP, 503)
    assert isinstance(outcome.json, dict)
    with pytest.raises(EngineError, match="HTTP 500: invalid UTF-8"):
        send_test_prompt(host, port)
    _Handler.replies["/completion"] = (200, json.dumps({"content": "x"}))
    with pytest.raises(EngineError, match="no timings"):
        send_test_prompt(host, port)
    timings = {"prompt_n": 4, "prompt_per_second": 100.0, "predicted_n": 1,
               "predicted_per_second": 10.0, "prompt_ms": 40.0, "predicted_ms": 100.0}  # fmt: skip
    _Handler.replies["/completion"] = (200, json.dumps({"content": " jumps", "timings": timings}))
    answer = send_test_prompt(host, port, "The quick brown fox")
    assert answer.summary == "1 token at 10.0 tokens/s (prompt: 4 tokens at 100.0 tokens/s)"
    assert answer.total_ms == 140.0


def test_poll_of_a_closed_port_is_refused() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert poll_health("127.0.0.1", port).kind is PollKind.REFUSED
