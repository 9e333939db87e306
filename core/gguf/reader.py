"""GGUF header reader: metadata and tensor table of one file or a split model, never tensor data.

Reads GGUF v2 and v3 from a path or a binary stream. Large arrays (vocabularies, merges) are
skipped without decoding unless asked for, so a 9-shard DeepSeek-V3 opens in milliseconds. Every
size is computed with ik_llama.cpp's row formula (``moe_studio.core.gguf.ggml_types``) and checked
against the offset of the next tensor; every error names the file and the byte offset where reading
stopped.

Split models follow ``gguf-split``: ``<prefix>-00001-of-00009.gguf`` … with ``split.no``,
``split.count`` and ``split.tensors.count`` in every shard and the full metadata in the first.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from moe_studio.core.errors import (
    Cancelled,
    GGUFFormatError,
    ShardError,
    UnknownTypeError,
    describe_file_kind,
)
from moe_studio.core.gguf.ggml_types import type_by_id

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
# Arrays longer than this are skipped (kept as SkippedArray) unless asked for by key.
SMALL_ARRAY = 4096
# No header string is this long; a length past it is corruption, not data.
MAX_STRING = 256 * 1024 * 1024
_CHUNK = 64 * 1024
_MAX_READ = 16 * 1024 * 1024
# gguf-split names shards with five digits, and no published model has more than a few hundred;
# a larger split.count is a damaged header, and must not make us build one path per claimed shard.
MAX_SHARDS = 1000
# How many missing shard names an error message lists before it says "and N more".
_LIST_MISSING = 5

# GGUF metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_SCALAR = {
    UINT8: struct.Struct("<B"),
    INT8: struct.Struct("<b"),
    UINT16: struct.Struct("<H"),
    INT16: struct.Struct("<h"),
    UINT32: struct.Struct("<I"),
    INT32: struct.Struct("<i"),
    FLOAT32: struct.Struct("<f"),
    BOOL: struct.Struct("<?"),
    UINT64: struct.Struct("<Q"),
    INT64: struct.Struct("<q"),
    FLOAT64: struct.Struct("<d"),
}
_ARRAY_CODE = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
TYPE_NAMES = {
    UINT8: "uint8",
    INT8: "int8",
    UINT16: "uint16",
    INT16: "int16",
    UINT32: "uint32",
    INT32: "int32",
    FLOAT32: "float32",
    BOOL: "bool",
    STRING: "string",
    ARRAY: "array",
    UINT64: "uint64",
    INT64: "int64",
    FLOAT64: "float64",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]

MetaValue = object


@dataclass(frozen=True, slots=True)
class SkippedArray:
    """A metadata array left undecoded: its element type, length and where its elements start."""

    elem_type: int
    count: int
    offset: int

    def __repr__(self) -> str:
        return f"<{TYPE_NAMES.get(self.elem_type, '?')}[{self.count}] skipped>"


@dataclass(frozen=True, slots=True)
class RawTensor:
    """One tensor-info record, with its byte size resolved."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # relative to the shard's data section
    nbytes: int
    info_offset: int  # where the record starts in the file, for error messages


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    """Everything in one GGUF file except tensor data."""

    path: str
    version: int
    metadata: dict[str, MetaValue]
    tensors: tuple[RawTensor, ...]
    alignment: int
    data_start: int
    file_size: int | None
    warnings: tuple[str, ...] = ()
    # Keys stored more than once (ik keeps the first value; mainline refuses the file).
    duplicate_keys: tuple[str, ...] = ()
    # Where each metadata key's record starts in the file, for error messages about its value.
    key_offsets: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def offset_of(self, key: str) -> int | None:
        return self.key_offsets.get(key)

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self.metadata.get(key, default)
        return value if isinstance(value, int) else default


