"""Seeded mutations of tiny GGUF files, shared by tests/core/test_fuzz_reader.py and the benchmark.

The seeds are written by the ``gguf`` package's own writer (a tiny qwen3moe and deepseek2 from
:mod:`tests.support.tiny_models`, and a small file with a 5,000-entry vocabulary so the skipped
string-array path is exercised). :func:`mutate` derives case ``n`` of a category from a seed file
with ``random.Random(n)``: the same ``(category, n)`` gives the same bytes on every machine.

Categories:
    truncate  cut the file inside or just past the header
    bitflip   flip 1-8 bits of the header
    field     overwrite one parsed field (count, length, type, dimension, offset, value) with an
              edge value (0, 1, 2^31, 2^32-1, 2^63, 2^64-1, NaN/inf bits, …), or rename a key onto
              another (duplicate keys), or retype ``general.alignment``
    bytes     overwrite a run of header bytes with 0x00, 0xff or random bytes
    nesting   insert an array of arrays 1-3,000 levels deep
    split     give the file ``split.*`` keys with edge values and a ``-0000k-of-0000n`` name
    hparams   set a hyperparameter to NaN, ±inf, a negative or a huge value
"""

from __future__ import annotations

import io
import random
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from moe_studio.core.errors import MoeStudioError
from moe_studio.core.gguf import reader as g
from moe_studio.core.gguf.model import open_model
from tests.support.tiny_models import write_tiny_model

CATEGORIES = ("truncate", "bitflip", "field", "bytes", "nesting", "split", "hparams")
EDGE_U64 = (0, 1, 2, 3, 4, 13, 255, 4096, 4097, 2**16, 2**31, 2**32 - 1, 2**32, 2**62, 2**63)
EDGE_U64 += (2**63 + 1, 2**64 - 1, 10**6)
EDGE_F32 = (float("nan"), float("inf"), float("-inf"), 1e30, -1.0, 3.5)
HPARAM_KEYS = (
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "expert_count",
    "expert_used_count",
    "context_length",
    "attention.sliding_window",
    "attention.key_length",
    "leading_dense_block_count",
    "nextn_predict_layers",
)


@dataclass(frozen=True, slots=True)
class Field:
    """One parsed field of a seed: where it is, how wide, and what it is."""

    pos: int
    width: int
    kind: str  # "count", "len", "type", "value", "dims", "shape", "offset"


@dataclass(frozen=True, slots=True)
class Seed:
    data: bytes
    header_end: int
    fields: tuple[Field, ...]
    kv_start: int  # where the first key-value pair starts (after the 24-byte preamble)
    arch: str


@dataclass(frozen=True, slots=True)
class Case:
    category: str
    number: int
    data: bytes
    name: str = "model.gguf"  # the file name it must be opened under
    sibling: bytes | None = None  # another shard to write next to it, if any
    sibling_name: str = ""


def _walk(data: bytes) -> tuple[int, list[Field]]:
    """The fields of a valid GGUF, by position (a plain walker, for seeds only)."""
    fields = [Field(8, 8, "count"), Field(16, 8, "count")]
    n_t, n_kv = struct.unpack_from("<QQ", data, 8)
    p = 24

    def string(p: int) -> int:
        fields.append(Field(p, 8, "len"))
        (n,) = struct.unpack_from("<Q", data, p)
        return p + 8 + n

    for _ in range(n_kv):
        p = string(p)
        fields.append(Field(p, 4, "type"))
        (vt,) = struct.unpack_from("<I", data, p)
        p += 4
        if vt == g.STRING:
            p = string(p)
        elif vt == g.ARRAY:
            fields.append(Field(p, 4, "type"))
            fields.append(Field(p + 4, 8, "count"))
            et, n = struct.unpack_from("<IQ", data, p)
            p += 12
            if et == g.STRING:
                for _ in range(n):
                    p = string(p) if len(fields) < 4000 else p + 8 + data[p]  # cap the list
            else:
                p += n * g._SCALAR[et].size
        else:
            width = g._SCALAR[vt].size
            fields.append(Field(p, width, "value"))
            p += width
    for _ in range(n_t):
        p = string(p)
        fields.append(Field(p, 4, "dims"))
        (nd,) = struct.unpack_from("<I", data, p)
        p += 4
        for _ in range(nd):
            fields.append(Field(p, 8, "shape"))
            p += 8
        fields.append(Field(p, 4, "type"))
        fields.append(Field(p + 4, 8, "offset"))
        p += 12
    return p, fields


