"""RPC endpoints: parsing, and reachability outcomes as values."""

from __future__ import annotations

import socket

import pytest

from moe_studio.core.errors import HardwareError
from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.hardware.rpc import (
    Connect,
    RpcStatus,
    check_endpoint,
    parse_endpoint,
    rpc_device,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.2:50052", ("10.0.0.2", 50052)),
        (" gpu-box.lan:50053 ", ("gpu-box.lan", 50053)),
        ("[fe80::1]:50052", ("fe80::1", 50052)),
    ],
)
def test_parse_endpoint(text: str, parsed: tuple[str, int]) -> None:
    assert parse_endpoint(text) == parsed


@pytest.mark.parametrize("text", ["box", "box:", ":50052", "box:0", "box:70000", "fe80::1:50052"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(HardwareError, match="host:port"):
        parse_endpoint(text)


def test_rpc_device_naming() -> None:
    device = rpc_device("10.0.0.2:50052", 24 * 1024**3, index=1, label="3090")
    assert device.name == "RPC1[10.0.0.2:50052]"
    assert device.kind is DeviceKind.RPC and device.endpoint == "10.0.0.2:50052"
    assert device.index == 1 and device.is_gpu_like


def test_reachable_endpoint() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check = check_endpoint(f"127.0.0.1:{port}", timeout=2.0)
    assert check.ok and check.status is RpcStatus.REACHABLE
    assert check.seconds is not None and "reachable" in check.message


def test_refused_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: the kernel refuses connections
        check = check_endpoint(f"127.0.0.1:{port}", timeout=2.0)
    assert check.status is RpcStatus.REFUSED
    assert f"-p {port}" in check.message and not check.ok


def test_refused_remote_endpoint_mentions_the_listen_address() -> None:
    check = check_endpoint("10.0.0.2:50052", connect=_raises(ConnectionRefusedError()))
    assert check.status is RpcStatus.REFUSED and "-H 0.0.0.0" in check.message


def _raises(exc: BaseException) -> Connect:
    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        raise exc

    return connect


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (TimeoutError(), RpcStatus.TIMEOUT, "no answer within 0.5 s"),
        (
            socket.gaierror(-2, "Name or service not known"),
            RpcStatus.UNRESOLVABLE,
            "does not resolve",
        ),
        (OSError(113, "No route to host"), RpcStatus.UNREACHABLE, "No route to host"),
    ],
)
def test_failures_are_values(exc: BaseException, status: RpcStatus, words: str) -> None:
    check = check_endpoint("box.invalid:50052", timeout=0.5, connect=_raises(exc))
    assert check.status is status
    assert words in check.message and check.message.startswith("box.invalid:50052")


def test_invalid_endpoint_is_a_value() -> None:
    check = check_endpoint("no-port")
    assert check.status is RpcStatus.INVALID and check.seconds is None
