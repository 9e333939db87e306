"""Open a remote model's headers (every shard) as a :class:`ModelLayout`, never its tensor data.

Hugging Face files are listed first (one API call gives every shard's size and version, and the
commit the revision points to); each shard is then read at that commit, so the files cannot
change under us, and a cached header of the same version costs no request at all. Plain URLs are
read shard by shard; a cached header is checked with a one-byte request. Offline, the newest
cached header of each URL is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, cast

from moe_studio.core.errors import Cancelled, RemoteError, UnreachableError
from moe_studio.core.gguf.model import ModelLayout, layout_from_gguf
from moe_studio.core.gguf.reader import (
    GGUFHeader,
    IsCancelled,
    Progress,
    assemble_model,
    read_header,
)
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import Chunk, RangeClient
from moe_studio.core.remote.hub import RepoListing, hub_client, list_repo
from moe_studio.core.remote.stream import FIRST_WINDOW, NEXT_WINDOW, HeaderStream
from moe_studio.core.remote.urls import (
    RemoteRef,
    is_remote,
    parse_remote,
    shard_names,
    split_siblings,
)

log = logging.getLogger(__name__)

# Shards read at once.
PARALLEL = 8


@dataclass(frozen=True, slots=True)
class Shard:
    """One file to read: where its bytes are, its name for the user, and what a listing knew."""

    url: str
    name: str  # the display name, also the cache key
    size: int = 0
    version: str = ""
    commit: str = ""


def _parse(stream: HeaderStream) -> GGUFHeader:
    return read_header(cast(BinaryIO, stream))


def read_shard(
    shard: Shard,
    client: RangeClient,
    cache: HeaderCache | None,
    *,
    first_window: int = FIRST_WINDOW,
) -> GGUFHeader:
    """The header of one remote file, from the cache when its version is known and cached.

    Raises:
        RemoteError: it cannot be read (network, status, no Range support, changed).
        ModelFileError: the bytes are not a GGUF header.
    """
    if cache is not None and shard.version:
        hit = cache.get(shard.name, shard.version, shard.size)
        if hit is not None:
            return _parse(HeaderStream.cached(shard.name, hit.prefix, hit.size, hit.etag))
    stale = cache.latest(shard.name) if cache is not None and not shard.version else None
    try:
        if stale is not None:
            probe = client.get_range(shard.url, 0, 1)
            if probe.size == stale.size and probe.etag and probe.etag == stale.etag:
                return _parse(HeaderStream.cached(shard.name, stale.prefix, stale.size, stale.etag))
        first = client.get_range(shard.url, 0, first_window)
    except RemoteError as exc:
        offline = cache.latest(shard.name) if cache is not None else None
        if offline is None or not isinstance(exc, UnreachableError):
            raise
        log.warning("%s; using its cached header", exc)
        return _parse(HeaderStream.cached(shard.name, offline.prefix, offline.size, offline.etag))
    if shard.commit and first.commit and first.commit != shard.commit:
        raise RemoteError(
            shard.url,
            f"{shard.name} changed on the server while the model was being read (the repository "
            f"moved from commit {shard.commit[:12]} to {first.commit[:12]}); try again.",
        )
    version = shard.version or first.etag

    def fetch(start: int, end: int) -> Chunk:
        return client.get_range(shard.url, start, end, etag=first.etag)

    stream = HeaderStream(shard.name, fetch, first)
    header = _parse(stream)
    if cache is not None and version:
        cache.put(shard.name, version, first.size, first.commit, stream.prefix[: header.data_start])
    return header


def model_shards(ref: RemoteRef, listing: RepoListing | None) -> list[Shard]:
    """Every shard of the model ``ref`` belongs to (found by gguf-split's naming)."""
    name = ref.path if ref.is_hub else ref.url.rsplit("/", 1)[-1]
    split = split_siblings(name)
    names = shard_names(name, split[2]) if split else [name]
    if not ref.is_hub:
        refs = [ref.with_path(n) for n in names]
        return [Shard(r.url, r.url) for r in refs]
    shards = []
    for path in names:
        pinned = ref.with_path(path)
        entry = listing.file(path) if listing else None
        if listing is not None:
            if entry is None:
                missing = [n for n in names if listing.file(n) is None]
                raise RemoteError(
                    pinned.display,
                    f"{pinned.display} is not in {ref.repo} at {ref.revision} "
                    f"({len(missing)} of the model's {len(names)} files are missing); check the "
                    "file name, or run `moe-studio compare "
                    f"{ref.repo}` to see its quants.",
                )
            read_at = pinned.at_revision(listing.commit)
            shards.append(
                Shard(read_at.url, pinned.display, entry.size, entry.version, listing.commit)
            )
        else:
            shards.append(Shard(pinned.url, pinned.display))
    return shards


def read_shards(
    shards: Sequence[Shard],
    client: RangeClient,
    cache: HeaderCache | None,
    *,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
) -> ModelLayout:
    """Read every shard (in parallel) and assemble the model."""
    done = 0
    lock = threading.Lock()

    def one(index: int) -> GGUFHeader:
        nonlocal done
        if cancelled and cancelled():
            raise Cancelled
        window = FIRST_WINDOW if index == 0 else NEXT_WINDOW
        header = read_shard(shards[index], client, cache, first_window=window)
        with lock:
            done += 1
            if progress:
                progress(done / len(shards), shards[index].name.rsplit("/", 1)[-1])
        return header

    if len(shards) == 1:
        headers = [one(0)]
    else:
        with ThreadPoolExecutor(min(PARALLEL, len(shards)), "moe-remote") as pool:
            futures = [pool.submit(one, i) for i in range(len(shards))]
            try:
                headers = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return layout_from_gguf(assemble_model(headers))


def open_remote_model(
    spec: str,
    *,
    client: RangeClient | None = None,
    cache: HeaderCache | None = None,
    listing: RepoListing | None = None,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
) -> ModelLayout:
    """Open the model at a remote name (see :func:`~moe_studio.core.remote.urls.parse_remote`).

    Raises:
        RemoteError: the name, the repository or a file cannot be used, as a sentence.
        ModelFileError: the headers are not a model's.
        Cancelled: ``cancelled()`` returned true.
    """
    ref = parse_remote(spec)
    cache = cache if cache is not None else HeaderCache()
    if ref.is_hub:
        client = client or hub_client()
        if listing is None:
            try:
                listing = list_repo(ref.repo, ref.revision)
            except RemoteError as exc:
                if not isinstance(exc, UnreachableError):
                    raise
                # Offline: the cached headers of every shard, or the network error.
                log.warning("%s; trying the cached headers", exc)
                return read_shards(model_shards(ref, None), _Offline(exc), cache)
    else:
        client = client or RangeClient()
    return read_shards(
        model_shards(ref, listing), client, cache, progress=progress, cancelled=cancelled
    )


class _Offline(RangeClient):
    """A client for when the network is known to be down: every request fails with its error."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__()
        self._error = error

    def get_range(self, url: str, start: int, end: int, *, etag: str = "") -> Chunk:
        raise self._error


def load(spec: str, **kwargs: object) -> ModelLayout:
    """A model by local path, ``catalog:NAME[@RECIPE]`` or remote name."""
    if is_remote(spec):
        return open_remote_model(spec, **kwargs)  # type: ignore[arg-type]
    from moe_studio.core.gguf import catalog

    return catalog.load(spec, **kwargs)
