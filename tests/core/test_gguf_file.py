"""The GGUF header reader: every value type, split shards, ik types, and every kind of bad input."""

from __future__ import annotations

import io
import itertools
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_studio.core.errors import GGUFFormatError, ModelFileError, ShardError, UnknownTypeError
from moe_studio.core.gguf import reader as g
from moe_studio.core.gguf.ggml_types import type_by_name
from moe_studio.core.gguf.writer import Typed, header_bytes, shard_name
from tests.support.fuzz_gguf import CountingStream

I32 = g.INT32


def _tid(name: str) -> int:
    t = type_by_name(name)
    assert t is not None
    return t.id


def _tensor(
    name: str, shape: tuple[int, ...], type_name: str
) -> tuple[str, tuple[int, ...], int, int]:
    t = type_by_name(type_name)
    assert t is not None
    return (name, shape, t.id, t.tensor_bytes(shape))


SMALL_META: dict[str, object] = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.block_count": 2,
    "u8": Typed(g.UINT8, 200),
    "i8": Typed(g.INT8, -5),
    "u16": Typed(g.UINT16, 65000),
    "i16": Typed(g.INT16, -30000),
    "i32": Typed(g.INT32, -2_000_000_000),
    "f32": 0.5,
    "b": True,
    "u64": Typed(g.UINT64, 2**63 + 5),
    "i64": Typed(g.INT64, -(2**62)),
    "f64": Typed(g.FLOAT64, 1e-300),
    "arr_i32": Typed(g.ARRAY, [1, -2, 3], I32),
    "arr_str": ["a", "bé", ""],
}
SMALL_TENSORS = [
    _tensor("token_embd.weight", (64, 100), "q8_0"),
    _tensor("blk.0.attn_q.weight", (256, 64), "iq4_ks"),
    _tensor("blk.0.ffn_up_exps.weight", (256, 32, 4), "iq2_kt"),
    _tensor("blk.1.ffn_down_exps.weight", (256, 32, 4), "iq3_k"),
    _tensor("blk.1.attn_output.weight", (64, 64), "q8_0_r8"),
    _tensor("output_norm.weight", (64,), "f32"),
]


def _file(
    meta: dict[str, object] = SMALL_META, tensors: list = SMALL_TENSORS, version: int = 3
) -> bytes:  # type: ignore[type-arg]
    head, _, data = header_bytes(meta, tensors, version=version)
    return head + b"\0" * data


def test_every_value_type_round_trips_through_a_stream() -> None:
    h = g.read_header(io.BytesIO(_file()))
    m = h.metadata
    assert m["u8"] == 200 and m["i8"] == -5 and m["u16"] == 65000 and m["i16"] == -30000
    assert m["i32"] == -2_000_000_000 and m["f32"] == 0.5 and m["b"] is True
    assert m["u64"] == 2**63 + 5 and m["i64"] == -(2**62) and m["f64"] == 1e-300
    assert m["arr_i32"] == [1, -2, 3] and m["arr_str"] == ["a", "bé", ""]
    assert [t.name for t in h.tensors] == [t[0] for t in SMALL_TENSORS]
    assert h.version == 3 and h.alignment == 32


def test_version_2_reads_like_version_3(tmp_path: Path) -> None:
    path = tmp_path / "v2.gguf"
    path.write_bytes(_file(version=2))
    h = g.read_header(path)
    assert h.version == 2 and len(h.tensors) == len(SMALL_TENSORS)


