"""RPC devices: ``rpc-server`` endpoints (``host:port``) as devices, and a reachability check.

An ``rpc-server`` exposes its device(s) to a client started with ``--rpc host:port``; the engine
names device ``n`` of it ``RPC<n>[host:port]`` (engines.md §8). Its memory cannot be asked without
speaking the RPC protocol, so a rig file declares it. ik_llama.cpp (protocol 3.5.2) and mainline
llama.cpp (7.0.0) do not interoperate: client and every server must come from the same project.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from moe_studio.core.errors import HardwareError
from moe_studio.core.hardware.devices import Device, DeviceKind, rpc_name

DEFAULT_PORT = 50052
_LOCAL = ("127.0.0.1", "localhost", "::1")
FLAVOURS = ("ik", "mainline")


class RpcStatus(StrEnum):
    REACHABLE = "reachable"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNRESOLVABLE = "unresolvable"
    UNREACHABLE = "unreachable"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class RpcCheck:
    """The outcome of one TCP connect to an ``rpc-server``.

    Attributes:
        message: One sentence for the user.
        seconds: How long the connect took (``None`` when it was not tried).
    """

    endpoint: str
    status: RpcStatus
    message: str
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is RpcStatus.REACHABLE


class _Closable(Protocol):
    def close(self) -> None: ...


Connect = Callable[[tuple[str, int], float], _Closable]


def _connect(address: tuple[str, int], timeout: float) -> _Closable:
    return socket.create_connection(address, timeout=timeout)


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"10.0.0.2:50052"`` or ``"[fe80::1]:50052"`` → ``(host, port)``.

    Raises:
        HardwareError: not ``host:port`` with a port from 1 to 65535.
    """
    value = text.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
        if ":" in host:
            sep = ""  # a bare IPv6 address is ambiguous; it needs brackets
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HardwareError(
            f"{text!r} is not an RPC endpoint; write host:port, for example "
            f"192.168.1.20:{DEFAULT_PORT} (IPv6 in brackets: [fe80::1]:{DEFAULT_PORT})."
        )
    return host, int(port_text)


def check_endpoint(
    endpoint: str,
    *,
    timeout: float = 1.0,
    connect: Connect = _connect,
    clock: Callable[[], float] = time.monotonic,
) -> RpcCheck:
    """Try a TCP connection to an ``rpc-server``; every outcome is a value, never an exception.

    It only proves that something listens there, not that it is an ``rpc-server`` of the right
    flavour. The server logs the short visit as an accepted client.
    """
    try:
        host, port = parse_endpoint(endpoint)
    except HardwareError as exc:
        return RpcCheck(endpoint, RpcStatus.INVALID, str(exc))
    start = clock()
    try:
        connect((host, port), timeout).close()
    except socket.gaierror:
        return RpcCheck(
            endpoint,
            RpcStatus.UNRESOLVABLE,
            f"{endpoint}: the host name {host!r} does not resolve; check its spelling or use an "
            "IP address.",
        )
    except ConnectionRefusedError:
        remote = "" if host in _LOCAL else " (it listens on 127.0.0.1 only unless given -H 0.0.0.0)"
        return RpcCheck(
            endpoint,
            RpcStatus.REFUSED,
            f"{endpoint}: connection refused; is rpc-server running there with -p {port}{remote}?",
            clock() - start,
        )
    except TimeoutError:
        return RpcCheck(
            endpoint,
            RpcStatus.TIMEOUT,
            f"{endpoint}: no answer within {timeout:g} s; the host is down or a firewall drops "
            f"port {port}.",
            clock() - start,
        )
    except OSError as exc:
        return RpcCheck(
            endpoint,
            RpcStatus.UNREACHABLE,
            f"{endpoint}: cannot connect ({exc.strerror or exc}); check the network route.",
            clock() - start,
        )
    seconds = clock() - start
    return RpcCheck(
        endpoint, RpcStatus.REACHABLE, f"{endpoint}: reachable ({seconds * 1000:.0f} ms).", seconds
    )


def rpc_device(endpoint: str, memory_total: int, *, index: int = 0, label: str = "") -> Device:
    """The :class:`~moe_studio.core.hardware.devices.Device` for device ``index`` of the server at
    ``endpoint``."""
    return Device(
        name=rpc_name(endpoint, index),
        kind=DeviceKind.RPC,
        memory_total=memory_total,
        label=label,
        index=index,
        endpoint=endpoint,
    )


def flavour_note(flavours: Iterable[tuple[str, str]]) -> str:
    """A warning when ``(endpoint, flavour)`` pairs mix ik and mainline servers, else ``""``."""
    by_flavour: dict[str, list[str]] = {}
    for endpoint, flavour in flavours:
        if flavour:
            by_flavour.setdefault(flavour, [])
            if endpoint not in by_flavour[flavour]:
                by_flavour[flavour].append(endpoint)
    if len(by_flavour) < 2:
        return ""
    listing = "; ".join(f"{f}: {', '.join(eps)}" for f, eps in sorted(by_flavour.items()))
    return (
        f"The RPC endpoints mix flavours ({listing}). ik_llama.cpp (RPC protocol 3.5.2) and "
        "llama.cpp (7.0.0) do not interoperate, so one server can use only the endpoints of its "
        "own flavour."
    )
