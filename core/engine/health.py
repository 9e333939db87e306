"""Is the server up? A small state machine fed with log events and /health answers, and a tiny
HTTP client for ``/health``, ``/completion`` (the test prompt) and ``/metrics``.

The two engines answer differently while they load (engines.md §6, §11):

- ik_llama.cpp binds its port before loading but accepts connections only afterwards: first
  *connection refused*, then requests that hang until the model is loaded, then 200
  ``{"status":"ok",…}``. It never answers 503.
- mainline llama.cpp serves from the start and answers 503 ``Loading model`` until it is ready.

So the monitor polls ``/health`` with a short timeout and reads progress from the log
(:mod:`moe_studio.core.engine.log_parser`); a poll that times out is "still loading", not an error.

States (:class:`Phase`)::

    STARTING ──(log: metadata, buffers, dots │ poll: hang or 503)──▶ LOADING(progress)
    STARTING/LOADING ──(poll: 200 ok │ log: model loaded + listening)──▶ READY
    any live state ──(stop requested)──▶ STOPPING
    any ──(log: a failure)──▶ FAILED (the process will end; its exit keeps FAILED)
    any ──(exit: requested stop or status 0 after ready)──▶ STOPPED
    any ──(exit: otherwise)──▶ FAILED

FAILED and STOPPED are final. Polls never move the state backwards: a refused poll after READY
means the process is ending, which its exit will tell.
"""

from __future__ import annotations

import http.client
import json
import math
import re
from dataclasses import dataclass, replace
from enum import StrEnum

from moe_studio.core.engine.launch import ExitInfo, ExitKind, connect_host
from moe_studio.core.engine.log_events import (
    BufferSize,
    Event,
    Failure,
    KvTotal,
    LayersOffloaded,
    Listening,
    LoadProgress,
    MetadataLoaded,
    ModelLoaded,
    TensorOverride,
)
from moe_studio.core.errors import EngineError

HEALTH_TIMEOUT = 0.5


