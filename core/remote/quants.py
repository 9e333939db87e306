"""A repository's GGUF files grouped into quants, and every quant's headers read in parallel.

Repositories lay quants out two ways, often mixed: a folder per quant
(``Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf``) or the quant in the file name
(``DeepSeek-V3-IQ2_KS-00001-of-00005.gguf``, ``model-Q8_0.gguf``). A quant is the shards of one
split stem in one folder; its label is the quant token of the name (else the folder, else the
stem). Projector and imatrix files are not models and are left out.
"""

from __future__ import annotations

import collections
import logging
import re
import shlex
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moe_studio.core.errors import Cancelled, MoeStudioError, UnreachableError
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.reader import IsCancelled, Progress
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import RangeClient
from moe_studio.core.remote.hub import RepoFile, RepoListing
from moe_studio.core.remote.urls import (
    HF_SCHEME,
    parse_remote,
    shard_names,
    split_siblings,
    unsafe_path,
)

log = logging.getLogger(__name__)

# Quants read at once (each reads its shards in parallel too).
PARALLEL_QUANTS = 4

_QUANT = re.compile(
    r"(?i)(?<![A-Za-z0-9])("
    r"(?:UD-)?(?:I?Q\d+_[A-Z0-9]+(?:_[A-Z0-9]+)*|Q\d+_\d|TQ\d_\d|MXFP4(?:_MOE)?|BF16|F16|F32)"
    r")(?![A-Za-z0-9])"
)
_NOT_MODELS = re.compile(r"(?i)(^|/)(mmproj|imatrix)[^/]*$")


@dataclass(frozen=True, slots=True)
class Quant:
    """One quantization of a repository: its shards in order."""

    label: str
    folder: str  # "" at the repository's root
    stem: str  # the file name without -0000N-of-0000M.gguf / .gguf
    files: tuple[RepoFile, ...]
    expected: int  # shards its names promise

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def first(self) -> str:
        return self.files[0].path

    @property
    def complete(self) -> bool:
        return len(self.files) == self.expected

    def include_pattern(self, siblings: Sequence[Quant] | None) -> str:
        """The ``--include`` glob that selects this quant's files and no other's (a whole folder
        only when ``siblings``, the repository's other quants, show that no other is in it)."""
        alone = siblings is not None and all(q is self or q.folder != self.folder for q in siblings)
        if self.folder and alone:
            return f"{self.folder}/*"
        prefix = f"{self.folder}/" if self.folder else ""
        if self.expected > 1:
            return f"{prefix}{self.stem}-*-of-{self.expected:05d}.gguf"
        return self.first


def quant_label(name: str) -> str | None:
    """The quant token of a file or folder name (``Q4_K_M``, ``UD-IQ2_XXS``, ``IQ2_KS``)."""
    found = _QUANT.findall(name)
    return found[-1].upper() if found else None


def group_quants(files: Sequence[RepoFile]) -> list[Quant]:
    """The quants among ``files`` (GGUF files of one repository), largest first."""
    groups: dict[tuple[str, str], list[tuple[int, RepoFile]]] = {}
    counts: dict[tuple[str, str], int] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf") or _NOT_MODELS.search(f.path):
            continue
        if unsafe_path(f.path):
            log.debug("left out a listed file with an unsafe path: %.200r", f.path)
            continue
        folder, _, name = f.path.rpartition("/")
        split = split_siblings(name)
        if split:
            stem, index, count = split
        else:
            stem, index, count = name[: -len(".gguf")], 1, 1
        key = (folder, stem)
        groups.setdefault(key, []).append((index, f))
        counts[key] = max(counts.get(key, 0), count)
    quants = []
    for (folder, stem), members in groups.items():
        members.sort(key=lambda m: m[0])
        label = (
            quant_label(stem)
            or quant_label(folder.rsplit("/", 1)[-1])
            or folder.rsplit("/", 1)[-1]
            or stem
        )
        quants.append(
            Quant(label, folder, stem, tuple(f for _, f in members), counts[(folder, stem)])
        )
    labels = collections.Counter(q.label for q in quants)
    # Two quants with one label (two folders with Q4_K_M files): tell them apart by path.
    quants = [
        q
        if labels[q.label] == 1
        else Quant(f"{q.folder or q.stem}/{q.label}", q.folder, q.stem, q.files, q.expected)
        for q in quants
    ]
    return sorted(quants, key=lambda q: (-q.size, q.label))