def test_ik_types_include_row_meta_and_match_the_offsets() -> None:
    h = g.read_header(io.BytesIO(_file()))
    sizes = {t.name: t.nbytes for t in h.tensors}
    # IQ4_KS: 4 bytes of row scale + 136 bytes per 256 → 140 per row, 64 rows.
    assert sizes["blk.0.attn_q.weight"] == 64 * (4 + 136)
    assert sizes["blk.0.ffn_up_exps.weight"] == 32 * 4 * (4 + 68)  # IQ2_KT
    assert sizes["blk.1.ffn_down_exps.weight"] == 32 * 4 * 110  # IQ3_K, no row meta
    assert sizes["blk.1.attn_output.weight"] == 64 * 2 * 34  # Q8_0_R8
    # Each size, padded to the alignment, is exactly the distance to the next tensor.
    ordered = sorted(h.tensors, key=lambda t: t.offset)
    for a, b in itertools.pairwise(ordered):
        assert b.offset - a.offset == -(-a.nbytes // 32) * 32


def test_large_arrays_are_skipped_unless_asked_for(tmp_path: Path) -> None:
    vocab = [f"tok{i}" for i in range(20000)]
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": vocab,
        "scores": Typed(g.ARRAY, [0.0] * 9000, g.FLOAT32),
    }
    path = tmp_path / "vocab.gguf"
    path.write_bytes(_file(meta))
    h = g.read_header(path)
    tokens = h.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, g.SkippedArray) and tokens.count == 20000
    assert isinstance(h.metadata["scores"], g.SkippedArray)
    assert g.read_skipped_array(path, tokens) == vocab
    loaded = g.read_header(path, load_arrays={"tokenizer.ggml.tokens"})
    assert loaded.metadata["tokenizer.ggml.tokens"] == vocab
    assert [t.name for t in loaded.tensors] == [t.name for t in h.tensors]


# --- bad input -----------------------------------------------------------------------------------


def _error(data: bytes, name: str = "bad.gguf") -> GGUFFormatError:
    stream = io.BytesIO(data)
    stream.name = name  # type: ignore[misc]
    with pytest.raises(ModelFileError) as info:
        g.read_header(stream)
    assert isinstance(info.value, GGUFFormatError)
    return info.value


def test_truncation_at_every_header_offset_names_file_and_offset() -> None:
    head, _, _ = header_bytes(SMALL_META, SMALL_TENSORS)
    for cut in range(len(head) - 1):
        err = _error(head[:cut])
        assert err.path == "bad.gguf"
        assert err.offset is not None and 0 <= err.offset <= cut
        assert "bad.gguf" in str(err)


def test_truncated_tensor_data_is_reported(tmp_path: Path) -> None:
    data = _file()
    path = tmp_path / "short.gguf"
    path.write_bytes(data[:-100])
    with pytest.raises(GGUFFormatError, match="truncated"):
        g.read_header(path)


def test_wrong_magic_and_foreign_files() -> None:
    assert "not a GGUF file" in str(_error(b"GGML" + b"\0" * 40))
    assert "ZIP" in str(_error(b"PK\x03\x04" + b"\0" * 40))
    assert "HTML" in str(_error(b"<!DOCTYPE html><html>Not Found</html>"))
    assert "safetensors" in str(_error(struct.pack("<Q", 100) + b'{"__metadata__":{}}'))
    assert "only 2 bytes" in str(_error(b"GG"))
    # Plain words, not Python's bytes repr (b'hell').
    assert "does not start with GGUF (found 'hell')" in str(_error(b"hello world, no model"))
    assert "(found '\\x00\\x01\\x02\\x03')" in str(_error(bytes(range(40))))
    assert "b'" not in str(_error(b"hello world, no model"))


def test_version_1_and_future_versions_are_refused() -> None:
    assert "version 1" in str(_error(b"GGUF" + struct.pack("<IQQ", 1, 0, 0)))
    assert "version 9" in str(_error(b"GGUF" + struct.pack("<IQQ", 9, 0, 0)))


