"""Hugging Face Hub access through ``huggingface_hub``: listing a repository, its token, errors.

The token is huggingface_hub's (``HF_TOKEN`` or the stored login), the address ``HF_ENDPOINT`` as
set when the call is made. Gated, private and missing repositories end in a sentence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from moe_studio.core.errors import RemoteError, UnreachableError
from moe_studio.core.remote.http import READ_TIMEOUT, RangeClient, network_error
from moe_studio.core.remote.urls import hub_endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RepoFile:
    """One file of a repository listing."""

    path: str
    size: int
    version: str  # LFS sha256, else the git blob id: changes when the file does


@dataclass(frozen=True, slots=True)
class RepoListing:
    repo: str
    revision: str  # as asked (main, a tag, a commit)
    commit: str  # the commit it resolved to
    files: tuple[RepoFile, ...]

    def gguf_files(self) -> tuple[RepoFile, ...]:
        return tuple(f for f in self.files if f.path.lower().endswith(".gguf"))

    def file(self, path: str) -> RepoFile | None:
        return next((f for f in self.files if f.path == path), None)


def auth_headers() -> dict[str, str]:
    """huggingface_hub's headers (user agent, and the token when there is one)."""
    # Public and documented, but huggingface_hub.utils lists it lazily without re-exporting it.
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    return dict(build_hf_headers())


def hub_client(timeout: float = READ_TIMEOUT) -> RangeClient:
    """A Range client that sends the Hub token to the Hub's own host, and to no other."""
    host = urlsplit(hub_endpoint()).netloc
    return RangeClient(headers_for={host: auth_headers()}, timeout=timeout)


def list_repo(repo: str, revision: str = "main", *, timeout: float = READ_TIMEOUT) -> RepoListing:
    """Every file of ``repo`` at ``revision`` with its size and version (one API call).

    Raises:
        RemoteError: the repository cannot be listed (missing, private, gated, network…).
    """
    from huggingface_hub import HfApi

    endpoint = hub_endpoint()
    page = f"{endpoint}/{repo}"
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo,
            revision=None if revision == "main" else revision,
            files_metadata=True,
            timeout=timeout,
        )
    except Exception as exc:
        raise hub_error(exc, repo, revision, page, timeout) from None
    files = []
    for sib in info.siblings or ():
        version = (sib.lfs.sha256 if sib.lfs else "") or sib.blob_id or ""
        files.append(RepoFile(sib.rfilename, int(sib.size or 0), version))
    return RepoListing(repo, revision, info.sha or revision, tuple(files))


def hub_error(exc: Exception, repo: str, revision: str, page: str, timeout: float) -> RemoteError:
    """A sentence for what ``huggingface_hub`` raised."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return RemoteError(
            page,
            f"{repo} is a gated repository: accept its licence at {page}, then log in "
            "(hf auth login) or set HF_TOKEN.",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return RemoteError(page, f"{repo} has no revision {revision!r} ({page}).")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return RemoteError(
            page,
            f"{repo} was not found at {page}: check the name, or, if it is private, log in "
            "(hf auth login) or set HF_TOKEN.",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return RemoteError(
                page,
                f"{page} refused access (HTTP {status}); log in (hf auth login) or set HF_TOKEN "
                "with an account that may read it.",
            )
        return RemoteError(page, f"{page} answered HTTP {status} while listing {repo}; try again.")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return UnreachableError(
            page, f"Cannot list {repo}: HF_HUB_OFFLINE is set; unset it to read from the Hub."
        )
    import httpx2

    if isinstance(exc, httpx2.HTTPError):
        return network_error(page, exc, timeout)
    if isinstance(exc, ValueError | KeyError | TypeError):
        return RemoteError(page, f"{page} did not answer like the Hugging Face Hub ({exc}).")
    raise exc
