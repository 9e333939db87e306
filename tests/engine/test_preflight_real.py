"""Pre-launch checks against a real ``rpc-server`` on 127.0.0.1 (issue 11 item 5): a live one
passes, one with a client already connected is refused as busy (it serves one client at a time),
and ``moe-studio launch`` names a stopped one instead of ending in "crashed: SIGSEGV"."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.preflight import preflight

from .conftest import HOST, RpcServers, free_port

pytestmark = pytest.mark.engine


@pytest.fixture
def rpc_endpoint(rpc_server_binary: Path, tmp_path: Path) -> Iterator[str]:
    with RpcServers(rpc_server_binary, 1, log_dir=tmp_path) as servers:
        yield servers.endpoints[0]


def test_a_live_rpc_server_passes_and_a_held_one_is_busy(rpc_endpoint: str) -> None:
    argv = ["llama-server", "-m", "m.gguf", "--rpc", rpc_endpoint]
    assert preflight(argv, nvml_loader=None).ok
    host, port = rpc_endpoint.rsplit(":", 1)
    # A client that stays connected, as a running llama-server or benchmark does.
    with socket.create_connection((host, int(port)), timeout=5.0):
        checked = preflight(argv, nvml_loader=None)
    assert not checked.ok
    assert f"RPC device {rpc_endpoint} is busy:" in checked.sentence()
    assert "(pid " in checked.sentence()  # our own test process, named


def test_launch_names_a_stopped_rpc_server(
    engine: Path,
    rpc_server_binary: Path,
    tiny_qwen3moe: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with RpcServers(rpc_server_binary, 1, log_dir=tmp_path) as servers:
        endpoint = servers.endpoints[0]
    # The rpc-server is gone now; its port is closed.
    args = ["launch", str(tiny_qwen3moe), "--ram", "16GiB", "--rpc", f"{endpoint}=4GiB",
            "--engine", str(engine), "--host", HOST, "--port", str(free_port()), "--ctx", "512",
            "--threads", "1", "--check", "--no-calibration"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"RPC device {endpoint} does not answer — start rpc-server there or remove" in err
