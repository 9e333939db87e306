"""Range requests over huggingface_hub's HTTP client, every failure turned into one sentence.

:class:`RangeClient` asks for byte ranges and refuses anything else: a server that answers a Range
request with the whole file (``200``) is closed before its body is read, so a 50 GB download never
starts. Every request has a timeout; every error names the URL. The client is a parameter of the
remote readers, so tests and the benchmark can count what went over the wire.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from moe_studio.core.errors import RemoteError, UnreachableError

if TYPE_CHECKING:
    import httpx2

log = logging.getLogger(__name__)

# Seconds to connect, and to wait for each read of the answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
# An error page is read for its message only up to this size.
_ERROR_BODY = 64 * 1024
# At most 20 digits (2^64 is 20): a longer number is not a file size, and int() of one over 4,300
# digits raises ValueError.
_CONTENT_RANGE = re.compile(r"bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """The bytes of one Range answer, with what the server said about the whole file."""

    data: bytes
    start: int
    size: int  # of the whole file
    etag: str
    commit: str = ""  # X-Repo-Commit on Hugging Face


@dataclass(slots=True)
class Traffic:
    """What a client sent and received (tests and the benchmark read it)."""

    requests: int = 0
    bytes: int = 0
    by_url: dict[str, int] = field(default_factory=dict)


def _drain(response: httpx2.Response) -> None:
    """Read a short error page, so that the connection can be reused; a long one is left."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) <= _ERROR_BODY:
        response.read()


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


def network_error(url: str, exc: Exception, timeout: float = READ_TIMEOUT) -> RemoteError:
    """A sentence for a failure below HTTP (DNS, refused connection, timeout, broken answer)."""
    import httpx2

    host = host_of(url)
    text = str(exc)
    if isinstance(exc, httpx2.TimeoutException):
        return UnreachableError(
            url,
            f"{host} did not answer within {timeout:g} s while reading {url}; "
            "try again later or check your network.",
        )
    if isinstance(exc, httpx2.ConnectError):
        lowered = text.lower()
        if any(
            s in lowered
            for s in (
                "name or service not known",
                "nodename nor servname",
                "getaddrinfo",
                "name resolution",
                "no address associated",
            )
        ):
            return UnreachableError(
                url,
                f"The host name {host} does not resolve (reading {url}); check the address, "
                "or your network and DNS.",
            )
        return UnreachableError(
            url,
            f"Could not connect to {host} to read {url} ({text or 'connection refused'}); "
            "check your network connection, or open the model once while online so that its "
            "headers are cached.",
        )
    if isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError):
        return RemoteError(
            url,
            f"The connection to {host} broke while reading {url} (the answer was cut short); "
            "try again.",
        )
    if isinstance(exc, httpx2.UnsupportedProtocol | httpx2.InvalidURL):
        return RemoteError(url, f"{url} is not a URL MoE Studio can read ({text}).")
    if type(exc).__name__ == "OfflineModeIsEnabled":
        return UnreachableError(
            url,
            f"Cannot read {url}: HF_HUB_OFFLINE is set and its headers are not in the cache; "
            "unset HF_HUB_OFFLINE or open the model once while online.",
        )
    return RemoteError(url, f"Reading {url} failed: {text or type(exc).__name__}.")


def status_error(url: str, status: int, headers: Mapping[str, str], hf: bool) -> RemoteError:
    """A sentence for an HTTP error status."""
    code = headers.get("x-error-code", "")
    if code == "GatedRepo":
        return RemoteError(
            url,
            f"{url} is in a gated repository: accept its licence on the model's page on "
            "Hugging Face, then log in (hf auth login) or set HF_TOKEN.",
        )
    login = (
        "log in with `hf auth login` or set HF_TOKEN"
        if hf
        else "the server wants credentials MoE Studio cannot send"
    )
    if status == 401:
        what = "the repository is private or does not exist" if hf else "it needs a login"
        return RemoteError(url, f"{url} answered 401 Unauthorized: {what}; {login}.")
    if status == 403:
        return RemoteError(
            url,
            f"{url} answered 403 Forbidden: this account may not read it"
            + ("; accept the licence on the model's page or use another token." if hf else "."),
        )
    if status == 404:
        return RemoteError(
            url, f"{url} was not found (404); check the repository, revision and file name."
        )
    if status == 416:
        return RemoteError(
            url,
            f"{url} refused the byte range MoE Studio asked for (416); the file is shorter "
            "than its header says, or it changed on the server.",
        )
    if status == 412:
        return RemoteError(url, f"{url} changed on the server while it was being read; try again.")
    return RemoteError(url, f"{url} answered HTTP {status}; try again later.")


