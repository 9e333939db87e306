"""Where a GGUF header ends, from as much of its start as is at hand.

A remote reader fetches the first few KiB of a file, asks :func:`header_extent` how far the
header (metadata and tensor table) goes, and fetches that much more in one request instead of
doubling a window until the parser is satisfied. When the prefix holds the whole header the answer
is exact; otherwise it is an estimate from what the prefix shows: string arrays are extrapolated
from the strings seen so far, the arrays a tokenizer always has after its vocabulary are expected,
and tensor records are sized like the ones read (or like a typical record when none is).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# GGUF metadata value types (as in reader).
_STRING, _ARRAY = 8, 9
_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# A tensor record: name length + name (~30 bytes) + n_dims + 3 dims + type + offset.
_TYPICAL_RECORD = 8 + 32 + 4 + 3 * 8 + 4 + 8
# A metadata pair not yet seen: key + type + a short value.
_TYPICAL_PAIR = 96
_DEFAULT_STRING = 16
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Extent:
    """How many bytes the header takes: exactly, or an estimate when the prefix is short."""

    end: int
    exact: bool


class _Short(Exception):  # noqa: N818 - control flow: the prefix ends here
    pass


class _Walk:
    __slots__ = ("buf", "done_strings", "pos", "string_bytes")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.done_strings = 0
        self.string_bytes = 0

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise _Short

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> bytes:
        n = self.u64()
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw

    def strings(self, count: int) -> None:
        """Skip ``count`` strings, counting them (and their bytes) as it goes."""
        self.done_strings = 0
        self.string_bytes = 0
        buf, unpack, size = self.buf, _U64.unpack_from, len(self.buf)
        p = self.pos
        for i in range(count):
            if p + 8 > size:
                raise _Short
            (n,) = unpack(buf, p)
            if p + 8 + n > size:
                raise _Short
            p += 8 + n
            self.pos = p
            self.done_strings = i + 1
            self.string_bytes += 8 + n


def header_extent(prefix: bytes) -> Extent:
    """The end of the header (metadata and tensor table) of the GGUF file starting with ``prefix``.

    Never raises: a prefix that is not GGUF, or a corrupt one, gives an exact end at the prefix's
    length (the parser will then say what is wrong with the bytes themselves).
    """
    w = _Walk(prefix)
    stage = "fixed"
    n_tensors = n_kv = 0
    kv_done = 0
    tensors_done = 0
    tensor_start = 0
    array_key = ""
    array_count = 0
    pending = 0
    tokenizer_model = ""
    try:
        if prefix[:4] != b"GGUF" and len(prefix) >= 4:
            return Extent(len(prefix), True)
        w.need(24)
        w.pos = 8
        n_tensors = w.u64()
        n_kv = w.u64()
        if n_tensors > 1 << 32 or n_kv > 1 << 32:
            return Extent(len(prefix), True)
        stage = "kv"
        for kv_done in range(n_kv):  # noqa: B007 - read after the loop when the prefix ends
            key = w.string().decode("utf-8", "replace")
            vtype = w.u32()
            if vtype in _WIDTH:
                w.need(_WIDTH[vtype])
                w.pos += _WIDTH[vtype]
            elif vtype == _STRING:
                value = w.string()
                if key == "tokenizer.ggml.model":
                    tokenizer_model = value.decode("utf-8", "replace")
            elif vtype == _ARRAY:
                elem = w.u32()
                count = w.u64()
                array_key, array_count = key, count
                if elem in _WIDTH:
                    pending = count * _WIDTH[elem]
                    w.need(pending)
                    w.pos += count * _WIDTH[elem]
                elif elem == _STRING:
                    stage = "strings"
                    w.strings(count)
                    stage = "kv"
                else:
                    return Extent(w.pos, True)
                array_key = ""
                pending = 0
            else:
                return Extent(w.pos, True)
        kv_done = n_kv
        stage = "tensors"
        tensor_start = w.pos
        for tensors_done in range(n_tensors):  # noqa: B007
            w.string()
            n_dims = w.u32()
            if n_dims > 4:
                return Extent(w.pos, True)
            w.need(8 * n_dims + 12)
            w.pos += 8 * n_dims + 12
        return Extent(w.pos, True)
    except _Short:
        pass
    return Extent(
        _estimate(
            w,
            stage,
            n_tensors,
            n_kv,
            kv_done,
            tensors_done,
            tensor_start,
            array_key,
            array_count,
            pending,
            tokenizer_model,
        ),
        False,
    )


def _estimate(
    w: _Walk,
    stage: str,
    n_tensors: int,
    n_kv: int,
    kv_done: int,
    tensors_done: int,
    tensor_start: int,
    array_key: str,
    array_count: int,
    pending: int,
    tokenizer_model: str,
) -> int:
    if stage == "fixed":
        return max(len(w.buf), 24) + 64 * 1024
    if stage == "tensors":
        seen = w.pos - tensor_start
        per = seen / tensors_done if tensors_done else _TYPICAL_RECORD
        return w.pos + int(per * (n_tensors - tensors_done)) + _TYPICAL_RECORD
    end = w.pos
    later_pairs = max(n_kv - kv_done - 1, 0)
    if stage == "strings":
        avg = w.string_bytes / w.done_strings if w.done_strings else 8 + _DEFAULT_STRING
        end += int(avg * (array_count - w.done_strings))
        if array_key == "tokenizer.ggml.tokens":
            # What follows a vocabulary: token types always, scores for SentencePiece, merges
            # ("a b", about two tokens long) for BPE, each as long as the vocabulary.
            end += 4 * array_count + _TYPICAL_PAIR
            later_pairs -= 1
            if tokenizer_model in ("llama", "t5", "bert"):
                end += 4 * array_count + _TYPICAL_PAIR
                later_pairs -= 1
            elif tokenizer_model == "gpt2" or not tokenizer_model:
                end += int((2 * (avg - 8) + 1 + 8) * array_count) + _TYPICAL_PAIR
                later_pairs -= 1
    elif array_key:
        end += pending  # a numeric array cut short: its length is known
    end += max(later_pairs, 0) * _TYPICAL_PAIR
    return end + n_tensors * _TYPICAL_RECORD
