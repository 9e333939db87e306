"""One chat prompt to a running llama-server, with the reply streamed as it is generated.

``POST /v1/chat/completions`` with ``"stream": true`` answers Server-Sent Events, one
``data: {json}`` line per token and a blank line after each, ending with ``data: [DONE]``
(ik_llama.cpp and mainline alike; the chat template of the model is applied by the server). Each
event's ``choices[0].delta.content`` is the next piece of text; the last event before
``[DONE]`` carries ``finish_reason`` and the server's ``timings`` (tokens and tokens/s of the
prompt and the generation). A real ik_llama.cpp stream, abridged::

    data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant",…}}],…}
    data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" coul"}}],…}
    data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],…,"timings":{"prompt_n":41,…}}
    data: [DONE]
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable, Iterable, Iterator

from moe_studio.core.engine.health import PromptResult, result_from_timings
from moe_studio.core.engine.launch import connect_host
from moe_studio.core.errors import Cancelled, EngineError

DEFAULT_MAX_TOKENS = 256


def sse_events(lines: Iterable[bytes]) -> Iterator[object]:
    """The JSON payloads of an SSE stream's ``data:`` lines, up to ``data: [DONE]``."""
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, ": comments", "event:" lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode
            continue
        yield event


def _delta_text(event: dict[str, object]) -> str:
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
        return ""
    content = event.get("content")  # /completion's stream format
    return content if isinstance(content, str) else ""


def collect_reply(
    events: Iterable[object],
    on_text: Callable[[str], None] = lambda text: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> PromptResult:
    """Feed each piece of text to ``on_text`` and return the whole reply with its timings.

    Raises:
        EngineError: the server reported an error in the stream.
        Cancelled: ``cancelled()`` turned true (checked after every event).
    """
    parts: list[str] = []
    timings: dict[str, object] | None = None
    for event in events:
        if cancelled():
            raise Cancelled("The prompt was stopped.")
        if not isinstance(event, dict):
            continue
        error = event.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(f"The server stopped the reply: {message}")
        text = _delta_text(event)
        if text:
            parts.append(text)
            on_text(text)
        found = event.get("timings")
        if isinstance(found, dict):
            timings = found
    content = "".join(parts)
    if timings is None:
        return PromptResult(content, 0, math.nan, 0, math.nan, math.nan)
    return result_from_timings(content, timings)


def stream_chat(
    host: str,
    port: int,
    prompt: str,
    *,
    on_text: Callable[[str], None] = lambda text: None,
    cancelled: Callable[[], bool] = lambda: False,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    timeout: float = 300.0,
    api_key: str = "",
) -> PromptResult:
    """Send ``prompt`` as one user message; ``on_text`` gets the reply piece by piece (on the
    calling thread), ``api_key`` goes as a Bearer token when given. Returns the whole reply and
    the server's speeds.

    Raises:
        EngineError: no answer, or an HTTP error (with the server's message).
        Cancelled: ``cancelled()`` turned true; the connection is closed, which stops the
            generation on the server.
    """
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    conn = http.client.HTTPConnection(connect_host(host), port, timeout=timeout)
    try:
        try:
            conn.request(
                "POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers=headers
            )
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError(f"The prompt got no answer from {host}:{port}: {exc}.") from exc
        if response.status != 200:
            text = response.read().decode("utf-8", "replace")
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else text[:200]
            raise EngineError(f"The prompt failed with HTTP {response.status}: {message}")
        try:
            return collect_reply(sse_events(iter(response.readline, b"")), on_text, cancelled)
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError(f"The reply from {host}:{port} broke off: {exc}.") from exc
    finally:
        conn.close()