def _vocab_seed(path: Path) -> None:
    writer = GGUFWriter(path, "llama")
    try:
        writer.add_block_count(1)
        writer.add_embedding_length(64)
        writer.add_head_count(4)
        writer.add_uint32("general.alignment", 32)
        writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(5000)])
        writer.add_array("tokenizer.ggml.scores", [0.0] * 5000)
        writer.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
        writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def make_seeds() -> tuple[Seed, ...]:
    """The seed files, written once per process into a temporary folder and read back."""
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen3moe", "deepseek2", "vocab"):
            path = Path(tmp) / f"{arch}.gguf"
            if arch == "vocab":
                _vocab_seed(path)
            else:
                write_tiny_model(path, arch, n_layer=2)
            data = path.read_bytes()
            end, fields = _walk(data)
            seeds.append(Seed(data, end, tuple(fields), 24, "llama" if arch == "vocab" else arch))
    return tuple(seeds)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + payload


def _add_kvs(seed: Seed, pairs: list[bytes], data: bytes | None = None) -> bytes:
    """``data`` with ``pairs`` inserted before the first key (counts and alignment kept valid)."""
    src = seed.data if data is None else data
    blob = b"".join(pairs)
    # Keep the data section aligned: pad with a u8 array whose record is 29 + n bytes.
    n = (-len(blob) - 29) % 32
    blob += _kv("x.pad", g.ARRAY, struct.pack("<IQ", g.UINT8, n)) + b"\0" * n
    n_extra = len(pairs) + 1
    (n_kv,) = struct.unpack_from("<Q", src, 16)
    head = src[:16] + struct.pack("<Q", n_kv + n_extra)
    return head + blob + src[24:]


def _set(buf: bytearray, f: Field, value: int) -> None:
    buf[f.pos : f.pos + f.width] = (value % (1 << (8 * f.width))).to_bytes(f.width, "little")


