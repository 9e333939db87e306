"""Checks before a server or a benchmark starts: every RPC device answers, and nothing else
already uses the devices the command is about to use.

Without them a stopped ``rpc-server`` shows only as "crashed: SIGSEGV" with an empty log, and a
second client of a busy ``rpc-server`` (it serves one client at a time) waits forever at
"0 of 8 depths". Every check is best effort and takes its I/O as a parameter:

- :func:`rpc_problems`: a TCP connect to each ``--rpc`` endpoint, all at once, with a short
  timeout (it only proves that something listens there).
- :func:`rpc_busy`: for an endpoint on this machine, whether another process already holds a
  connection to it (psutil's socket table; another user's processes may be hidden).
- :func:`gpu_engine_users`: other ``llama-server``/``rpc-server`` processes NVML lists on the GPUs
  (nothing when NVML is missing, as on a CPU-only machine).

:func:`preflight` runs them for one argv: ``problems`` refuse the start, ``warnings`` are told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from moe_studio.core.engine.launch import option_value
from moe_studio.core.errors import HardwareError
from moe_studio.core.hardware.nvml import (
    Nvml,
    NvmlLoader,
    call,
    close_nvml,
    enumerate_gpus,
    load_pynvml,
    open_nvml,
    probe_gpus,
)
from moe_studio.core.hardware.rpc import RpcCheck, check_endpoint, parse_endpoint
from moe_studio.core.units import format_bytes

log = logging.getLogger(__name__)

RPC_TIMEOUT = 0.5
# Processes that hold a GPU the way a server does: a second one shares its memory.
ENGINE_PROCESSES = (
    "llama-server",
    "rpc-server",
    "llama-sweep-bench",
    "llama-bench",
    "llama-cli",
    "ik_llama",
)
_LOOPBACK = ("127.", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class Connection:
    """One TCP connection from the system's socket table (``psutil.net_connections``)."""

    local: tuple[str, int]
    remote: tuple[str, int] | None
    status: str
    pid: int | None


ConnectionSource = Callable[[], Sequence[Connection]]
ProcessName = Callable[[int], str | None]


def _psutil_connections() -> list[Connection]:
    import psutil

    try:
        table = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError) as exc:
        log.debug("no socket table: %s", exc)
        return []
    return [
        Connection(
            (c.laddr.ip, c.laddr.port),
            (c.raddr.ip, c.raddr.port) if c.raddr else None,
            c.status,
            c.pid,
        )
        for c in table
        if c.laddr
    ]


def _psutil_name(pid: int) -> str | None:
    import psutil

    try:
        return str(psutil.Process(pid).name())
    except (psutil.Error, OSError):
        return None


def rpc_endpoints(argv: Sequence[str]) -> list[str]:
    """The endpoints of ``--rpc a:1,b:2`` in an engine argv (none without ``--rpc``)."""
    value = option_value(argv, "--rpc")
    return [e.strip() for e in (value or "").split(",") if e.strip()]


def _unanswered(check: RpcCheck) -> str:
    detail = check.message.removeprefix(f"{check.endpoint}: ").rstrip(".")
    return (
        f"RPC device {check.endpoint} does not answer — start rpc-server there or remove the "
        f"device ({detail})."
    )


def rpc_problems(
    endpoints: Iterable[str],
    *,
    timeout: float = RPC_TIMEOUT,
    check: Callable[[str], RpcCheck] | None = None,
) -> list[str]:
    """One sentence per endpoint that does not accept a TCP connection, in the given order.

    The endpoints are tried at once, so a rig of dead hosts costs one ``timeout``, not one each.
    """
    wanted = list(dict.fromkeys(endpoints))
    if not wanted:
        return []
    probe = check or (lambda e: check_endpoint(e, timeout=timeout))
    with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
        results = list(pool.map(probe, wanted))
    return [_unanswered(r) for r in results if not r.ok]


def _is_local(host: str) -> bool:
    return host.startswith(_LOOPBACK)


