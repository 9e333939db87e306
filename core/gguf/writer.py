"""Writing GGUF headers: sparse full-size model files without tensor data.

A layout from the catalog becomes shards exactly as ``gguf-split`` writes them (full metadata in
the first shard, ``split.*`` keys in every shard), each truncated to its full size so the file
system stores only the header (``du`` ≪ ``ls -l``). Tests and benchmarks use this to exercise
400 GB layouts on a laptop; users can write one to try an engine's ``--dry-run`` on a layout they
have not downloaded. The writer also takes any ggml type id, which the PyPI ``gguf`` writer cannot.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from moe_studio.core.gguf import reader as g
from moe_studio.core.gguf.model import ModelLayout


@dataclass(frozen=True, slots=True)
class Typed:
    """A metadata value with an explicit GGUF type (arrays: ``elem_type`` of the elements)."""

    vtype: int
    value: object
    elem_type: int = -1


def _infer(value: object) -> Typed:
    if isinstance(value, Typed):
        return value
    if isinstance(value, bool):
        return Typed(g.BOOL, value)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return Typed(g.UINT32, value)
        return Typed(g.INT64 if value < 0 else g.UINT64, value)
    if isinstance(value, float):
        return Typed(g.FLOAT32, value)
    if isinstance(value, str):
        return Typed(g.STRING, value)
    if isinstance(value, list | tuple):
        first = _infer(value[0]) if value else Typed(g.UINT32, 0)
        return Typed(g.ARRAY, list(value), first.vtype)
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _value(t: Typed) -> bytes:
    if t.vtype == g.STRING:
        assert isinstance(t.value, str | bytes)
        return _string(t.value)
    if t.vtype == g.ARRAY:
        assert isinstance(t.value, list)
        elem = (
            t.elem_type if t.elem_type >= 0 else _infer(t.value[0]).vtype if t.value else g.UINT32
        )
        head = struct.pack("<IQ", elem, len(t.value))
        if elem == g.STRING:
            return head + b"".join(_string(v) for v in t.value)
        if elem == g.ARRAY:
            return head + b"".join(_value(_infer(v)) for v in t.value)
        return head + struct.pack(f"<{len(t.value)}{g._ARRAY_CODE[elem]}", *t.value)
    return g._SCALAR[t.vtype].pack(t.value)


def header_bytes(
    metadata: Mapping[str, object],
    tensors: Sequence[tuple[str, Sequence[int], int, int]],
    *,
    alignment: int = g.DEFAULT_ALIGNMENT,
    version: int = 3,
) -> tuple[bytes, list[int], int]:
    """Serialize a GGUF header.

    Args:
        metadata: key → value (plain Python values or :class:`Typed`).
        tensors: ``(name, shape, type_id, nbytes)`` in file order.

    Returns:
        The header bytes (padded to the alignment), each tensor's data offset, and the data size.
    """
    parts = [g.GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for key, value in metadata.items():
        t = _infer(value)
        parts.append(_string(key) + struct.pack("<I", t.vtype) + _value(t))
    offsets = []
    offset = 0
    for name, shape, type_id, nbytes in tensors:
        offsets.append(offset)
        parts.append(
            _string(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, type_id, offset)
        )
        offset += -(-nbytes // alignment) * alignment
    head = b"".join(parts)
    head += b"\0" * (-len(head) % alignment)
    return head, offsets, offset


def write_sparse(
    stream: BinaryIO,
    metadata: Mapping[str, object],
    tensors: Sequence[tuple[str, Sequence[int], int, int]],
    *,
    alignment: int = g.DEFAULT_ALIGNMENT,
) -> int:
    """Write a header and extend the file to its full size without writing tensor data."""
    head, _, data = header_bytes(metadata, tensors, alignment=alignment)
    stream.write(head)
    stream.truncate(len(head) + data)
    return len(head) + data


def synthetic_tokenizer(n_vocab: int, n_merges: int) -> dict[str, object]:
    """A tokenizer block of realistic size (strings of ~7 and ~12 bytes), for header-only files."""
    tokens = [f"t{i:x}\u0120x" for i in range(n_vocab)]
    merges = [f"\u0120m{i:x} a{i % 977:x}" for i in range(n_merges)]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "synthetic",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": Typed(g.ARRAY, [1] * n_vocab, g.INT32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
    }


def shard_name(stem: str, index: int, count: int) -> str:
    return f"{stem}-{index + 1:05d}-of-{count:05d}.gguf" if count > 1 else f"{stem}.gguf"


def write_sparse_layout(
    layout: ModelLayout,
    directory: str | Path,
    stem: str,
    *,
    extra_metadata: Mapping[str, object] | None = None,
    alignment: int = g.DEFAULT_ALIGNMENT,
) -> list[Path]:
    """Write ``layout`` as header-only shards split like ``gguf-split`` (by ``TensorInfo.shard``).

    Returns:
        The shard paths, first shard first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = max((t.shard for t in layout.tensors), default=0) + 1
    meta: dict[str, object] = {"general.architecture": layout.architecture}
    meta.update({k: v for k, v in layout.metadata.items() if not isinstance(v, g.SkippedArray)})
    meta.update(extra_metadata or {})
    paths = []
    for shard in range(count):
        shard_meta: dict[str, object] = dict(meta) if shard == 0 else {}
        if count > 1:
            shard_meta["split.no"] = Typed(g.UINT16, shard)
            shard_meta["split.count"] = Typed(g.UINT16, count)
            shard_meta["split.tensors.count"] = Typed(g.INT32, len(layout.tensors))
        records = [
            (t.name, t.shape, t.type_id, t.nbytes) for t in layout.tensors if t.shard == shard
        ]
        path = directory / shard_name(stem, shard, count)
        with path.open("wb") as f:
            write_sparse(f, shard_meta, records, alignment=alignment)
        paths.append(path)
    return paths
