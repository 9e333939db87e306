"""Range reads against a server that lies at the byte level: every answer is a sentence naming
the URL (a RemoteError), read with bounded memory, and never a traceback or a hang."""

from __future__ import annotations

from collections.abc import Iterable

import httpx2
import pytest

from moe_studio.core.errors import RemoteError
from moe_studio.core.remote.http import RangeClient
from tests.support.hostile_http import HostileServer, endless

BODY = b"GGUF" + b"\0" * 60


def _head(status: str, *headers: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()


CASES: dict[str, Iterable[bytes]] = {
    "content-range for other bytes": [
        _head("206 Partial Content", "Content-Range: bytes 5-68/1000", "Content-Length: 64"),
        BODY,
    ],
    "content-range of 5000 digits": [
        _head(
            "206 Partial Content", f"Content-Range: bytes 0-63/{'9' * 5000}", "Content-Length: 64"
        ),
        BODY,
    ],
    "content-range end before start": [
        _head("206 Partial Content", "Content-Range: bytes 0-63/0", "Content-Length: 64"),
        BODY,
    ],
    "no content-range": [_head("206 Partial Content", "Content-Length: 64"), BODY],
    "fewer bytes than promised": [
        _head("206 Partial Content", "Content-Range: bytes 0-63/1000", "Content-Length: 64"),
        BODY[:10],
    ],
    "fewer bytes than asked": [
        _head("206 Partial Content", "Content-Range: bytes 0-9/1000", "Content-Length: 10"),
        BODY[:10],
    ],
    "endless body": [
        _head(
            "206 Partial Content", "Content-Range: bytes 0-63/1000", "Transfer-Encoding: chunked"
        ),
    ],
    "a header of 100 KB": [
        _head("206 Partial Content", "X-Junk: " + "a" * 100_000, "Content-Length: 64"),
        BODY,
    ],
    "not http": [b"SSH-2.0-OpenSSH_9.6\r\n\r\n"],
    "malformed status": [b"HTTP/1.1 2x6 Nope\r\nContent-Length: 0\r\n\r\n"],
    "redirect to itself": [_head("302 Found", "Location: /m.gguf", "Content-Length: 0")],
    "whole file instead of a range": [_head("200 OK", "Content-Length: 99999999999"), BODY],
    "error status with endless page": [
        _head("500 Oops", "Transfer-Encoding: chunked"),
    ],
    "closes at once": [],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_range_answer_is_a_sentence_naming_the_url(case: str) -> None:
    pieces = list(CASES[case])

    def answer(request: bytes) -> Iterable[bytes]:
        yield from pieces
        if case.startswith(("endless", "error status")):
            yield from endless()

    with HostileServer(answer) as server, httpx2.Client(follow_redirects=True) as http:
        url = f"{server.url}/m.gguf"
        client = RangeClient(client=http, timeout=5)
        with pytest.raises(RemoteError) as caught:
            client.get_range(url, 0, 64)
    assert url in str(caught.value)
    assert "Traceback" not in str(caught.value)
    # Bounded: what was read is at most the range plus a network buffer, whatever was sent.
    assert client.traffic.bytes <= 64 + 2**20


def test_bytes_past_content_length_are_not_read() -> None:
    """A server that sends more than its Content-Length: the range is what was promised."""
    head = _head("206 Partial Content", "Content-Range: bytes 0-63/1000", "Content-Length: 64")

    with HostileServer(lambda request: [head, BODY * 100]) as server, httpx2.Client() as http:
        client = RangeClient(client=http, timeout=5)
        chunk = client.get_range(f"{server.url}/m.gguf", 0, 64)
    assert chunk.data == BODY
    assert chunk.size == 1000
