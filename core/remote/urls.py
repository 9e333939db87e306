"""What a remote model name means: ``hf://OWNER/REPO[@REV]/PATH.gguf``, a Hugging Face web or
resolve URL, or any ``https://…gguf`` URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from moe_studio.core.errors import RemoteError

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def hub_endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT`` as set now, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a remote model rather than a local path or catalog entry."""
    return spec.startswith((HF_SCHEME, "https://", "http://"))


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """A remote GGUF file: a Hub file (``repo`` set) or a plain URL."""

    url: str  # where the bytes are read (a resolve URL for the Hub)
    repo: str = ""
    revision: str = "main"
    path: str = ""

    @property
    def is_hub(self) -> bool:
        return bool(self.repo)

    @property
    def display(self) -> str:
        """How the model is named to the user and in profiles."""
        if not self.repo:
            return self.url
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{HF_SCHEME}{self.repo}{rev}/{self.path}"

    def with_path(self, path: str) -> RemoteRef:
        """Another file of the same repository (or next to the same URL)."""
        if self.repo:
            return hub_file(self.repo, path, self.revision)
        base = self.url.rsplit("/", 1)[0]
        return RemoteRef(f"{base}/{quote(path.rsplit('/', 1)[-1])}")

    def at_revision(self, revision: str) -> RemoteRef:
        return hub_file(self.repo, self.path, revision) if self.repo else self


def unsafe_path(path: str) -> bool:
    """Whether a repository path could name something outside the repository (``..``, ``.``,
    an empty segment, a backslash or a control character): never a file the Hub lists."""
    return (
        any(part in ("", ".", "..") for part in path.split("/"))
        or "\\" in path
        or any(ord(c) < 32 for c in path)
    )


def hub_file(repo: str, path: str, revision: str = "main") -> RemoteRef:
    url = f"{hub_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"
    return RemoteRef(url, repo, revision, path)


def check_repo(repo: str, source: str) -> str:
    if not _REPO.match(repo):
        raise RemoteError(
            source,
            f"{source} does not name a Hugging Face repository; write OWNER/REPO "
            "(for example unsloth/DeepSeek-V3-GGUF).",
        )
    return repo


def parse_remote(spec: str) -> RemoteRef:
    """Parse a remote model name.

    Raises:
        RemoteError: the name is not one of the accepted forms, or not a .gguf file.
    """
    if spec.startswith(HF_SCHEME):
        rest = spec[len(HF_SCHEME) :]
        parts = rest.split("/", 2)
        if len(parts) < 3 or not parts[2]:
            raise RemoteError(
                spec,
                f"{spec} names no file; write hf://OWNER/REPO[@REVISION]/PATH.gguf "
                f"(or `moe-studio compare {rest.rstrip('/')}` to see the repository's quants).",
            )
        owner, name, path = parts
        if unsafe_path(path):
            raise RemoteError(
                spec,
                f"{spec} has a path with '..', '.', '//' or a control character; "
                "write the file's path as the repository lists it.",
            )
        name, _, revision = name.partition("@")
        ref = hub_file(check_repo(f"{owner}/{name}", spec), path, revision or "main")
    else:
        try:
            split = urlsplit(spec)
            split.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise RemoteError(spec, f"{spec} is not a URL MoE Studio can read ({exc}).") from None
        if split.scheme not in ("http", "https") or not split.netloc:
            raise RemoteError(spec, f"{spec} is not an http(s) URL.")
        endpoint = urlsplit(hub_endpoint())
        segments = [unquote(s) for s in split.path.split("/")]
        hub_hosts = {endpoint.netloc, "huggingface.co", "hf.co"}
        if split.netloc in hub_hosts and len(segments) >= 6 and segments[3] in ("blob", "resolve"):
            repo = check_repo(f"{segments[1]}/{segments[2]}", spec)
            ref = hub_file(repo, "/".join(segments[5:]), segments[4])
        else:
            ref = RemoteRef(spec)
    name = (ref.path or urlsplit(ref.url).path).lower()
    if not name.endswith(".gguf"):
        raise RemoteError(
            spec, f"{spec} is not a .gguf file; give the URL of the model's .gguf (any shard)."
        )
    return ref


def split_siblings(name: str) -> tuple[str, int, int] | None:
    """``(stem, index, count)`` of a gguf-split name ``stem-00002-of-00009.gguf`` (1-based)."""
    m = _SPLIT.search(name)
    if not m:
        return None
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= index <= count:
        return None  # "-00001-of-00000", "-00003-of-00002": not a gguf-split name
    return name[: m.start()], index, count


def shard_names(name: str, count: int) -> list[str]:
    """The names of all shards of the split model that ``name`` (any shard) belongs to."""
    found = split_siblings(name)
    if not found:
        return [name]
    stem = found[0]
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