@pytest.mark.parametrize(
    "data",
    [
        b"GGUF" + struct.pack("<IQQ", 3, 2**63, 0),  # tensor count
        b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63),  # KV count
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"key",  # key length
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IIQ", g.ARRAY, g.UINT8, 2**63),
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IIQ", g.ARRAY, g.STRING, 2**63),
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IIQ", g.ARRAY, g.STRING, 3)
        + struct.pack("<Q", 2**63),
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IQ", g.STRING, 10**6)
        + b"abc",
    ],
    ids=["tensors", "kv", "key", "u8-array", "string-array", "string-in-array", "string-past-eof"],
)
def test_absurd_counts_fail_fast_without_allocating(data: bytes) -> None:
    # Bounded work, measured without a clock: each byte is read at most once, in no more read
    # calls than there are bytes (a loop over the claimed count would make more), and nothing
    # is allocated by the claimed count.
    stream = CountingStream(data + b"\0" * 64)
    stream.name = "bad.gguf"  # type: ignore[misc]
    tracemalloc.start()
    try:
        with pytest.raises(GGUFFormatError) as info:
            g.read_header(stream)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    err = info.value
    assert stream.bytes_read <= len(stream.getbuffer())
    assert stream.reads <= len(stream.getbuffer()) + 1
    assert peak < 100 * 2**20
    assert err.offset is not None
    assert "corrupt" in str(err) or "truncated" in str(err)


def test_absurd_counts_in_a_stream_of_unknown_size_still_fail_fast() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)
            self.requests: list[int] = []

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            self.requests.append(len(b))
            chunk = self._data.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    data = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IQ", g.STRING, 2**62)
    )
    pipe = Pipe(data)
    with pytest.raises(GGUFFormatError):
        g.read_header(io.BufferedReader(pipe))  # type: ignore[arg-type]
    # The claimed 2**62-byte string is read in bounded chunks that stop at the end of the data,
    # never requested (and allocated) whole.
    assert pipe.requests and max(pipe.requests) <= g._MAX_READ
    assert len(pipe.requests) <= 4


def test_duplicate_tensor_names() -> None:
    tensors = [*SMALL_TENSORS, SMALL_TENSORS[1]]
    err = _error(_file(tensors=tensors))
    assert "appears twice" in str(err) and "blk.0.attn_q.weight" in str(err)


def test_unknown_type_is_an_error_naming_tensor_and_id() -> None:
    tensors = [("blk.7.ffn_up_exps.weight", (256, 4), 160, 512)]
    head, _, _ = header_bytes({"general.architecture": "llama"}, tensors)
    with pytest.raises(UnknownTypeError) as info:
        g.read_header(io.BytesIO(head))  # no data: the size cannot be recovered
    message = str(info.value)
    assert "blk.7.ffn_up_exps.weight" in message and "type 160" in message
    assert "neither ik_llama.cpp nor llama.cpp" in message


def test_unknown_type_with_recoverable_size_is_a_warning() -> None:
    tensors = [
        ("blk.7.ffn_up_exps.weight", (256, 4), 160, 512),
        _tensor("blk.8.attn_q.weight", (32, 2), "f32"),
    ]
    head, _, data = header_bytes({"general.architecture": "llama"}, tensors)
    h = g.read_header(io.BytesIO(head + b"\0" * data))
    assert h.tensors[0].nbytes == 512
    assert any("type 160" in w for w in h.warnings)


def test_size_that_disagrees_with_offsets_is_an_error() -> None:
    # The writer places the next tensor as if IQ4_KS had no row scales (ik gguf-py's mistake).
    naive = 64 * 136
    tensors = [
        ("blk.0.attn_q.weight", (256, 64), _tid("iq4_ks"), naive),
        _tensor("blk.0.attn_k.weight", (32, 2), "f32"),
    ]
    head, _, data = header_bytes({"general.architecture": "llama"}, tensors)
    err = _error(head + b"\0" * data)
    assert "blk.0.attn_q.weight" in str(err) and "IQ4_KS" in str(err)


def test_rows_that_are_not_whole_blocks() -> None:
    err = _error(_file(tensors=[("blk.0.x.weight", (100, 2), _tid("q4_K"), 1000)]))
    assert "not a whole number" in str(err)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFFormatError, match="is a folder"):
        g.read_header(tmp_path)
    with pytest.raises(GGUFFormatError, match="does not exist"):
        g.read_header(tmp_path / "nope.gguf")


# --- split models --------------------------------------------------------------------------------


