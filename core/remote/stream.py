"""A remote GGUF file as a read-only binary stream that fetches only its header.

:class:`HeaderStream` is what the GGUF reader reads: a seekable stream over a contiguous prefix of
the remote file. A read past what it holds fetches, in one Range request, as far as
:func:`~moe_studio.core.gguf.extent.header_extent` says the header goes (plus a little slack), so
a DeepSeek-V3 shard costs two requests: a first window, then the rest of its header.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from moe_studio.core.gguf.extent import header_extent
from moe_studio.core.remote.http import Chunk

# First window: enough for a whole shard header without a tokenizer (a tensor table of a few
# hundred records), a small part of one with a tokenizer.
FIRST_WINDOW = 64 * 1024
NEXT_WINDOW = 16 * 1024
# Over an estimate: a little more, so that a close estimate needs no third request.
_SLACK = 1.02
_MIN_STEP = 4096

Fetch = Callable[[int, int], Chunk]


class HeaderStream(io.RawIOBase):
    """The first bytes of a remote file, fetched on demand; ``name`` is its URL."""

    def __init__(self, url: str, fetch: Fetch | None, first: Chunk) -> None:
        super().__init__()
        self.name = url
        self._fetch = fetch
        self._data = bytearray(first.data)
        self.size = first.size
        self.etag = first.etag
        self.commit = first.commit
        self._pos = 0
        self.requests = 1 if fetch is not None else 0

    @classmethod
    def cached(cls, url: str, prefix: bytes, size: int, etag: str) -> HeaderStream:
        """A stream over a cached prefix that never goes to the network."""
        return cls(url, None, Chunk(prefix, 0, size, etag))

    @property
    def prefix(self) -> bytes:
        return bytes(self._data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self.size + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self.size:
            return 0
        if self._pos >= len(self._data):
            self._grow(self._pos + 1)
        n = min(len(buffer), len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def _grow(self, at_least: int) -> None:
        if self._fetch is None:
            raise OSError(
                f"the cached header of {self.name} ends at byte {len(self._data)}; "
                "reopen it online to refresh the cache"
            )
        extent = header_extent(bytes(self._data))
        target = extent.end if extent.exact else int(extent.end * _SLACK)
        have = len(self._data)
        target = min(self.size, max(target, at_least, have + _MIN_STEP))
        chunk = self._fetch(have, target)
        self.requests += 1
        self._data += chunk.data
