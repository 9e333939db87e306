"""Pre-launch checks (issue 11 item 5): a stopped rpc-server is named before the engine starts, a
busy single-client rpc-server is refused, and llama.cpp processes already on a GPU are told."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine.preflight import (
    Connection,
    gpu_engine_users,
    preflight,
    rpc_busy,
    rpc_endpoints,
    rpc_problems,
)
from tests.core.hardware.fake_nvml import RTX_3090, RTX_4090, FakeGpu, FakeNvml
from tests.support.standin_tools import install_standin

GiB = 1024**3


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rpc_endpoints_of_an_argv() -> None:
    argv = ["llama-server", "-m", "m.gguf", "--rpc", "10.0.0.2:50052,127.0.0.1:50053"]
    assert rpc_endpoints(argv) == ["10.0.0.2:50052", "127.0.0.1:50053"]
    assert rpc_endpoints(["llama-server", "-m", "m.gguf"]) == []


def test_a_closed_rpc_port_is_named_with_what_to_do() -> None:
    port = closed_port()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        ok = live.getsockname()[1]
        problems = rpc_problems([f"127.0.0.1:{ok}", f"127.0.0.1:{port}"])
    assert problems == [
        f"RPC device 127.0.0.1:{port} does not answer — start rpc-server there or remove the "
        f"device (connection refused; is rpc-server running there with -p {port}?)."
    ]


def test_a_local_rpc_server_with_a_client_is_busy() -> None:
    port = 50052
    table = [
        Connection(("127.0.0.1", port), None, "LISTEN", 10),
        Connection(("127.0.0.1", port), ("127.0.0.1", 40000), "ESTABLISHED", 10),
        Connection(("127.0.0.1", 40000), ("127.0.0.1", port), "ESTABLISHED", 4242),
    ]
    names = {4242: "llama-server", 10: "rpc-server"}
    busy = rpc_busy(f"127.0.0.1:{port}", connections=lambda: table, process_name=names.get)
    assert busy is not None
    assert "RPC device 127.0.0.1:50052 is busy: llama-server (pid 4242)" in busy
    assert "one client at a time" in busy
    # Our own server (being replaced) does not count, neither its end nor the server's end of
    # its connection; nor does an idle server.
    for rows in (table, table[:1]):
        assert (
            rpc_busy(
                f"127.0.0.1:{port}",
                own_pids={4242},
                connections=lambda rows=rows: rows,
                process_name=names.get,
            )
            is None
        )
    # A client whose own row is hidden (another user's) still shows by the server's end.
    hidden = rpc_busy(f"127.0.0.1:{port}", connections=lambda: table[:2], process_name=names.get)
    assert hidden is not None and "another program (of another user?)" in hidden
    # A remote endpoint's socket table is on another machine: not checked.
    assert rpc_busy("10.0.0.2:50052", connections=lambda: table, process_name=names.get) is None


def test_llama_processes_on_the_gpus_are_named() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(RTX_4090, "00000000:01:00.0", processes=[(4242, 20 * GiB), (77, GiB)]),
            FakeGpu(RTX_3090, "00000000:02:00.0", processes=[(99, GiB)]),
        ]
    )
    nvml.nvmlInit()
    names = {4242: "llama-server", 77: "Xorg", 99: "python3"}
    found = gpu_engine_users(nvml, process_name=names.get)
    assert found == [
        "CUDA0 is already used by llama-server (pid 4242, 20.0 GiB); the plan counts on all of "
        "its memory — stop that process first or it may not fit."
    ]
    assert gpu_engine_users(nvml, own_pids={4242}, process_name=names.get) == []


def test_preflight_refuses_a_dead_endpoint_and_skips_nvml_when_asked() -> None:
    port = closed_port()
    argv = ["llama-server", "-m", "m.gguf", "--rpc", f"127.0.0.1:{port}"]
    checked = preflight(argv, connections=lambda: [], nvml_loader=None)
    assert not checked.ok
    assert checked.sentence().startswith(f"RPC device 127.0.0.1:{port} does not answer")


def test_launch_names_the_rpc_device_that_does_not_answer(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_qwen3moe: Path,
) -> None:
    for key in list(os.environ):
        if key.startswith(("STANDIN_", "MOE_STUDIO_ENGINE")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    engine = install_standin(tmp_path / "ik", "ik", bench=False)
    port = closed_port()
    args = ["launch", str(tiny_qwen3moe), "--ram", "16GiB", "--rpc", f"127.0.0.1:{port}=4GiB",
            "--engine", str(engine), "--port", str(closed_port()), "--check"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"RPC device 127.0.0.1:{port} does not answer — start rpc-server there" in err