def download_command(
    repo: str, quant: Quant, siblings: Sequence[Quant] | None, revision: str
) -> str:
    """The ``hf download`` command that fetches this quant's files and nothing else."""
    argv = ["hf", "download", repo, "--include", quant.include_pattern(siblings)]
    if revision not in ("", "main"):
        argv += ["--revision", revision]
    argv += ["--local-dir", repo.split("/", 1)[1]]
    return shlex.join(argv)


def local_path(repo: str, quant: Quant) -> str:
    """Where :func:`download_command` puts the quant's first shard."""
    return f"{repo.split('/', 1)[1]}/{quant.first}"


def download_hint(source: str) -> tuple[str, str]:
    """The command that downloads the remote model ``source`` (any shard's name) and the path
    of its first shard once downloaded (relative to where the command is run)."""
    ref = parse_remote(source)
    if not ref.is_hub:
        first = ref.url.rsplit("/", 1)[-1]
        split = split_siblings(first)
        names = shard_names(first, split[2]) if split else [first]
        urls = [ref.with_path(n).url for n in names]
        return shlex.join(["curl", "-L", "--remote-name-all", *urls]), names[0]
    folder, _, name = ref.path.rpartition("/")
    split = split_siblings(name)
    names = shard_names(name, split[2]) if split else [name]
    prefix = f"{folder}/" if folder else ""
    files = tuple(RepoFile(prefix + n, 0, "") for n in names)
    stem = split[0] if split else name[: -len(".gguf")]
    quant = Quant(quant_label(stem) or stem, folder, stem, files, len(names))
    return download_command(ref.repo, quant, None, ref.revision), local_path(ref.repo, quant)


@dataclass(frozen=True, slots=True)
class QuantResult:
    """A quant's model, or why it could not be read."""

    quant: Quant
    layout: ModelLayout | None
    error: str = ""


def quant_url(listing: RepoListing, quant: Quant) -> str:
    rev = "" if listing.revision == "main" else f"@{listing.revision}"
    return f"{HF_SCHEME}{listing.repo}{rev}/{quant.first}"


def read_quants(
    listing: RepoListing,
    quants: Sequence[Quant],
    *,
    client: RangeClient,
    cache: HeaderCache | None = None,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
    workers: int = PARALLEL_QUANTS,
    on_result: Callable[[QuantResult], None] | None = None,
) -> list[QuantResult]:
    """Every quant's headers, read in parallel; a quant that fails is kept with its sentence.

    Raises:
        Cancelled: ``cancelled()`` returned true.
        UnreachableError: the network is down.
    """
    from moe_studio.core.remote.model import open_remote_model

    total = sum(len(q.files) for q in quants) or 1
    done = 0
    lock = threading.Lock()

    def shard_done(name: str) -> None:
        nonlocal done
        with lock:
            done += 1
            if progress:
                progress(min(done / total, 1.0), name)

    def one(quant: Quant) -> QuantResult:
        if cancelled and cancelled():
            raise Cancelled
        if not quant.complete:
            result = QuantResult(
                quant,
                None,
                f"only {len(quant.files)} of its {quant.expected} files are in the repository",
            )
        else:
            seen = 0

            def step(fraction: float, name: str) -> None:
                nonlocal seen
                while seen < round(fraction * len(quant.files)):
                    seen += 1
                    shard_done(name)

            try:
                layout = open_remote_model(
                    quant_url(listing, quant),
                    client=client,
                    cache=cache,
                    listing=listing,
                    progress=step,
                    cancelled=cancelled,
                )
                result = QuantResult(quant, layout)
            except UnreachableError:
                raise
            except MoeStudioError as exc:
                result = QuantResult(quant, None, str(exc))
        if on_result:
            on_result(result)
        return result

    with ThreadPoolExecutor(max(1, min(workers, len(quants))), "moe-quants") as pool:
        futures = [pool.submit(one, q) for q in quants]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
