"""A hostile HTTP server on 127.0.0.1: each connection gets raw bytes scripted by the test.

Where :mod:`tests.support.hf_server` is a well-behaved Hub with switchable faults, this one lies
at the byte level: a Content-Range for other bytes, more or fewer bytes than promised, a body
that never ends, a header of 100 KB, a status line that is not HTTP, a redirect to itself.
``answer(request_bytes) -> Iterable[bytes]`` writes the reply piece by piece; a piece the client
no longer reads (it closed the connection) ends the reply.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator

Answer = Callable[[bytes], Iterable[bytes]]


class HostileServer:
    """``with HostileServer(answer) as srv: srv.url``; ``answer`` answers every connection."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() below (close alone does not)
        self._sock.close()
        self._accept.join()
        for t in self._threads:
            t.join()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            try:
                for piece in self.answer(request):
                    if self._stop.is_set():
                        return
                    conn.sendall(piece)
                    self.sent += len(piece)
            except OSError:
                return  # the client closed the connection: what a bounded reader does


def endless(chunk: bytes = b"x" * 65536) -> Iterator[bytes]:
    """A chunked body that never ends (until the client hangs up)."""
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while True:
        yield frame
