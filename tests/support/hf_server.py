"""A local stand-in for the Hugging Face Hub and for plain file servers, on 127.0.0.1.

Serves files (sparse header-only GGUFs) with HTTP Range support, answers the routes that
``huggingface_hub`` uses to list a repository (``/api/models/{repo}[/revision/{rev}]`` with
``blobs=True``, ``/api/models/{repo}/tree/{rev}[/{path}]``) and to resolve files
(``/{repo}/resolve/{rev}/{path}``, GET and HEAD with ``X-Repo-Commit``, ``ETag``,
``X-Linked-Size``), and plain files under ``/files/{path}``. Failure modes are switched on per
test: no Range support, an HTTP status, a truncated answer, an ETag or commit that changes, a
server that stops answering until released. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    range: str
    authorization: str = ""
    sent: int = 0


@dataclass
class Behaviour:
    """What the server does wrong, if anything (tests set these)."""

    ranges: bool = True  # False: answer 200 with the whole body
    status: dict[str, int] = field(default_factory=dict)  # path substring → status
    error_code: str = ""  # X-Error-Code sent with a status (GatedRepo, …)
    truncate: str = ""  # path substring: send half the bytes, then close
    etag_changes: str = ""  # path substring: a new ETag on every request
    commit_changes: str = ""  # path substring: resolve answers with another commit
    hang: str = ""  # path substring: wait for `release` before answering
    api_status: int = 0  # status of the listing API
    latency: float = 0.0  # seconds added to every answer (benchmarks only: tests never wait)


@dataclass
class Repo:
    files: dict[str, Path]  # path in repo → local file


class HubServer:
    """``with HubServer() as hub: hub.add_repo(…); HF_ENDPOINT=hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.plain: dict[str, Path] = {}
        self.behaviour = Behaviour()
        self.log: list[Request] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._etag_counter = 0
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: str, files: dict[str, Path]) -> None:
        self.repos[repo] = Repo(dict(files))

    def add_plain(self, files: dict[str, Path]) -> None:
        self.plain.update(files)

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{name}"

    def file_requests(self) -> list[Request]:
        """Requests for file bytes (resolve and plain), not the listing API."""
        return [r for r in self.log if "/resolve/" in r.path or r.path.startswith("/files/")]

    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.file_requests())

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def etag_of(self, path: Path, key: str) -> str:
        if self.behaviour.etag_changes and self.behaviour.etag_changes in key:
            with self._lock:
                self._etag_counter += 1
                return f'"changed-{self._etag_counter}"'
        return f'"{version_of(path)}"'


class _Quiet(ThreadingHTTPServer):
    """A client that hangs up early (a refused 200, an error page left unread) is no error."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def version_of(path: Path) -> str:
    """The file's "sha256" as the listing reports it: a hash of its size and header."""
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 16))
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _send_json(self, value: object, status: int = 200, headers: dict[str, str] | None = None):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, status: int) -> None:
        headers = (
            {"X-Error-Code": self.hub.behaviour.error_code} if self.hub.behaviour.error_code else {}
        )
        self._send_json({"error": f"status {status}"}, status, headers)

    def _serve(self, head: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        request = Request(
            self.command, path, self.headers.get("Range", ""), self.headers.get("Authorization", "")
        )
        with self.hub._lock:
            self.hub.log.append(request)
        b = self.hub.behaviour
        if b.latency:
            time.sleep(b.latency)
        if b.hang and b.hang in path:
            self.hub.release.wait()
        for key, status in b.status.items():
            if key in path:
                self._fail(status)
                return
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/") :], parse_qs(split.query))
            return
        if path.startswith("/files/"):
            local = self.hub.plain.get(path[len("/files/") :])
            if local is None:
                self._fail(404)
                return
            self._file(local, path, head, request, {})
            return
        parts = path.lstrip("/").split("/", 4)
        if len(parts) == 5 and parts[2] == "resolve":
            repo = self.hub.repos.get(f"{parts[0]}/{parts[1]}")
            local = repo.files.get(parts[4]) if repo else None
            if local is None:
                self._send_json(
                    {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"}
                )
                return
            commit = COMMIT
            if b.commit_changes and b.commit_changes in path:
                commit = "f" * 40
            version = version_of(local)
            extra = {
                "X-Repo-Commit": commit,
                "X-Linked-Size": str(local.stat().st_size),
                "X-Linked-Etag": f'"{version}"',
            }
            self._file(local, path, head, request, extra)
            return
        self._fail(404)

    def _api(self, rest: str, query: dict[str, list[str]]) -> None:
        b = self.hub.behaviour
        if b.api_status:
            self._fail(b.api_status)
            return
        parts = rest.split("/")
        repo_id = "/".join(parts[:2])
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._send_json(
                {"error": "Repository not found"}, 401, {"X-Error-Code": "RepoNotFound"}
            )
            return
        tail = parts[2:]
        if not tail or tail[0] == "revision":
            siblings = [
                {
                    "rfilename": name,
                    "size": local.stat().st_size,
                    "blobId": version_of(local)[:40],
                    "lfs": {
                        "size": local.stat().st_size,
                        "sha256": version_of(local),
                        "pointerSize": 134,
                    },
                }
                for name, local in sorted(repo.files.items())
            ]
            self._send_json({"id": repo_id, "sha": COMMIT, "siblings": siblings, "private": False})
            return
        if tail[0] == "tree":
            prefix = "/".join(tail[2:])
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": local.stat().st_size,
                    "oid": version_of(local)[:40],
                    "lfs": {
                        "oid": version_of(local),
                        "size": local.stat().st_size,
                        "pointerSize": 134,
                    },
                }
                for name, local in sorted(repo.files.items())
                if name.startswith(prefix)
            ]
            self._send_json(entries)
            return
        self._fail(404)

    def _file(
        self, local: Path, key: str, head: bool, request: Request, extra: dict[str, str]
    ) -> None:
        b = self.hub.behaviour
        size = local.stat().st_size
        etag = self.hub.etag_of(local, key)
        wanted = self.headers.get("Range", "")
        start, end = 0, size
        status = 200
        if wanted.startswith("bytes=") and b.ranges and not head:
            first, _, last = wanted[6:].partition("-")
            start = int(first)
            end = min(size, int(last) + 1) if last else size
            if start >= size:
                self._fail(416)
                return
            status = 206
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        count = end - start
        if b.truncate and b.truncate in key:
            count //= 2
            self.close_connection = True
        try:
            with local.open("rb") as f:
                f.seek(start)
                while count > 0:
                    chunk = f.read(min(count, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    request.sent += len(chunk)
                    count -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
