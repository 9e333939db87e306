"""The streamed reply of a prompt (issue 11 item 9): a real ik_llama.cpp SSE stream
(tests/data/logs/ik/chat_stream.sse, ``POST /v1/chat/completions`` with ``"stream": true``) gives
its text piece by piece and the server's speeds; errors and cancelling end it with a sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.engine.chat import collect_reply, sse_events
from moe_studio.core.errors import Cancelled, EngineError

STREAM = Path(__file__).resolve().parents[1] / "data" / "logs" / "ik" / "chat_stream.sse"


def test_a_real_ik_stream_gives_pieces_and_the_servers_timings() -> None:
    raw = STREAM.read_bytes().splitlines(keepends=True)
    pieces: list[str] = []
    result = collect_reply(sse_events(raw), pieces.append)
    assert len(pieces) == 4 and all(pieces)
    assert result.content == "".join(pieces)
    final = json.loads(next(ln for ln in reversed(raw) if b'"timings"' in ln)[len(b"data: ") :])
    timings = final["timings"]
    assert result.predicted_tokens == timings["predicted_n"] == 4
    assert result.predicted_tokens_per_second == pytest.approx(timings["predicted_per_second"])
    assert result.prompt_tokens == timings["prompt_n"]


def test_completion_stream_format_and_done_marker() -> None:
    lines = [
        b'data: {"content":" v","stop":false,"id_slot":0}\n',
        b"\n",
        b": keep-alive comment\n",
        b'data: {"content":" ve","stop":false,"id_slot":0}\n',
        b'data: {"content":"","stop":true,'
        b'"timings":{"predicted_n":2,"predicted_per_second":9.5}}\n',
        b"data: [DONE]\n",
        b'data: {"content":"after the end"}\n',
    ]
    result = collect_reply(sse_events(lines))
    assert result.content == " v ve"
    assert result.predicted_tokens_per_second == 9.5


def test_an_error_event_and_cancelling_end_the_reply() -> None:
    error = [b'data: {"error":{"code":500,"message":"context full"}}\n']
    with pytest.raises(EngineError, match="context full"):
        collect_reply(sse_events(error))
    raw = STREAM.read_bytes().splitlines(keepends=True)
    with pytest.raises(Cancelled):
        collect_reply(sse_events(raw), cancelled=lambda: True)