def mutate(seeds: tuple[Seed, ...], category: str, number: int) -> Case:
    """Case ``number`` of ``category``: deterministic bytes (and file name)."""
    rnd = random.Random(f"{category}:{number}")
    seed = seeds[rnd.randrange(len(seeds))]
    buf = bytearray(seed.data)
    end = seed.header_end
    if category == "truncate":
        cut = rnd.randrange(0, min(len(buf), end + 64))
        return Case(category, number, bytes(buf[:cut]))
    if category == "bitflip":
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(0, end)
            buf[i] ^= 1 << rnd.randrange(8)
        return Case(category, number, bytes(buf))
    if category == "bytes":
        i = rnd.randrange(0, end)
        n = rnd.randint(1, 16)
        fill = rnd.choice((b"\0" * n, b"\xff" * n, bytes(rnd.randrange(256) for _ in range(n))))
        buf[i : i + n] = fill[: len(buf) - i]
        return Case(category, number, bytes(buf))
    if category == "field":
        choice = rnd.random()
        if choice < 0.1:  # duplicate a key: rename one key onto a key of the same length
            keys = [f for f in seed.fields if f.kind == "len" and f.pos < seed.fields[-1].pos]
            a, b = rnd.sample(keys[:40], 2)
            la, lb = (struct.unpack_from("<Q", buf, x.pos)[0] for x in (a, b))
            if la == lb:
                buf[b.pos + 8 : b.pos + 8 + lb] = buf[a.pos + 8 : a.pos + 8 + la]
            return Case(category, number, bytes(buf))
        if choice < 0.2:  # retype general.alignment
            vt = rnd.choice((g.BOOL, g.UINT8, g.UINT16, g.INT32, g.UINT64, g.FLOAT32, g.UINT32))
            value = g._SCALAR[vt].pack(rnd.choice((True, 32)) if vt == g.BOOL else 32)
            if vt == g.FLOAT32:
                value = struct.pack("<f", 32.0)
            return Case(category, number, _add_kvs(seed, [_kv("general.alignment", vt, value)]))
        f = rnd.choice(seed.fields)
        _set(buf, f, rnd.choice(EDGE_U64) + rnd.choice((0, 0, 0, -1, 1)))
        return Case(category, number, bytes(buf))
    if category == "nesting":
        depth = rnd.choice((1, 2, 3, 10, 100, 999, 1000, 3000))
        payload = struct.pack("<IQ", g.ARRAY, rnd.choice((1, 2, 2**40))) * depth
        payload += struct.pack("<IQ", rnd.choice((g.UINT8, g.STRING, g.ARRAY)), 0)
        return Case(category, number, _add_kvs(seed, [_kv("nested", g.ARRAY, payload)]))
    if category == "split":
        count = rnd.choice((0, 1, 2, 3, 99, 999, 1000, 1001, 65535, 10**6, 2**32 - 1))
        no = rnd.choice((0, 1, 2, count - 1, count, 2**16 - 1))
        vt = rnd.choice((g.UINT16, g.UINT32, g.INT32, g.UINT64, g.FLOAT32))
        pack = g._SCALAR[vt].pack
        pairs = []
        for key, value in (("split.no", no), ("split.count", count), ("split.tensors.count", 7)):
            if rnd.random() < 0.9:
                bits = 8 * g._SCALAR[vt].size - 1
                v: object = float(value) if vt == g.FLOAT32 else value % (1 << bits)
                pairs.append(_kv(key, vt, pack(v)))
        data = _add_kvs(seed, pairs)
        name_count = rnd.choice((2, 3, max(count, 1) % 100000))
        name = rnd.choice(
            ("model.gguf", f"m-00001-of-{name_count:05d}.gguf", f"m-00002-of-{name_count:05d}.gguf")
        )
        sibling = data if rnd.random() < 0.5 else None
        return Case(category, number, data, name, sibling, f"m-00002-of-{name_count:05d}.gguf")
    if category == "hparams":
        key = f"{seed.arch}.{rnd.choice(HPARAM_KEYS)}"
        if rnd.random() < 0.5:
            value = struct.pack("<f", rnd.choice(EDGE_F32))
            pair = _kv(key, g.FLOAT32, value)
        else:
            big = rnd.choice((2**31, 2**32 - 1, 2**40, 2**63 - 1, 10**6, 5000))
            pair = _kv(key, rnd.choice((g.INT64, g.UINT64)), struct.pack("<q", big))
            if rnd.random() < 0.3:
                pair = _kv(key, g.INT32, struct.pack("<i", -rnd.randint(1, 2**31)))
        # The new pair comes first, so it wins over the seed's own value (first value wins).
        return Case(category, number, _add_kvs(seed, [pair]))
    raise ValueError(f"unknown category {category!r}")


class CountingStream(io.BytesIO):
    """A BytesIO that counts the bytes read and the read calls, to bound the reader's work
    without a clock."""

    bytes_read = 0
    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        self.reads += 1
        return chunk


def run_case(case: Case, folder: Path) -> tuple[str, int]:
    """Open ``case`` the way ``inspect`` does; ``("ok"|"refused"|"crash:<Type>", bytes read)``.

    A case with a shard name (or a sibling) is written to ``folder``; the others are read from
    an in-memory stream.
    """
    stream = CountingStream(case.data)
    try:
        if case.name == "model.gguf" and case.sibling is None:
            open_model(stream)
        else:
            for old in folder.iterdir():
                old.unlink()
            path = folder / case.name
            path.write_bytes(case.data)
            if case.sibling is not None and case.sibling_name != case.name:
                (folder / case.sibling_name).write_bytes(case.sibling)
            open_model(path)
            return "ok", len(case.data)
    except MoeStudioError:
        return "refused", stream.bytes_read
    except Exception as exc:
        return f"crash:{type(exc).__name__}", stream.bytes_read
    return "ok", stream.bytes_read