def rpc_busy(
    endpoint: str,
    *,
    own_pids: Collection[int] = (),
    connections: ConnectionSource = _psutil_connections,
    process_name: ProcessName = _psutil_name,
) -> str | None:
    """A sentence when a local ``rpc-server`` at ``endpoint`` already has a client, else None.

    ``rpc-server`` serves one client at a time; a second one connects (the kernel accepts it)
    and then waits until the first one leaves. Remote endpoints are not checked: their socket
    table is on another machine.
    """
    try:
        host, port = parse_endpoint(endpoint)
    except HardwareError:  # rpc_problems reports a malformed endpoint
        return None
    if not _is_local(host):
        return None
    clients: list[int | None] = []
    own_ports: set[int] = set()  # the client ports of our own connections
    server_peers: list[int] = []  # the client ports the server side is connected to
    for c in connections():
        if c.status != "ESTABLISHED":
            continue
        if c.remote is not None and c.remote[1] == port and _is_local(c.remote[0]):
            if c.pid in own_pids:
                own_ports.add(c.local[1])
            else:
                clients.append(c.pid)
        elif c.local[1] == port and _is_local(c.local[0]):
            server_peers.append(c.remote[1] if c.remote is not None else -1)
    # The server's end of one of our own connections is not another client.
    server_side = any(p not in own_ports for p in server_peers)
    if not clients and not server_side:
        return None
    who = "another program"
    for pid in clients:
        if pid is None:
            continue
        name = process_name(pid)
        if name:
            who = f"{name} (pid {pid})"
            break
    if not clients and server_side:
        who = "another program (of another user?)"
    return (
        f"RPC device {endpoint} is busy: {who} is connected to it, and rpc-server serves one "
        "client at a time, so this start would wait forever — stop that first."
    )


def is_engine_process(name: str) -> bool:
    stem = Path(name).name.lower()
    return any(stem.startswith(known) for known in ENGINE_PROCESSES)


def gpu_engine_users(
    nvml: Nvml,
    *,
    devices: Collection[str] | None = None,
    own_pids: Collection[int] = (),
    process_name: ProcessName = _psutil_name,
) -> list[str]:
    """Sentences naming llama.cpp processes NVML lists on the GPUs (``devices``: only these
    ``CUDA<n>``; None: all)."""
    handles = dict(enumerate_gpus(nvml)[0])
    out: list[str] = []
    for gpu in probe_gpus(nvml).gpus:
        if devices is not None and gpu.device_name not in devices:
            continue
        handle = handles.get(gpu.nvml_index)
        procs = (
            call(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
            if handle is not None
            else None
        )
        for proc in procs or ():
            if proc.pid in own_pids:
                continue
            name = process_name(proc.pid)
            if not name or not is_engine_process(name):
                continue
            used = f", {format_bytes(proc.usedGpuMemory)}" if proc.usedGpuMemory else ""
            out.append(
                f"{gpu.device_name} is already used by {name} (pid {proc.pid}{used}); the plan "
                "counts on all of its memory — stop that process first or it may not fit."
            )
    return out


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks found: ``problems`` refuse the start, ``warnings`` are only told."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def sentence(self) -> str:
        return " ".join(self.problems)


def preflight(
    argv: Sequence[str],
    *,
    own_pids: Collection[int] = (),
    rpc_check: Callable[[str], RpcCheck] | None = None,
    connections: ConnectionSource = _psutil_connections,
    process_name: ProcessName = _psutil_name,
    nvml_loader: NvmlLoader | None = load_pynvml,
) -> Preflight:
    """Every check for one engine argv (a server's or a benchmark's).

    Args:
        own_pids: Processes of ours that may hold the devices (a server being replaced).
        nvml_loader: None skips the GPU check (tests, or a rig without NVIDIA GPUs).
    """
    endpoints = rpc_endpoints(argv)
    problems = rpc_problems(endpoints, check=rpc_check)
    for endpoint in endpoints:
        busy = rpc_busy(
            endpoint, own_pids=own_pids, connections=connections, process_name=process_name
        )
        if busy and not any(p.startswith(f"RPC device {endpoint} ") for p in problems):
            problems.append(busy)
    warnings: list[str] = []
    if nvml_loader is not None:
        nvml, _reason = open_nvml(nvml_loader)
        if nvml is not None:
            try:
                warnings = gpu_engine_users(nvml, own_pids=own_pids, process_name=process_name)
            finally:
                close_nvml(nvml)
    return Preflight(tuple(problems), tuple(warnings))
