"""The tiny fixtures with the real engine: it loads each one as our reader reads it, and answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moe_studio.core.gguf.model import open_model
from moe_studio.core.gguf.reader import read_header, read_model

pytestmark = pytest.mark.engine

TINY_MODELS = ("tiny_qwen3moe", "tiny_deepseek2", "tiny_glm4moe", "tiny_split")
COMPLETION = {"prompt": "The quick brown fox", "n_predict": 8}

_LOADED = re.compile(
    r"llama_model_loader: loaded meta data with (\d+) key-value pairs and (\d+) tensors "
    r"from (.+) \(version"
)
_TYPE = re.compile(r"llama_model_loader: - type +(\w+): +(\d+) tensors")
_UNUSED = re.compile(r"model has unused tensor (\S+) \(size = (\d+) bytes\) -- ignoring")
# One mmapped host buffer per shard: ik "llm_load_tensors: CPU buffer size", mainline
# "load_tensors: CPU_Mapped model buffer size".
_CPU_BUFFER = re.compile(r"load_tensors: +CPU(?:_Mapped)? (?:model )?buffer size = +([\d.]+) MiB")


def _loaded_line(log: str) -> tuple[int, int, str]:
    found = _LOADED.findall(log)
    assert len(found) == 1, log[-4000:]
    n_kv, n_tensors, path = found[0]
    return int(n_kv), int(n_tensors), path


@pytest.mark.parametrize("fixture", TINY_MODELS)
def test_engine_loads_fixture_as_our_reader_reads_it(
    fixture: str, request: pytest.FixtureRequest, llama_server
) -> None:
    model: Path = request.getfixturevalue(fixture)
    layout = open_model(model)

    with llama_server(model) as server:
        status, body = server.request("POST", "/completion", COMPLETION)
    log = server.output

    n_kv, n_tensors, path = _loaded_line(log)
    # N is the KV count of the file given to -m (the first shard), M all tensors of all shards.
    assert path == str(model)
    assert n_kv == len(read_header(model).metadata)
    assert n_tensors == len(layout.tensors)
    engine_types = {name.upper(): int(count) for name, count in _TYPE.findall(log)}
    assert engine_types == {name: n for name, (n, _) in layout.type_histogram.items()}

    assert status == 200, body[:2000]
    reply = json.loads(body)
    assert isinstance(reply["timings"], dict)
    assert 0 < reply["tokens_predicted"] <= COMPLETION["n_predict"]
    assert reply["content"].isascii()


def test_engine_skips_exactly_the_glm_nextn_block_we_mark_unloaded(
    tiny_glm4moe: Path, launch_log
) -> None:
    layout = open_model(tiny_glm4moe)
    unused = {name: int(size) for name, size in _UNUSED.findall(launch_log(tiny_glm4moe))}
    ours = {t.name: t.nbytes for t in layout.tensors if not t.loaded}
    assert ours
    assert unused == ours


def test_engine_reads_split_shards_as_we_do(tiny_split: Path, launch_log) -> None:
    log = launch_log(tiny_split)
    shards = read_model(tiny_split).shards
    n_kv, n_tensors, _ = _loaded_line(log)
    assert n_kv == len(shards[0].metadata) == len(read_header(tiny_split).metadata)
    assert n_tensors == sum(len(s.tensors) for s in shards)
    assert f"additional {len(shards) - 1} GGUFs metadata loaded" in log
    # One mmapped CPU buffer per shard, in shard order, spanning the shard's tensor data.
    spans = [
        max(t.offset + t.nbytes for t in s.tensors) - min(t.offset for t in s.tensors)
        for s in shards
    ]
    buffers = [float(mib) for mib in _CPU_BUFFER.findall(log)]
    assert buffers == [round(span / 2**20, 2) for span in spans]


def test_engine_takes_deepseek_fixture_as_ik_flavour(
    tiny_deepseek2: Path, launch_log, ik_engine: Path
) -> None:
    log = launch_log(tiny_deepseek2)
    n_layer = open_model(tiny_deepseek2).n_layer
    assert "Adjusted mainline llama.cpp MLA tensors" not in log
    assert f"llm_prepare_mla: need to compute {n_layer} wk_b/wv_b tensors" in log
