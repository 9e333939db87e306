"""Hostile headers (issue 12, items 1-6): each refusal names the file, the offset and the field."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from moe_studio.core.errors import GGUFFormatError, ModelFileError, ShardError
from moe_studio.core.gguf import reader as g
from moe_studio.core.gguf.ggml_types import type_by_name
from moe_studio.core.gguf.model import open_model
from moe_studio.core.gguf.writer import Typed, header_bytes


def _f32_tensor(name: str, n: int = 64) -> tuple[str, tuple[int, ...], int, int]:
    t = type_by_name("f32")
    assert t is not None
    return (name, (n,), t.id, t.tensor_bytes((n,)))


def _file(meta: dict[str, object], tensors: list | None = None) -> bytes:  # type: ignore[type-arg]
    head, _, data = header_bytes(meta, tensors or [_f32_tensor("output_norm.weight")])
    return head + b"\0" * data


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + payload


def _raw(*pairs: bytes, pad: int = 64) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(pairs)) + b"".join(pairs) + b"\0" * pad


# -- item 1: split.count drives the shard search -------------------------------------------------


@pytest.mark.parametrize("count", [10**6, 2**32 - 1, g.MAX_SHARDS + 1])
def test_absurd_split_count_is_refused_before_any_path_is_built(
    tmp_path: Path, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m-00001-of-00002.gguf"
    meta = {
        "general.architecture": "llama",
        "split.no": Typed(g.UINT16, 0),
        "split.count": Typed(g.UINT32, count),
    }
    path.write_bytes(_file(meta))

    def no_paths(*_: object) -> list[Path]:
        raise AssertionError("built shard paths for an absurd split.count")

    monkeypatch.setattr(g, "split_paths", no_paths)
    with pytest.raises(GGUFFormatError) as err:
        g.read_model(path)
    text = str(err.value)
    assert "split.count" in text and str(path) in text and len(text) < 400
    assert err.value.offset is not None and err.value.offset > 0


def test_the_opened_shard_is_never_reported_missing(tmp_path: Path) -> None:
    path = tmp_path / "m-00001-of-00003.gguf"
    meta = {
        "general.architecture": "llama",
        "split.no": Typed(g.UINT16, 0),
        "split.count": Typed(g.UINT16, 3),
    }
    path.write_bytes(_file(meta))
    with pytest.raises(ShardError) as err:
        g.read_model(path)
    text = str(err.value)
    assert "2 of them" in text and "m-00002-of-00003" in text and "m-00003-of-00003" in text
    assert "m-00001-of-00003.gguf," not in text and "(m-00001" not in text


def test_a_name_that_disagrees_with_split_count_says_so(tmp_path: Path) -> None:
    path = tmp_path / "m-00001-of-00002.gguf"
    meta = {
        "general.architecture": "llama",
        "split.no": Typed(g.UINT16, 0),
        "split.count": Typed(g.UINT16, 7),
    }
    path.write_bytes(_file(meta))
    with pytest.raises(ShardError, match=r"split\.count says 7") as err:
        g.read_model(path)
    assert err.value.offset is not None


def test_many_missing_shards_are_listed_briefly(tmp_path: Path) -> None:
    path = tmp_path / "m-00001-of-00900.gguf"
    meta = {
        "general.architecture": "llama",
        "split.no": Typed(g.UINT16, 0),
        "split.count": Typed(g.UINT16, 900),
    }
    path.write_bytes(_file(meta))
    with pytest.raises(ShardError, match="and 894 more") as err:
        g.read_model(path)
    assert len(str(err.value)) < 600


# -- item 2: hyperparameters without bounds ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llama.block_count", Typed(g.FLOAT32, float("nan"))),
        ("llama.block_count", Typed(g.FLOAT64, float("inf"))),
        ("llama.block_count", Typed(g.UINT32, 2**31)),
        ("llama.embedding_length", Typed(g.FLOAT32, float("-inf"))),
        ("llama.context_length", Typed(g.INT64, -5)),
        ("llama.feed_forward_length", Typed(g.ARRAY, [1, 2**40], g.UINT64)),
    ],
    ids=["nan", "inf", "2^31-layers", "-inf", "negative", "array"],
)
def test_hyperparameters_out_of_range_are_refused(
    tmp_path: Path, key: str, value: Typed, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "h.gguf"
    path.write_bytes(_file({"general.architecture": "llama", key: value}))

    import moe_studio.core.gguf.model as model_mod

    def no_alloc(*_: object, **__: object) -> None:
        raise AssertionError("sized the model before checking its hyperparameters")

    monkeypatch.setattr(model_mod, "classify_tensors", no_alloc)
    with pytest.raises(GGUFFormatError) as err:
        open_model(path)
    assert key in str(err.value) and err.value.offset is not None


def test_a_tensor_of_an_absurd_layer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    path.write_bytes(
        _file({"general.architecture": "llama"}, [_f32_tensor("blk.2147483647.attn_norm.weight")])
    )
    with pytest.raises(GGUFFormatError, match="layer 2147483647") as err:
        open_model(path)
    assert err.value.offset is not None


# -- item 3: string lengths of 2^63 and more in big string arrays --------------------------------


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 2**63 + 12345])
@pytest.mark.parametrize("at", [0, 1, 4000])
def test_huge_string_length_in_a_big_string_array(length: int, at: int) -> None:
    count = g.SMALL_ARRAY + 10
    strings = [struct.pack("<Q", 1) + b"a"] * at + [struct.pack("<Q", length)]
    payload = struct.pack("<IQ", g.STRING, count) + b"".join(strings)
    data = _raw(_kv("tokenizer.ggml.tokens", g.ARRAY, payload), pad=count * 8 + 64)
    with pytest.raises(GGUFFormatError) as err:
        g.read_header(io.BytesIO(data))
    assert "tokenizer.ggml.tokens" in str(err.value) and err.value.offset is not None


# -- item 4: nested arrays -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5000])
def test_nested_arrays_are_refused_without_recursion(depth: int) -> None:
    payload = struct.pack("<IQ", g.ARRAY, 1) * depth + struct.pack("<IQ", g.UINT8, 0)
    data = _raw(_kv("deep", g.ARRAY, payload))
    with pytest.raises(GGUFFormatError, match="array of arrays") as err:
        g.read_header(io.BytesIO(data))
    assert "'deep'" in str(err.value) and err.value.offset == 40  # its element type


# -- item 5: only regular files ------------------------------------------------------------------


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GGUFFormatError, match="named pipe"):
        open_model(fifo)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused() -> None:
    with pytest.raises(GGUFFormatError, match="character device"):
        open_model("/dev/zero")


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GGUFFormatError, match="folder"):
        open_model(tmp_path)


# -- item 6: duplicate keys and the alignment's type ---------------------------------------------


def test_duplicate_keys_keep_the_first_value_with_a_warning() -> None:
    first = _kv("general.name", g.STRING, struct.pack("<Q", 5) + b"first")
    second = _kv("general.name", g.STRING, struct.pack("<Q", 6) + b"second")
    h = g.read_header(io.BytesIO(_raw(first, second)))
    assert h.metadata["general.name"] == "first"
    assert len(h.warnings) == 1 and "general.name" in h.warnings[0]
    assert "first value" in h.warnings[0]


@pytest.mark.parametrize(
    "value", [Typed(g.BOOL, True), Typed(g.UINT8, 32), Typed(g.UINT64, 32), Typed(g.INT32, 32)]
)
def test_alignment_must_be_u32(value: Typed) -> None:
    data = _file({"general.architecture": "llama", "general.alignment": value})
    with pytest.raises(GGUFFormatError, match=r"general\.alignment") as err:
        g.read_header(io.BytesIO(data))
    assert "uint32" in str(err.value) and err.value.offset == 69  # the key record


def test_u32_alignment_is_accepted() -> None:
    data = _file({"general.architecture": "llama", "general.alignment": Typed(g.UINT32, 32)})
    assert g.read_header(io.BytesIO(data)).alignment == 32


def test_every_refusal_is_a_model_file_error() -> None:
    assert issubclass(GGUFFormatError, ModelFileError)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_profiles_and_rig_files_must_be_regular_files(tmp_path: Path, kind: str) -> None:
    from moe_studio.core.errors import HardwareError, ProfileError
    from moe_studio.core.hardware.rigs import load_rig_file
    from moe_studio.core.profiles.schema import load_profile

    if kind == "fifo":
        target = tmp_path / "thing"
        os.mkfifo(target)
        said = "named pipe"
    else:
        if not Path("/dev/zero").exists():
            pytest.skip("needs /dev/zero")
        target = Path("/dev/zero")
        said = "character device"
    with pytest.raises(ProfileError, match=said):
        load_profile(target)
    with pytest.raises(HardwareError, match=said):
        load_rig_file(target)


def test_mainline_plans_say_that_mainline_refuses_a_duplicate_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moe_studio.core.cli.main import main
    from tests.support.tiny_models import write_tiny_model

    tiny = write_tiny_model(tmp_path / "tiny.gguf", "qwen3moe")
    data = Path(tiny).read_bytes()
    # One more general.name record in front of the others: 64 bytes, a multiple of the 32-byte
    # alignment, so the tensor data stays aligned.
    record = _kv("general.name", g.STRING, struct.pack("<Q", 32) + b"d" * 32)
    assert len(record) == 64
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    path = tmp_path / "dup.gguf"
    path.write_bytes(data[:16] + struct.pack("<Q", n_kv + 1) + record + data[24:])
    layout = open_model(path)
    assert layout.duplicate_keys == ("general.name",)
    args = ["plan", str(path), "--ram", "16GiB", "--ctx", "512"]
    assert main([*args, "--dialect", "mainline"]) == 0
    out = capsys.readouterr().out
    assert "mainline llama.cpp refuses this file: duplicate key 'general.name'" in out
    assert main([*args, "--dialect", "ik"]) == 0
    assert "refuses this file" not in capsys.readouterr().out
    assert main(["inspect", str(path)]) == 0
    assert "mainline llama.cpp refuses this file: duplicate key 'general.name'" in (
        capsys.readouterr().out
    )