class RangeClient:
    """Byte ranges of remote files, with timeouts, over one shared connection pool.

    Args:
        headers_for: Extra request headers for a URL (authorization for the Hub's own host only,
            never for another server).
        timeout: Seconds to wait for each read of an answer.
    """

    def __init__(
        self,
        *,
        headers_for: Mapping[str, Mapping[str, str]] | None = None,
        timeout: float = READ_TIMEOUT,
        client: httpx2.Client | None = None,
    ) -> None:
        self._hosts = dict(headers_for or {})
        self.timeout = timeout
        self._client = client
        self._lock = threading.Lock()
        self.traffic = Traffic()

    def _session(self) -> httpx2.Client:
        if self._client is None:
            from huggingface_hub import get_session

            self._client = get_session()
        return self._client

    def _headers(self, url: str) -> dict[str, str]:
        return dict(self._hosts.get(host_of(url), {}))

    def _count(self, url: str, n: int) -> None:
        with self._lock:
            self.traffic.requests += 1
            self.traffic.bytes += n
            self.traffic.by_url[url] = self.traffic.by_url.get(url, 0) + 1

    def get_range(self, url: str, start: int, end: int, *, etag: str = "") -> Chunk:
        """Bytes ``[start, end)`` of ``url`` (fewer at the end of the file).

        ``etag``: what earlier answers for this file said; a different one means the file changed
        while it was being read.

        Raises:
            RemoteError: network, HTTP status, no Range support, a short or changed answer.
        """
        import httpx2

        hf = host_of(url) in self._hosts
        headers = self._headers(url)
        headers["Range"] = f"bytes={start}-{end - 1}"
        headers["Accept-Encoding"] = "identity"
        timeout = httpx2.Timeout(self.timeout, connect=CONNECT_TIMEOUT)
        try:
            with self._session().stream("GET", url, headers=headers, timeout=timeout) as response:
                if response.status_code == 200:
                    # The whole file is coming: close without reading it.
                    self._count(url, 0)
                    raise RemoteError(
                        url,
                        f"{host_of(url)} ignores HTTP Range requests and would send the whole of "
                        f"{url}; MoE Studio reads only the headers, so it cannot use this server "
                        "(download the file and open it locally).",
                    )
                if response.status_code != 206:
                    self._count(url, 0)
                    _drain(response)
                    raise status_error(url, response.status_code, response.headers, hf)
                match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                if not match or match.group(3) == "*" or int(match.group(1)) != start:
                    raise RemoteError(
                        url,
                        f"{host_of(url)} answered a Range request for {url} without a usable "
                        "Content-Range; it cannot be read remotely.",
                    )
                size = int(match.group(3))
                want = min(end, size) - start
                parts = []
                got = 0
                for part in response.iter_raw():
                    parts.append(part)
                    got += len(part)
                    if got > want:
                        break
                data = b"".join(parts)
                new_etag = response.headers.get("etag", "")
                commit = response.headers.get("x-repo-commit", "")
        except RemoteError:
            raise
        except Exception as exc:
            if isinstance(exc, httpx2.HTTPError) or type(exc).__name__ == "OfflineModeIsEnabled":
                raise network_error(url, exc, self.timeout) from None
            raise
        self._count(url, len(data))
        if len(data) != want:
            raise RemoteError(
                url,
                f"{host_of(url)} sent {len(data)} bytes of {url} where {want} were asked for "
                "(a truncated answer); try again.",
            )
        if etag and new_etag and new_etag != etag:
            raise RemoteError(
                url,
                f"{url} changed on the server while it was being read (its ETag went from "
                f"{etag} to {new_etag}); try again.",
            )
        return Chunk(data, start, size, new_etag or etag, commit)
