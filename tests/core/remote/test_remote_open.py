"""Opening a model's headers over HTTP Range requests: equal to the local open, cheap, cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.errors import RemoteError
from moe_studio.core.gguf.extent import header_extent
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.reader import read_header
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import RangeClient
from moe_studio.core.remote.model import open_remote_model
from moe_studio.core.remote.urls import parse_remote
from tests.support.hf_server import COMMIT, HubServer

REPO = "org/tokenized"


def _same(remote: ModelLayout, local: ModelLayout) -> None:
    assert remote.identity == local.identity
    assert remote.hparams == local.hparams
    assert remote.architecture == local.architecture
    assert len(remote.tensors) == len(local.tensors)
    for r, t in zip(remote.tensors, local.tensors, strict=True):
        assert (r.name, r.shape, r.type_id, r.nbytes, r.shard, r.layer, r.group, r.loaded) == (
            t.name,
            t.shape,
            t.type_id,
            t.nbytes,
            t.shard,
            t.layer,
            t.group,
            t.loaded,
        )


def _header_bytes(paths: list[Path]) -> int:
    return sum(read_header(p).data_start for p in paths)


def test_hf_url_opens_every_shard_like_the_local_files(
    hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    # Any shard names the model; the other eight are found by name.
    name = tokenized_shards[4].name
    layout = open_remote_model(f"hf://{REPO}/Q4_K_M/{name}", cache=cache)
    _same(layout, open_model(tokenized_shards[0]))
    assert layout.source == f"hf://{REPO}/Q4_K_M/{tokenized_shards[0].name}"
    assert len(layout.shard_paths) == 9
    reads = hub.file_requests()
    # Never tensor data: at most 1.2× the header bytes, at most two requests per shard.
    assert hub.bytes_sent() <= 1.2 * _header_bytes(tokenized_shards)
    for shard in tokenized_shards:
        assert 1 <= sum(shard.name in r.path for r in reads) <= 2
    # Read at the commit the listing resolved, with the token (the Hub's own host).
    assert all(f"/resolve/{COMMIT}/" in r.path for r in reads)
    assert all(r.authorization == "Bearer hf_test_token" for r in reads)


def test_plain_url_reads_without_the_hub_token(
    hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    layout = open_remote_model(hub.file_url(tokenized_shards[0].name), cache=cache)
    _same(layout, open_model(tokenized_shards[0]))
    assert hub.log and all(not r.authorization for r in hub.log)
    assert len(hub.file_requests()) <= 2 * len(tokenized_shards)


@pytest.mark.parametrize(
    "form",
    [
        "hf://{repo}/Q4_K_M/{name}",
        "hf://{repo}@main/Q4_K_M/{name}",
        "{endpoint}/{repo}/blob/main/Q4_K_M/{name}",
        "{endpoint}/{repo}/resolve/main/Q4_K_M/{name}",
    ],
)
def test_hub_url_forms(
    form: str, hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    spec = form.format(repo=REPO, name=tokenized_shards[0].name, endpoint=hub.url)
    ref = parse_remote(spec)
    assert (ref.repo, ref.path) == (REPO, f"Q4_K_M/{tokenized_shards[0].name}")
    layout = open_remote_model(spec, cache=cache)
    assert layout.identity == open_model(tokenized_shards[0]).identity


def test_huggingface_web_urls_parse_without_a_server() -> None:
    ref = parse_remote("https://huggingface.co/unsloth/DeepSeek-V3-GGUF/blob/main/Q2_K/x.gguf")
    assert (ref.repo, ref.revision, ref.path) == ("unsloth/DeepSeek-V3-GGUF", "main", "Q2_K/x.gguf")
    with pytest.raises(RemoteError, match=r"not a \.gguf"):
        parse_remote("https://example.com/model.safetensors")
    with pytest.raises(RemoteError, match="names no file"):
        parse_remote("hf://unsloth/DeepSeek-V3-GGUF")


def test_second_open_is_served_from_the_cache(
    hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    spec = f"hf://{REPO}/Q4_K_M/{tokenized_shards[0].name}"
    first = open_remote_model(spec, cache=cache)
    before = len(hub.file_requests())
    again = open_remote_model(spec, cache=cache)
    assert len(hub.file_requests()) == before  # the listing's versions match the cached ones
    _same(again, first)


def test_reopening_offline_uses_the_cache(
    quant_files: dict[str, Path],
    tokenized_shards: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = HeaderCache(tmp_path / "cache")
    with HubServer() as server:
        server.add_repo(REPO, {f"Q4_K_M/{p.name}": p for p in tokenized_shards})
        server.add_plain({p.name: p for p in tokenized_shards})
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        spec = f"hf://{REPO}/Q4_K_M/{tokenized_shards[0].name}"
        plain = server.file_url(tokenized_shards[0].name)
        online = open_remote_model(spec, cache=cache)
        open_remote_model(plain, cache=cache)
    # The server is gone: every connection is refused.
    offline = open_remote_model(spec, cache=cache)
    _same(offline, online)
    _same(open_remote_model(plain, cache=cache), online)


def test_plain_url_cache_is_checked_with_one_byte(
    hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    url = hub.file_url(tokenized_shards[0].name)
    open_remote_model(url, cache=cache)
    before = len(hub.file_requests())
    sent = hub.bytes_sent()
    open_remote_model(url, cache=cache)
    assert len(hub.file_requests()) - before == len(tokenized_shards)
    assert hub.bytes_sent() - sent == len(tokenized_shards)


def test_header_extent_is_exact_on_a_whole_header(tokenized_shards: list[Path]) -> None:
    for path in tokenized_shards[:2]:
        header = read_header(path)
        data = _prefix(path, header.data_start)
        extent = header_extent(data)
        assert extent.exact
        assert header.data_start - header.alignment < extent.end <= header.data_start


def test_header_extent_estimates_the_tokenizer_from_a_prefix(tokenized_shards: list[Path]) -> None:
    header = read_header(tokenized_shards[0])
    extent = header_extent(_prefix(tokenized_shards[0], 64 * 1024))
    assert not extent.exact
    assert header.data_start <= extent.end * 1.02 <= 1.1 * header.data_start


def test_client_counts_its_traffic(hub: HubServer, tokenized_shards: list[Path]) -> None:
    client = RangeClient()
    chunk = client.get_range(hub.file_url(tokenized_shards[1].name), 0, 100)
    assert chunk.data[:4] == b"GGUF"
    assert chunk.size == tokenized_shards[1].stat().st_size
    assert (client.traffic.requests, client.traffic.bytes) == (1, 100)


def _prefix(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        return f.read(n)