class Phase(StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Phase.STOPPED, Phase.FAILED)


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Where a launch stands.

    Attributes:
        phase: The state.
        progress: 0–1 while loading (None: unknown, e.g. mainline without loader lines).
        detail: A short sentence for the status line ("loading tensors", "no slot available").
        failure: The log's failure, when the engine reported one.
        exit: How the process ended, once it did.
    """

    phase: Phase = Phase.STARTING
    progress: float | None = None
    detail: str = "starting"
    failure: Failure | None = None
    exit: ExitInfo | None = None

    @property
    def label(self) -> str:
        if self.phase is Phase.LOADING and self.progress is not None:
            return f"loading ({self.progress * 100:.0f} %)"
        return self.phase.value


class PollKind(StrEnum):
    REFUSED = "refused"  # nothing accepts connections (yet, or any more)
    TIMEOUT = "timeout"  # connected, no answer in time: ik while it loads
    HTTP = "http"  # an answer
    ERROR = "error"  # another network error (reset, unreachable)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """The result of one ``/health`` request."""

    kind: PollKind
    status: int | None = None
    body: str = ""

    @property
    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


# Share of the progress bar before and after the tensor-data dots.
_BEFORE_DOTS = 0.05
_DOTS = 0.85


class HealthTracker:
    """Pure state machine: feed it log events, poll outcomes and the exit; read :attr:`status`.

    Every ``on_*`` method returns True when :attr:`status` changed.
    """

    def __init__(self) -> None:
        self.status = HealthStatus()
        self._model_loaded = False
        self._listening = False

    def _set(self, **changes: object) -> bool:
        new = replace(self.status, **changes)  # type: ignore[arg-type]
        if new == self.status:
            return False
        self.status = new
        return True

    def _loading(self, progress: float | None, detail: str) -> bool:
        s = self.status
        if s.phase not in (Phase.STARTING, Phase.LOADING):
            return False
        if progress is not None and s.progress is not None:
            progress = max(progress, s.progress)  # never backwards
        elif progress is None:
            progress = s.progress
        return self._set(phase=Phase.LOADING, progress=progress, detail=detail)

    def on_event(self, event: Event) -> bool:
        """A log event from :class:`moe_studio.core.engine.log_parser.EngineLogParser`."""
        if self.status.phase.final:
            return False
        if isinstance(event, Failure):
            if event.benign_after_stop or self.status.failure is not None:
                return False  # ik's abort at exit; or a later line of the same failure
            return self._set(phase=Phase.FAILED, failure=event, detail=event.describe())
        if isinstance(event, MetadataLoaded):
            return self._loading(0.02, "reading the model")
        if isinstance(event, (TensorOverride, LayersOffloaded)):
            return self._loading(_BEFORE_DOTS, "placing tensors")
        if isinstance(event, BufferSize):
            stage = {
                "model": (_BEFORE_DOTS, "loading tensors"),
                "kv": (_BEFORE_DOTS + _DOTS + 0.03, "allocating the KV cache"),
                "output": (_BEFORE_DOTS + _DOTS + 0.03, "allocating the KV cache"),
                "compute": (0.97, "reserving compute buffers"),
            }[event.kind.value]
            return self._loading(*stage)
        if isinstance(event, LoadProgress):
            return self._loading(_BEFORE_DOTS + _DOTS * event.fraction, "loading tensors")
        if isinstance(event, KvTotal):
            return self._loading(0.93, "allocating the KV cache")
        if isinstance(event, ModelLoaded):
            self._model_loaded = True
        elif isinstance(event, Listening):
            self._listening = True
        else:
            return False
        if self._model_loaded and self._listening:
            return self._ready("listening")
        return self._loading(None, "model loaded" if self._model_loaded else self.status.detail)

    def _ready(self, detail: str) -> bool:
        if self.status.phase not in (Phase.STARTING, Phase.LOADING, Phase.READY):
            return False
        return self._set(phase=Phase.READY, progress=1.0, detail=detail)

    def on_poll(self, outcome: PollOutcome) -> bool:
        """The outcome of one ``/health`` poll."""
        phase = self.status.phase
        if phase.final or phase is Phase.STOPPING:
            return False
        if outcome.kind is PollKind.TIMEOUT:
            # ik accepted the connection but answers only once loaded.
            return self._loading(None, "loading (the server answers when loaded)")
        if outcome.kind is not PollKind.HTTP:
            return False
        body = outcome.json
        status_text = body.get("status") if isinstance(body, dict) else None
        if outcome.status == 200:
            if status_text == "no slot available":
                return self._ready("busy: no slot available")
            return self._ready("ready")
        if outcome.status == 503:
            if phase is Phase.READY:
                return self._set(detail="busy: no slot available")
            return self._loading(None, "loading (the server says so)")
        if outcome.status == 500 and phase is not Phase.READY:
            message = _error_message(body) or "the model failed to load"
            return self._set(phase=Phase.FAILED, detail=f"The server says: {message}.")
        return False

    def on_stop_requested(self) -> bool:
        if self.status.phase.final:
            return False
        return self._set(phase=Phase.STOPPING, detail="stopping")

    def on_exit(self, info: ExitInfo) -> bool:
        """The process ended."""
        s = self.status
        if s.exit is not None:
            return False
        if s.phase is Phase.FAILED:
            return self._set(exit=info)
        if info.kind is ExitKind.STOPPED:
            return self._set(phase=Phase.STOPPED, exit=info, detail=info.message)
        if info.kind is ExitKind.EXITED and s.phase in (Phase.READY, Phase.STOPPING):
            return self._set(phase=Phase.STOPPED, exit=info, detail=info.message)
        detail = info.message
        if info.kind is ExitKind.EXITED:
            detail = "llama-server ended before it was ready (status 0)."
        return self._set(phase=Phase.FAILED, exit=info, detail=detail)


def _error_message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return ""


# --- HTTP -----------------------------------------------------------------------------------------


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: object | None,
    timeout: float,
    api_key: str = "",
) -> tuple[int, str]:
    conn = http.client.HTTPConnection(connect_host(host), port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def poll_health(
    host: str, port: int, *, timeout: float = HEALTH_TIMEOUT, api_key: str = ""
) -> PollOutcome:
    """One ``GET /health`` with a short timeout; never raises.

    ``/health`` is public in both engines even with ``--api-key``; the key is sent anyway
    (``Authorization: Bearer``), so a server or proxy that guards it still answers.
    """
    try:
        status, text = _request(host, port, "GET", "/health", None, timeout, api_key)
    except ConnectionRefusedError:
        return PollOutcome(PollKind.REFUSED)
    except TimeoutError:
        return PollOutcome(PollKind.TIMEOUT)
    except (OSError, http.client.HTTPException) as exc:
        return PollOutcome(PollKind.ERROR, body=str(exc))
    return PollOutcome(PollKind.HTTP, status, text)


@dataclass(frozen=True, slots=True)
class PromptResult:
    """What a test prompt measured (from the server's ``timings``)."""

    content: str
    prompt_tokens: int
    prompt_tokens_per_second: float
    predicted_tokens: int
    predicted_tokens_per_second: float
    total_ms: float

    @property
    def summary(self) -> str:
        def rate(x: float) -> str:
            return f"{x:.1f}" if math.isfinite(x) else "–"

        def tokens(n: int) -> str:
            return f"{n} token{'' if n == 1 else 's'}"

        return (
            f"{tokens(self.predicted_tokens)} at {rate(self.predicted_tokens_per_second)} "
            f"tokens/s (prompt: {tokens(self.prompt_tokens)} at "
            f"{rate(self.prompt_tokens_per_second)} tokens/s)"
        )


def _number(d: dict[str, object], key: str) -> float:
    value = d.get(key)
    try:
        return float(value) if isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int too large for a float
        return math.inf


def _count(d: dict[str, object], key: str) -> int:
    """A token count; 0 when the server sent none, or no finite number."""
    value = _number(d, key)
    return int(value) if math.isfinite(value) else 0


def send_test_prompt(
    host: str,
    port: int,
    prompt: str = "The quick brown fox",
    *,
    n_predict: int = 32,
    timeout: float = 300.0,
    api_key: str = "",
) -> PromptResult:
    """Send one completion and return its speeds (with ``api_key`` as a Bearer token if given).

    Raises:
        EngineError: the server did not answer, answered an error, or gave no timings.
    """
    body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": False}
    try:
        status, text = _request(host, port, "POST", "/completion", body, timeout, api_key)
    except (OSError, http.client.HTTPException) as exc:
        raise EngineError(f"The test prompt got no answer from {host}:{port}: {exc}.") from exc
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if status == 401:
        raise EngineError(
            "The server refused the test prompt (HTTP 401, invalid API key): it was started "
            "with an --api-key other than the one MoE Studio sent."
        )
    if status != 200 or not isinstance(data, dict):
        message = _error_message(data) or text[:200]
        raise EngineError(f"The test prompt failed with HTTP {status}: {message}")
    timings = data.get("timings")
    if not isinstance(timings, dict):
        raise EngineError("The server's answer to the test prompt has no timings.")
    return result_from_timings(str(data.get("content", "")), timings)


def result_from_timings(content: str, timings: dict[str, object]) -> PromptResult:
    """A :class:`PromptResult` from the server's ``timings`` object (both engines write one)."""
    return PromptResult(
        content=content,
        prompt_tokens=_count(timings, "prompt_n"),
        prompt_tokens_per_second=_number(timings, "prompt_per_second"),
        predicted_tokens=_count(timings, "predicted_n"),
        predicted_tokens_per_second=_number(timings, "predicted_per_second"),
        total_ms=_number(timings, "prompt_ms") + _number(timings, "predicted_ms"),
    )


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text (``llamacpp:prompt_tokens_total 42``) → name (with labels) → value."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            out[m.group(1)] = float(m.group(2))
        except ValueError:
            continue
    return out


def fetch_metrics(
    host: str, port: int, *, timeout: float = 2.0, api_key: str = ""
) -> dict[str, float]:
    """``GET /metrics`` parsed.

    Raises:
        EngineError: no answer, or the server runs without ``--metrics``.
    """
    try:
        status, text = _request(host, port, "GET", "/metrics", None, timeout, api_key)
    except (OSError, http.client.HTTPException) as exc:
        raise EngineError(f"/metrics got no answer from {host}:{port}: {exc}.") from exc
    if status != 200:
        raise EngineError(
            f"/metrics answered HTTP {status}; start the server with --metrics to read it."
        )
    return parse_metrics(text)