def _write_split(
    folder: Path, stem: str, count: int, *, total: int | None = None, tensors_per: int = 2
) -> list[Path]:
    paths = []
    n_total = count * tensors_per if total is None else total
    for i in range(count):
        meta: dict[str, object] = {"general.architecture": "llama"} if i == 0 else {}
        meta |= {
            "split.no": Typed(g.UINT16, i),
            "split.count": Typed(g.UINT16, count),
            "split.tensors.count": Typed(g.INT32, n_total),
        }
        tensors = [_tensor(f"blk.{i}.t{j}.weight", (32, 4), "f16") for j in range(tensors_per)]
        path = folder / shard_name(stem, i, count)
        path.write_bytes(_file(meta, tensors))
        paths.append(path)
    return paths


def test_any_shard_opens_the_whole_split_model(tmp_path: Path) -> None:
    paths = _write_split(tmp_path, "m", 3)
    for p in paths:
        model = g.read_model(p)
        assert [s.path for s in model.shards] == [str(x) for x in paths]
        assert sum(len(s.tensors) for s in model.shards) == 6


def test_missing_shard_is_named(tmp_path: Path) -> None:
    paths = _write_split(tmp_path, "m", 3)
    paths[1].unlink()
    with pytest.raises(ShardError) as info:
        g.read_model(paths[0])
    assert "m-00002-of-00003.gguf" in str(info.value)
    assert "missing" in str(info.value)


def test_shard_of_another_model(tmp_path: Path) -> None:
    _write_split(tmp_path, "m", 3)
    other = tmp_path / "o"
    other.mkdir()
    foreign = _write_split(other, "m", 3, total=9, tensors_per=3)
    (tmp_path / "m-00002-of-00003.gguf").write_bytes(foreign[1].read_bytes())
    with pytest.raises(ShardError, match="another model"):
        g.read_model(tmp_path / "m-00001-of-00003.gguf")


def test_shard_with_a_different_split_count(tmp_path: Path) -> None:
    _write_split(tmp_path, "m", 3)
    other = tmp_path / "o"
    other.mkdir()
    foreign = _write_split(other, "x", 4)
    (tmp_path / "m-00003-of-00003.gguf").write_bytes(foreign[2].read_bytes())
    with pytest.raises(ShardError, match="split into 4 files"):
        g.read_model(tmp_path / "m-00001-of-00003.gguf")


def test_duplicate_tensor_across_shards(tmp_path: Path) -> None:
    paths = _write_split(tmp_path, "m", 2)
    meta = {
        "split.no": Typed(g.UINT16, 1),
        "split.count": Typed(g.UINT16, 2),
        "split.tensors.count": Typed(g.INT32, 4),
    }
    paths[1].write_bytes(
        _file(
            meta,
            [
                _tensor("blk.0.t0.weight", (32, 4), "f16"),
                _tensor("blk.1.t1.weight", (32, 4), "f16"),
            ],
        )
    )
    with pytest.raises(ShardError, match="already has"):
        g.read_model(paths[0])


def test_split_name_that_does_not_follow_the_pattern(tmp_path: Path) -> None:
    paths = _write_split(tmp_path, "m", 2)
    renamed = tmp_path / "renamed.gguf"
    paths[0].rename(renamed)
    with pytest.raises(ShardError, match="pattern"):
        g.read_model(renamed)


# --- fuzzing -------------------------------------------------------------------------------------

_BASE = _file()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_BASE) - 1),
            st.integers(0, 255),
            st.sampled_from(["set", "cut", "insert"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_headers_parse_or_fail_cleanly(edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(_BASE)
    for offset, value, kind in edits:
        pos = offset % max(1, len(data))
        if kind == "set" and data:
            data[pos] = value
        elif kind == "cut":
            del data[pos:]
        else:
            data[pos:pos] = bytes([value])
    stream = CountingStream(bytes(data))
    try:
        g.read_header(stream)
    except ModelFileError as exc:
        assert exc.offset is None or exc.offset >= 0
        assert str(exc)
    # Bounded work without a clock: no byte read twice, no read loop driven by a claimed count.
    assert stream.bytes_read <= len(data)
    assert stream.reads <= len(data) + 1
