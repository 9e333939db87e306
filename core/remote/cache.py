"""Remote headers kept on disk, so that a model opened once reopens offline and instantly.

One file per remote file version, named by a hash of the URL and the version (ETag, or the
Hub's LFS hash, and the size): ``<hash>.gguf-header`` holds the header bytes, and
``<hash>.json`` what they came from. A lookup by URL alone (the newest entry) serves offline
reopening; a lookup by URL and version serves a listing that already told us the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from moe_studio.core.errors import MoeStudioError
from moe_studio.core.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("moe-studio")/remote-headers``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("moe-studio")) / "remote-headers"


@dataclass(frozen=True, slots=True)
class CachedHeader:
    url: str
    etag: str
    size: int
    commit: str
    prefix: bytes


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class HeaderCache:
    """Header bytes by URL and version; every failure to read or write it is only logged."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _paths(self, url: str, etag: str, size: int) -> tuple[Path, Path]:
        stem = _key(f"{url}\n{etag}\n{size}")
        return self.folder / f"{stem}.gguf-header", self.folder / f"{stem}.json"

    def _latest_path(self, url: str) -> Path:
        return self.folder / f"{_key(url)}.latest"

    def get(self, url: str, etag: str, size: int) -> CachedHeader | None:
        """The header of this version of ``url``, if cached."""
        data_path, meta_path = self._paths(url, etag, size)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            prefix = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if len(prefix) != meta.get("length"):
            log.debug("cache entry %s is incomplete", data_path)
            return None
        return CachedHeader(url, etag, size, str(meta.get("commit", "")), prefix)

    def latest(self, url: str) -> CachedHeader | None:
        """The newest cached version of ``url`` (for reopening offline)."""
        try:
            meta = json.loads(self._latest_path(url).read_text(encoding="utf-8"))
            etag, size = str(meta["etag"]), int(meta["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self.get(url, etag, size)

    def put(self, url: str, etag: str, size: int, commit: str, prefix: bytes) -> None:
        data_path, meta_path = self._paths(url, etag, size)
        meta = {"url": url, "etag": etag, "size": size, "commit": commit, "length": len(prefix)}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(data_path, prefix, backup=False)
            atomic_write_bytes(meta_path, json.dumps(meta).encode(), backup=False)
            atomic_write_bytes(
                self._latest_path(url),
                json.dumps({"etag": etag, "size": size}).encode(),
                backup=False,
            )
        except (OSError, MoeStudioError) as exc:
            log.warning("could not cache the header of %s: %s", url, exc)
