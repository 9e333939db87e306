"""The one exception tree of MoE Studio.

Every error a user can meet is a :class:`MoeStudioError` whose message is a sentence they can act
on: what happened, where, and what to do. The CLI prints ``str(error)`` on one line; the GUI shows
it in its error dialog with ``details`` folded away. Nothing else should escape to a user.

    MoeStudioError
    ├── ModelFileError          a GGUF file cannot be used (carries path and byte offset)
    │   ├── GGUFFormatError     not GGUF, bad version, truncated, absurd counts, bad sizes
    │   ├── UnknownTypeError    a tensor type neither engine defines
    │   └── ShardError          a split model with a missing, foreign or inconsistent shard
    ├── CatalogError            unknown built-in model or recipe
    ├── PlanError               an operation that does not fit the model or the devices
    ├── CommandError            a command line that cannot be built or imported
    │   └── DialectError        an option the chosen engine does not have
    ├── HardwareError           a rig file or device description that cannot be used
    ├── ProfileError            a profile that cannot be read or written
    ├── ExportError             an export target that cannot be written
    ├── EngineError             llama-server missing, unusable or failed
    └── RemoteError             a remote model (URL, Hugging Face repo) that cannot be read
        └── UnreachableError    the network is down: offline, DNS, refused, timed out
"""

from __future__ import annotations

import stat
from pathlib import Path


class MoeStudioError(Exception):
    """Base of every error MoE Studio reports to a user.

    Args:
        message: One or two sentences for the user.
        details: Optional longer text (log excerpt, tensor list) shown folded in the GUI.
    """

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ModelFileError(MoeStudioError):
    """A model file that cannot be used; names the file and, where known, the byte offset."""

    def __init__(
        self, path: str | Path, message: str, *, offset: int | None = None, details: str = ""
    ) -> None:
        self.path = str(path)
        self.offset = offset
        where = f"{self.path}" if offset is None else f"{self.path}, byte {offset}"
        super().__init__(f"{where}: {message}", details=details)
        self.reason = message


class GGUFFormatError(ModelFileError):
    """The bytes are not a GGUF header we can read (or the header contradicts itself)."""


class UnknownTypeError(ModelFileError):
    """A tensor uses a ggml type id that neither ik_llama.cpp nor llama.cpp defines."""


class ShardError(ModelFileError):
    """A split model whose shards are missing, foreign or inconsistent."""


class CatalogError(MoeStudioError):
    """An unknown built-in model or quantization recipe."""


class PlanError(MoeStudioError):
    """A placement operation that does not fit the model or the devices."""


class CommandError(MoeStudioError):
    """A command line that cannot be built or imported."""


class DialectError(CommandError):
    """An option the chosen engine dialect does not have."""


class HardwareError(MoeStudioError):
    """A rig file or device description that cannot be used."""


class ProfileError(MoeStudioError):
    """A profile that cannot be read, migrated or written."""


class ExportError(MoeStudioError):
    """An export that cannot be produced."""


class EngineError(MoeStudioError):
    """llama-server is missing, unusable, or failed."""


class RemoteError(MoeStudioError):
    """A remote model that cannot be listed or read: network, HTTP status, a server without
    Range support, a file that changed while being read. Names the URL."""

    def __init__(self, url: str, message: str, *, details: str = "") -> None:
        self.url = url
        super().__init__(message, details=details)


class UnreachableError(RemoteError):
    """The server could not be reached at all (cached headers may stand in)."""


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error a user reads
    """Raised inside long work when its ``cancelled`` callable returned true."""


def describe_file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (FIFO)", "a character device")."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