@dataclass(frozen=True, slots=True)
class GGUFModel:
    """All shards of one model, in order (one element for an unsplit file)."""

    shards: tuple[GGUFHeader, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def duplicate_keys(self) -> tuple[str, ...]:
        """Metadata keys stored more than once in a shard, each named once."""
        return tuple(dict.fromkeys(k for s in self.shards for k in s.duplicate_keys))

    @property
    def first(self) -> GGUFHeader:
        return self.shards[0]

    @property
    def metadata(self) -> dict[str, MetaValue]:
        return self.shards[0].metadata


class _Reader:
    """Incremental little-endian reader over a growing window of the file."""

    __slots__ = ("_eof", "_stream", "base", "buf", "path", "pos", "size")

    def __init__(self, stream: BinaryIO, path: str, size: int | None) -> None:
        self._stream = stream
        self.path = path
        self.size = size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # absolute file offset of the next byte to parse
        self._eof = False

    def error(self, message: str, offset: int | None = None) -> GGUFFormatError:
        return GGUFFormatError(self.path, message, offset=self.pos if offset is None else offset)

    def need(self, n: int, what: str) -> None:
        """Make sure ``n`` bytes from ``pos`` are in the buffer, or raise a truncation error."""
        end = self.pos + n
        have = self.base + len(self.buf)
        if end <= have:
            return
        if self.size is not None and end > self.size:
            raise self.error(
                f"the file ends at byte {self.size} while reading {what} "
                f"({n} bytes needed); it is truncated or not a complete GGUF file"
            )
        keep = self.buf[self.pos - self.base :] if self.pos < have else b""
        if self.pos > have:  # skipped past the window: seek instead of reading the gap
            self._seek(self.pos)
            keep = b""
        parts = [keep]
        got = len(keep)
        missing = n - got
        # Grow geometrically so skipping a vocabulary costs a handful of reads, not thousands.
        want = max(missing, min(max(_CHUNK, len(self.buf)), _MAX_READ))
        while got < n:
            chunk = self._stream.read(min(max(want, n - got), _MAX_READ))
            if not chunk:
                raise self.error(
                    f"the file ends at byte {self.pos + got} while reading {what} "
                    f"({n} bytes needed); it is truncated or not a complete GGUF file"
                )
            parts.append(chunk)
            got += len(chunk)
        self.buf = b"".join(parts)
        self.base = self.pos

    def _seek(self, offset: int) -> None:
        try:
            self._stream.seek(offset)
        except (OSError, ValueError):
            # Non-seekable stream: read and drop the gap.
            have = self.base + len(self.buf)
            gap = offset - have
            while gap > 0:
                chunk = self._stream.read(min(gap, _MAX_READ))
                if not chunk:
                    raise self.error("the file ends inside a skipped array", offset=have) from None
                gap -= len(chunk)

    def skip(self, n: int, what: str) -> None:
        if self.size is not None and self.pos + n > self.size:
            raise self.error(
                f"{what} needs {n} bytes but only {self.size - self.pos} remain in the file; "
                "the header is corrupt or the file is truncated"
            )
        have = self.base + len(self.buf)
        if self.pos + n <= have:
            self.pos += n
            return
        self.pos += n
        if self.size is None:
            # Unknown size: make sure the skipped bytes exist by touching the last one.
            self.pos -= 1
            self.need(1, what)
            self.pos += 1

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos - self.base)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos - self.base)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        start = self.pos
        length = self.u64(f"the length of {what}")
        self._check_length(length, 1, what, start)
        self.need(length, what)
        i = self.pos - self.base
        raw = self.buf[i : i + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def _check_length(self, count: int, unit: int, what: str, start: int) -> None:
        limit = MAX_STRING if unit == 1 else 1 << 40
        remaining = None if self.size is None else self.size - self.pos
        if count > limit or (remaining is not None and count * unit > remaining):
            room = "" if remaining is None else f" but only {remaining} bytes remain in the file"
            raise self.error(
                f"{what} claims {count} {'bytes' if unit == 1 else 'elements'}{room}; "
                "the header is corrupt",
                offset=start,
            )

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings without decoding them."""
        unpack = _U64.unpack_from
        done = 0
        while done < count:
            self.need(8, what)
            buf = self.buf
            base = self.base
            p = self.pos - base
            # The hot loop of opening a model (a vocabulary is 100k+ strings): no bounds checks;
            # unpack_from raises when a length field leaves the window, and `i` says how far we got.
            i = 0
            try:
                for i in range(count - done):  # noqa: B007 - `i` is read after the loop
                    (length,) = unpack(buf, p)
                    p += 8 + length
                i += 1
            except (struct.error, OverflowError):
                # struct.error: the next length field is past the window; OverflowError: a length
                # of 2**63 or more pushed ``p`` past what an offset can be (corruption, below).
                pass
            done += i
            self.pos = base + p
            if p > len(buf):
                # The last string ran past the window: it must exist in the file (or be corrupt).
                start = self.pos - length - 8
                if length > MAX_STRING:
                    self.pos = start
                    self._check_length(length, 1, f"string {done - 1} of {what}", start)
                over = p - len(buf)
                self.pos = base + len(buf)
                self.skip(over, f"string {done - 1} of {what}")


def _open(source: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, str, bool]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise GGUFFormatError(path, "does not exist") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise GGUFFormatError(path, f"cannot be opened: {reason}") from None
        if stat.S_ISDIR(mode):
            raise GGUFFormatError(
                path, "is a folder, not a GGUF file; choose the model's .gguf file (any shard)"
            )
        if not stat.S_ISREG(mode):
            raise GGUFFormatError(
                path, f"is {describe_file_kind(mode)}, not a regular file; choose a .gguf file"
            )
        try:
            return path.open("rb"), str(path), True
        except FileNotFoundError:
            raise GGUFFormatError(path, "does not exist") from None
        except OSError as exc:
            raise GGUFFormatError(path, f"cannot be opened: {exc.strerror}") from None
    name = getattr(source, "name", None)
    return source, str(name) if isinstance(name, str) else "<stream>", False


def _stream_size(stream: BinaryIO) -> int | None:
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        size = stream.seek(0, os.SEEK_END)
        stream.seek(here)
        return size - here
    except (OSError, ValueError, AttributeError):
        return None


def _describe_magic(head: bytes) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    if head.lstrip()[:1] == b"<":
        return "an HTML or XML page (a download that saved an error page?)"
    if head[:1] == b"{" or head[8:9] == b"{":
        return "JSON or a safetensors file; convert it to GGUF first"
    if head[:4] == b"FUGG":
        return "a big-endian GGUF, which the engines on this machine cannot load"
    if head[:4] in (b"ggml", b"ggjt", b"ggmf", b"lmgg", b"tjgg", b"fmgg"):
        return "a pre-GGUF ggml model; convert it to GGUF"
    return None


def _printable(data: bytes) -> str:
    """``data`` as a user reads it: ASCII as is, other bytes as ``\\xNN`` (never ``b'…'``)."""
    return "".join(chr(b) if 32 <= b < 127 and b != 39 else f"\\x{b:02x}" for b in data)


def read_header(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    load_arrays: Collection[str] = (),
) -> GGUFHeader:
    """Read the header of one GGUF file.

    Args:
        source: A path or a binary stream positioned at the start of the file.
        load_arrays: Keys of large arrays to decode instead of skipping.

    Raises:
        GGUFFormatError: not a GGUF file, unsupported version, truncated or corrupt header.
        UnknownTypeError: a tensor type neither engine defines, whose size cannot be recovered.
    """
    stream, path, owned = _open(source)
    try:
        size = _stream_size(stream)
        reader = _Reader(stream, path, size)
        return _parse(reader, frozenset(load_arrays))
    except OSError as exc:
        raise GGUFFormatError(path, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        if owned:
            stream.close()


def _parse(r: _Reader, load_arrays: frozenset[str]) -> GGUFHeader:
    if r.size is not None and r.size < 4:
        raise r.error(f"is only {r.size} bytes long; it is not a GGUF file", offset=0)
    r.need(4, "the magic number")
    if r.buf[:4] != GGUF_MAGIC:
        head = r.buf[:16] if len(r.buf) >= 16 else r.buf
        try:
            r.need(16, "the magic number")
            head = r.buf[:16]
        except GGUFFormatError:
            pass
        kind = _describe_magic(head)
        found = (
            f"it starts with {kind}"
            if kind
            else f"it does not start with GGUF (found '{_printable(head[:4])}')"
        )
        raise r.error(f"is not a GGUF file: {found}", offset=0)
    r.pos = 4
    version = r.u32("the GGUF version")
    if version == 1:
        raise r.error(
            "is GGUF version 1, which no current engine loads; re-convert the model", offset=4
        )
    if version not in (2, 3):
        raise r.error(
            f"has GGUF version {version}; MoE Studio reads versions 2 and 3 "
            "(a newer file, or not a little-endian GGUF)",
            offset=4,
        )
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    # A tensor record takes at least 8+4+4+8 bytes and a KV pair at least 8+4+1.
    r._check_length(n_tensors, 24, "the tensor count", 8)
    r._check_length(n_kv, 13, "the metadata count", 16)

    metadata: dict[str, MetaValue] = {}
    key_offsets: dict[str, int] = {}
    key_types: dict[str, int] = {}
    warnings: list[str] = []
    duplicates: list[str] = []
    for _ in range(n_kv):
        key_at = r.pos
        key = r.string("a metadata key")
        vtype = r.u32(f"the type of {key!r}")
        value = _read_value(r, vtype, key, key_at, key in load_arrays)
        if key in metadata:
            # ik_llama.cpp keeps the first value (gguf_find_key returns the first match);
            # mainline llama.cpp refuses the file (ggml/src/gguf.cpp: "duplicate key '%s' for
            # tensors %zu and %" PRIi64, then the load fails).
            duplicates.append(key)
            warnings.append(
                f"metadata key {key!r} appears twice (again at byte {key_at}); the first value "
                "is used, as ik_llama.cpp does; mainline llama.cpp refuses this file: "
                f"duplicate key {key!r}"
            )
            continue
        metadata[key] = value
        key_offsets[key] = key_at
        key_types[key] = vtype

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and key_types["general.alignment"] != UINT32:
        raise r.error(
            "field general.alignment is stored as "
            f"{TYPE_NAMES.get(key_types['general.alignment'], '?')}; the engines require uint32",
            offset=key_offsets["general.alignment"],
        )
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.error(
            f"field general.alignment is {alignment!r}; it must be a power of two",
            offset=key_offsets.get("general.alignment", r.pos),
        )

    records: list[tuple[str, tuple[int, ...], int, int, int]] = []
    seen: set[str] = set()
    for index in range(n_tensors):
        at = r.pos
        name = r.string(f"the name of tensor {index}")
        if name in seen:
            raise r.error(f"tensor {name!r} appears twice in the tensor table", offset=at)
        seen.add(name)
        n_dims = r.u32(f"the dimension count of {name}")
        if n_dims > GGML_MAX_DIMS:
            raise r.error(
                f"tensor {name} has {n_dims} dimensions; ggml allows at most {GGML_MAX_DIMS}",
                offset=at,
            )
        r.need(8 * n_dims + 12, f"the shape of {name}")
        i = r.pos - r.base
        shape = struct.unpack_from(f"<{n_dims}Q", r.buf, i)
        type_id, offset = struct.unpack_from("<IQ", r.buf, i + 8 * n_dims)
        r.pos += 8 * n_dims + 12
        elements = 1
        for n in shape:
            elements *= n
        if elements >= 1 << 62 or any(n >= 1 << 62 for n in shape):
            raise r.error(f"tensor {name} has an impossible shape {shape}", offset=at)
        if offset % alignment:
            raise r.error(
                f"tensor {name} starts at data offset {offset}, "
                f"which is not a multiple of the alignment {alignment}",
                offset=at,
            )
        records.append((name, tuple(shape), type_id, offset, at))

    data_start = -(-r.pos // alignment) * alignment
    if r.size is not None and data_start > r.size and records:
        raise r.error(
            f"the tensor data should start at byte {data_start} but the file has {r.size} bytes; "
            "it is truncated"
        )
    tensors = _resolve_sizes(r.path, records, alignment, data_start, r.size, warnings)
    return GGUFHeader(
        path=r.path,
        version=version,
        metadata=metadata,
        tensors=tensors,
        alignment=alignment,
        data_start=data_start,
        file_size=r.size,
        warnings=tuple(warnings),
        duplicate_keys=tuple(dict.fromkeys(duplicates)),
        key_offsets=key_offsets,
    )


def _read_value(r: _Reader, vtype: int, key: str, at: int, load: bool) -> MetaValue:
    scalar = _SCALAR.get(vtype)
    if scalar is not None:
        r.need(scalar.size, f"the value of {key!r}")
        (value,) = scalar.unpack_from(r.buf, r.pos - r.base)
        r.pos += scalar.size
        return value
    if vtype == STRING:
        return r.string(f"the value of {key!r}")
    if vtype == ARRAY:
        elem = r.u32(f"the element type of {key!r}")
        count = r.u64(f"the length of {key!r}")
        return _read_array(r, elem, count, key, load)
    raise r.error(f"metadata {key!r} has value type {vtype}, which GGUF does not define", offset=at)


def _read_array(r: _Reader, elem: int, count: int, key: str, load: bool) -> MetaValue:
    start = r.pos
    what = f"the array {key!r}"
    if elem in _ARRAY_CODE:
        width = _SCALAR[elem].size
        r._check_length(count, width, what, start - 8)
        if count > SMALL_ARRAY and not load:
            r.skip(count * width, what)
            return SkippedArray(elem, count, start)
        r.need(count * width, what)
        values = struct.unpack_from(f"<{count}{_ARRAY_CODE[elem]}", r.buf, r.pos - r.base)
        r.pos += count * width
        return list(values)
    if elem == STRING:
        r._check_length(count, 8, what, start - 8)
        if count > SMALL_ARRAY and not load:
            r.skip_strings(count, what)
            return SkippedArray(elem, count, start)
        return [r.string(f"element {i} of {key!r}") for i in range(count)]
    if elem == ARRAY:
        # ggml's gguf reader (both engines) refuses arrays of arrays; so do we, without recursing.
        raise r.error(
            f"field {key!r} is an array of arrays, which neither engine loads",
            offset=start - 12,
        )
    raise r.error(f"the array {key!r} has element type {elem}, which GGUF does not define")


def _resolve_sizes(
    path: str,
    records: list[tuple[str, tuple[int, ...], int, int, int]],
    alignment: int,
    data_start: int,
    file_size: int | None,
    warnings: list[str],
) -> tuple[RawTensor, ...]:
    """Compute every tensor's bytes and check them against the offsets of the next tensor."""
    order = sorted(range(len(records)), key=lambda k: records[k][3])
    data_size = None if file_size is None else file_size - data_start
    sizes: dict[int, int] = {}
    for rank, k in enumerate(order):
        name, shape, type_id, offset, at = records[k]
        next_offset = records[order[rank + 1]][3] if rank + 1 < len(order) else None
        room = (next_offset - offset) if next_offset is not None else None
        last_room = None if next_offset is not None or data_size is None else data_size - offset
        gtype = type_by_id(type_id)
        if gtype is None:
            recovered = room if room is not None else last_room
            if recovered is None or recovered <= 0:
                raise UnknownTypeError(
                    path,
                    f"{name} uses ggml type {type_id}, which neither ik_llama.cpp nor llama.cpp "
                    "defines; the file may be newer than MoE Studio",
                    offset=at,
                )
            warnings.append(
                f"{name} uses ggml type {type_id}, which neither ik_llama.cpp nor llama.cpp "
                f"defines; its size ({recovered} bytes) was taken from the tensor offsets"
            )
            sizes[k] = recovered
            continue
        ne0 = shape[0] if shape else 1
        if not gtype.divides(ne0):
            raise GGUFFormatError(
                path,
                f"{name} has rows of {ne0} elements, which is not a whole number of "
                f"{gtype.name} blocks of {gtype.block}",
                offset=at,
            )
        nbytes = gtype.tensor_bytes(shape)
        padded = -(-nbytes // alignment) * alignment
        if room is not None and room != padded:
            raise GGUFFormatError(
                path,
                f"{name} ({gtype.name}, shape {'x'.join(map(str, shape))}) takes {nbytes} bytes "
                f"by ik_llama.cpp's formula, but the next tensor starts {room} bytes after it; "
                "the file is corrupt or was written by a tool that sizes this type differently",
                offset=at,
            )
        if last_room is not None and last_room < nbytes:
            raise GGUFFormatError(
                path,
                f"the file ends {nbytes - last_room} bytes before the data of {name} does; "
                "it is truncated (an incomplete download?)",
                offset=at,
            )
        sizes[k] = nbytes
    return tuple(
        RawTensor(name, shape, type_id, offset, sizes[k], at)
        for k, (name, shape, type_id, offset, at) in enumerate(records)
    )


def split_paths(path: str | os.PathLike[str], count: int) -> list[Path]:
    """The paths of all ``count`` shards of the split model that ``path`` belongs to."""
    p = Path(path)
    match = _SPLIT_NAME.match(p.name)
    if not match:
        raise ShardError(
            p,
            f"says it is part of a model split into {count} files, but its name does not follow "
            "the <name>-00001-of-0000N.gguf pattern, so the other shards cannot be found; "
            "rename the shards as gguf-split wrote them",
        )
    prefix = match.group("prefix")
    return [p.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _shard_count(first: GGUFHeader) -> int:
    """The first shard's ``split.count`` (1 when absent).

    Raises:
        GGUFFormatError: more than :data:`MAX_SHARDS`, a corrupt header (checked before any path
            is built from it).
    """
    count = _split_key(first, "split.count") or 1
    if count > MAX_SHARDS:
        raise GGUFFormatError(
            first.path,
            f"field split.count says the model is split into {count} files; a split model has "
            f"at most {MAX_SHARDS} shards, so the header is corrupt",
            offset=first.offset_of("split.count"),
        )
    return count


def _split_key(header: GGUFHeader, key: str) -> int | None:
    value = header.metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_model(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
    load_arrays: Collection[str] = (),
) -> GGUFModel:
    """Read every shard of the model ``path`` belongs to (any shard may be given).

    Raises:
        ShardError: a shard is missing, belongs to another model, or disagrees with the others.
        GGUFFormatError, UnknownTypeError: as :func:`read_header`.
        Cancelled: ``cancelled()`` returned true between shards.
    """
    first = read_header(path, load_arrays=load_arrays)
    count = _shard_count(first)
    if count <= 1 or not isinstance(path, str | os.PathLike):
        if count > 1:
            raise ShardError(
                first.path, f"is one of {count} shards; open it by path, not as a stream"
            )
        if progress:
            progress(1.0, Path(first.path).name)
        return GGUFModel((first,), first.warnings)

    named = _SPLIT_NAME.match(Path(path).name)
    if named and int(named.group("count")) != count:
        raise ShardError(
            first.path,
            f"is named as one of {int(named.group('count'))} shards, but its field split.count "
            f"says {count}; the file was renamed or its header is damaged",
            offset=first.offset_of("split.count"),
        )
    paths = split_paths(path, count)
    given = Path(path).resolve()
    missing = [p for p in paths if p.resolve() != given and not p.is_file()]
    if missing:
        names = ", ".join(p.name for p in missing[:_LIST_MISSING])
        if len(missing) > _LIST_MISSING:
            names += f" and {len(missing) - _LIST_MISSING} more"
        raise ShardError(
            missing[0],
            f"is missing: the model is split into {count} files and {len(missing)} of them "
            f"cannot be found ({names}); download the missing shard(s) into {missing[0].parent}",
        )
    shards: list[GGUFHeader] = []
    for i, shard_path in enumerate(paths):
        if cancelled and cancelled():
            raise Cancelled
        if progress:
            progress(i / count, shard_path.name)
        header = (
            first
            if shard_path.resolve() == given
            else read_header(shard_path, load_arrays=load_arrays)
        )
        shards.append(header)
    if progress:
        progress(1.0, paths[-1].name)
    _check_shards(shards, count)
    warnings = tuple(w for s in shards for w in s.warnings)
    return GGUFModel(tuple(shards), warnings)


def assemble_model(shards: Sequence[GGUFHeader]) -> GGUFModel:
    """A model from headers read elsewhere (a remote reader), checked like :func:`read_model`'s.

    Raises:
        ShardError: the shards disagree, or one is missing or foreign.
        GGUFFormatError: an absurd split.count.
    """
    first = shards[0]
    count = _shard_count(first)
    if count != len(shards):
        raise ShardError(
            first.path,
            f"says the model is split into {count} files, but {len(shards)} were found by name; "
            "the shards were renamed, or the file names do not follow gguf-split's pattern",
        )
    if count > 1:
        _check_shards(list(shards), count)
    return GGUFModel(tuple(shards), tuple(w for s in shards for w in s.warnings))


def _check_shards(shards: list[GGUFHeader], count: int) -> None:
    head = shards[0]
    total = _split_key(head, "split.tensors.count")
    arch = head.metadata.get("general.architecture")
    names: dict[str, str] = {}
    for i, shard in enumerate(shards):
        number = _split_key(shard, "split.no")
        shard_count = _split_key(shard, "split.count")
        if shard_count != count:
            raise ShardError(
                shard.path,
                f"belongs to a model split into {shard_count} files, not {count}; "
                "it is a shard of another model — replace it with the right file",
            )
        if number != i:
            raise ShardError(
                shard.path,
                f"says it is shard {None if number is None else number + 1} but its name makes it "
                f"shard {i + 1}; the shards were renamed or mixed up",
            )
        shard_total = _split_key(shard, "split.tensors.count")
        if total is not None and shard_total is not None and shard_total != total:
            raise ShardError(
                shard.path,
                f"belongs to a model of {shard_total} tensors, but shard 1 has {total}; "
                "it is a shard of another model (or another quantization) — replace it",
            )
        shard_arch = shard.metadata.get("general.architecture")
        if i and shard_arch is not None and arch is not None and shard_arch != arch:
            raise ShardError(
                shard.path,
                f"is a {shard_arch} model but shard 1 is {arch}; it is a shard of another model",
            )
        for t in shard.tensors:
            if t.name in names:
                raise ShardError(
                    shard.path,
                    f"contains tensor {t.name}, which {Path(names[t.name]).name} already has; "
                    "the shards come from different models or splits",
                    offset=t.info_offset,
                )
            names[t.name] = shard.path
    if total is not None and len(names) != total:
        raise ShardError(
            head.path,
            f"the shards hold {len(names)} tensors but the split says {total}; "
            "a shard comes from another model or is damaged",
        )


def iter_tensors(model: GGUFModel) -> Iterable[tuple[int, RawTensor]]:
    """Every tensor with the index of its shard, in file order."""
    for i, shard in enumerate(model.shards):
        for t in shard.tensors:
            yield i, t


def read_skipped_array(path: str | os.PathLike[str], array: SkippedArray) -> list[MetaValue]:
    """Decode an array :func:`read_header` skipped (for example the vocabulary).

    Raises:
        GGUFFormatError: the file cannot be read there (gone, truncated, changed since).
    """
    try:
        with Path(path).open("rb") as stream:
            reader = _Reader(stream, str(path), _stream_size(stream))
            reader._seek(array.offset)
            reader.base = reader.pos = array.offset
            value = _read_array(reader, array.elem_type, array.count, "array", True)
    except OSError as exc:
        raise GGUFFormatError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    assert isinstance(value, list)
    return value
