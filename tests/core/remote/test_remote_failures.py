"""Bad networks and bad servers: each ends in one sentence naming the URL, never a hang."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.errors import RemoteError, UnreachableError
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import RangeClient
from moe_studio.core.remote.model import open_remote_model
from tests.support.hf_server import HubServer

REPO = "org/tokenized"


def _spec(shards: list[Path], index: int = 0) -> str:
    return f"hf://{REPO}/Q4_K_M/{shards[index].name}"


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moe-studio: error: "), err
    assert "Traceback" not in err
    return err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_without_range_support_is_refused_unread(
    hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache
) -> None:
    hub.behaviour.ranges = False
    client = RangeClient()
    url = hub.file_url(tokenized_shards[0].name)
    with pytest.raises(RemoteError, match="ignores HTTP Range requests") as caught:
        open_remote_model(url, client=client, cache=cache)
    assert url in str(caught.value)
    assert client.traffic.bytes == 0
    # The 48 GB body was never streamed: the server stopped when the client hung up.
    assert hub.bytes_sent() < 64 * 2**20 < tokenized_shards[0].stat().st_size


def test_connection_refused_names_the_url(
    tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/files/{tokenized_shards[0].name}"
    err = _cli_error(capsys, "inspect", url)
    assert url in err and "Could not connect" in err


def test_host_that_does_not_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://moe-studio-test.invalid/models/m-00001-of-00002.gguf"
    err = _cli_error(capsys, "inspect", url)
    assert "moe-studio-test.invalid does not resolve" in err and url in err


def test_hub_offline_without_a_cache(
    tokenized_shards: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(UnreachableError, match="Could not connect") as caught:
        open_remote_model(_spec(tokenized_shards), cache=HeaderCache(tmp_path))
    assert f"/{REPO}" in str(caught.value)


def test_missing_or_private_repository(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "inspect", "hf://org/nothing-here/m.gguf")
    assert f"org/nothing-here was not found at {hub.url}/org/nothing-here" in err
    assert "HF_TOKEN" in err


def test_gated_repository_listing(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    hub.behaviour.api_status = 403
    hub.behaviour.error_code = "GatedRepo"
    err = _cli_error(capsys, "compare", REPO, "--gpu", "24GiB", "--ram", "64GiB")
    assert "gated repository: accept its licence" in err and f"{hub.url}/{REPO}" in err


def test_gated_file(
    hub: HubServer, tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.behaviour.status = {"/resolve/": 403}
    hub.behaviour.error_code = "GatedRepo"
    err = _cli_error(capsys, "inspect", _spec(tokenized_shards))
    assert "gated repository: accept its licence" in err and "/resolve/" in err


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "401 Unauthorized"), (403, "403 Forbidden"), (404, "was not found (404)")],
)
def test_http_status_of_a_file(
    status: int,
    words: str,
    hub: HubServer,
    tokenized_shards: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub.behaviour.status = {"00003-of-00009": status}
    err = _cli_error(capsys, "inspect", hub.file_url(tokenized_shards[0].name))
    assert words in err and hub.file_url(tokenized_shards[2].name) in err


def test_file_not_in_the_repository(
    hub: HubServer, tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _cli_error(capsys, "inspect", f"hf://{REPO}/Q4_K_M/other-00001-of-00002.gguf")
    assert "is not in org/tokenized" in err and "moe-studio compare org/tokenized" in err


def test_timeout(hub: HubServer, tokenized_shards: list[Path], cache: HeaderCache) -> None:
    hub.behaviour.hang = "00002-of-00009"
    with pytest.raises(UnreachableError, match=r"did not answer within 0\.2 s") as caught:
        open_remote_model(
            hub.file_url(tokenized_shards[0].name), client=RangeClient(timeout=0.2), cache=cache
        )
    assert tokenized_shards[1].name in str(caught.value)


def test_truncated_answer(
    hub: HubServer, tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.behaviour.truncate = "00004-of-00009"
    err = _cli_error(capsys, "inspect", hub.file_url(tokenized_shards[0].name))
    assert "cut short" in err and tokenized_shards[3].name in err


def test_etag_that_changes_while_reading(
    hub: HubServer, tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The first shard's header (5 MB) takes two requests; the file changes between them.
    hub.behaviour.etag_changes = "00001-of-00009"
    err = _cli_error(capsys, "inspect", hub.file_url(tokenized_shards[0].name))
    assert "changed on the server while it was being read" in err
    assert tokenized_shards[0].name in err


def test_repository_that_moves_between_shards(
    hub: HubServer, tokenized_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    hub.behaviour.commit_changes = "00005-of-00009"
    err = _cli_error(capsys, "inspect", _spec(tokenized_shards))
    assert "changed on the server while the model was being read" in err
    assert tokenized_shards[4].name in err


def test_not_a_gguf_url(capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys, "inspect", "https://example.com/model.safetensors")
    assert "is not a .gguf file" in err
