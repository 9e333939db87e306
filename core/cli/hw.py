"""``moe-studio hw [--json] [--rig FILE|PRESET]``: the rig to plan for, and what is missing.

Without ``--rig`` it detects this machine; with it, it reads a rig file or a shipped preset. Either
way it prints the host (RAM, cores, CPU flags, NUMA), the GPUs and RPC devices, and one line for
every source that is missing and why. It exits 0 when there is no GPU: that is a finding, not an
error.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from moe_studio.core.hardware.detect import HardwareReport, probe_hardware
from moe_studio.core.hardware.devices import Device, Rig
from moe_studio.core.hardware.numa import format_cpulist
from moe_studio.core.hardware.nvml import GpuInfo
from moe_studio.core.hardware.rigs import list_presets, load_preset, load_rig_file
from moe_studio.core.hardware.rpc import RpcCheck, check_endpoint
from moe_studio.core.units import format_bytes

RPC_TIMEOUT = 1.0


def resolve_rig(spec: str) -> Rig:
    """A rig file path (anything with a ``/`` or ending in ``.toml``, or an existing file) or a
    preset name.

    Raises:
        HardwareError: no such file or preset, or an invalid rig.
    """
    path = Path(spec)
    if path.suffix == ".toml" or "/" in spec or "\\" in spec or path.is_file():
        return load_rig_file(path)
    return load_preset(spec)


def _bytes(n: int | None) -> str:
    return "unknown" if n is None else format_bytes(n)


def isa_summary(flags: frozenset[str]) -> str:
    """``AVX2 yes, AVX-512 yes (VNNI, BF16), AMX no`` for x86 flags; ``""`` when none are known."""
    if not flags:
        return ""
    if any(f.startswith("asimd") for f in flags):
        extras = [name for flag, name in (("sve", "SVE"), ("i8mm", "I8MM")) if flag in flags]
        return "NEON yes" + "".join(f", {e} yes" for e in extras)
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    parts = [f"AVX2 {'yes' if 'avx2' in flags else 'no'}"]
    if avx512:
        extras = [
            name
            for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"))
            if flag in flags
        ]
        parts.append("AVX-512 yes" + (f" ({', '.join(extras)})" if extras else ""))
    else:
        parts.append("AVX-512 no")
    amx = sorted(f for f in flags if f.startswith("amx"))
    parts.append(f"AMX yes ({', '.join(amx)})" if amx else "AMX no")
    return ", ".join(parts)


def _pcie(gen: int | None, width: int | None, bandwidth: float | None) -> str:
    if not gen and not width:
        return "PCIe unknown"
    text = f"PCIe {gen or '?'}.0 x{width or '?'}"
    return f"{text} ({bandwidth / 1e9:.1f} GB/s)" if bandwidth else text


def _gpu_line(device: Device, info: GpuInfo | None) -> str:
    free = f", {format_bytes(device.memory_free)} free" if device.memory_free is not None else ""
    line = f"  {device.name:<8}{device.label:<40} {format_bytes(device.memory_total)}{free}"
    line += f"  {_pcie(device.pcie_gen, device.pcie_width, device.pcie_bandwidth)}"
    if info is not None and info.pcie_gen_current and info.pcie_gen_current != device.pcie_gen:
        line += f", now gen {info.pcie_gen_current} (idle GPUs slow their link)"
    if device.compute_capability:
        line += f"  compute {device.compute_capability}"
    if info is not None and info.utilization is not None:
        line += f"  busy {info.utilization} %"
    return line


def print_rig(
    rig: Rig,
    out: TextIO,
    *,
    report: HardwareReport | None = None,
    checks: tuple[RpcCheck, ...] = (),
) -> None:
    """The human-readable ``hw`` output."""
    w = out.write
    host = rig.host
    w(f"{rig.name}  ({rig.source})\n\nHost\n")
    ram = f"{_bytes(host.ram_total)} total"
    if host.ram_available is not None:
        ram += f", {_bytes(host.ram_available)} available"
    w(f"  {'RAM':<10}{ram}\n")
    if host.swap_total is not None:
        w(f"  {'swap':<10}{_bytes(host.swap_total)}\n")
    cores = (
        f"{host.cores_physical or 'unknown'} physical, {host.cores_logical or 'unknown'} logical"
    )
    w(f"  {'cores':<10}{cores}\n")
    w(f"  {'CPU':<10}{host.cpu_brand or 'unknown'}\n")
    if host.cpu_flags:
        lines = textwrap.wrap(" ".join(sorted(host.cpu_flags)), 88)
        for label, line in zip(("flags", *[""] * len(lines)), lines, strict=False):
            w(f"  {label:<10}{line}\n")
        w(f"  {'':<10}{isa_summary(host.cpu_flags)}\n")
    else:
        w(f"  {'flags':<10}unknown\n")
    nodes = host.numa_nodes
    if nodes:
        w(f"  {'NUMA':<10}{len(nodes)} node{'s' if len(nodes) != 1 else ''}\n")
        for node in nodes:
            cpus = format_cpulist(node.cpus) or "none"
            w(f"  {'':<10}node{node.id}: CPUs {cpus}, {format_bytes(node.memory_total)}\n")
    else:
        w(f"  {'NUMA':<10}unknown (treated as one node)\n")

    probe = report.gpu_probe if report is not None else None
    header = "GPUs"
    if probe is not None and (probe.driver_version or probe.cuda_version):
        header += (
            f" (driver {probe.driver_version or 'unknown'}, CUDA {probe.cuda_version or 'unknown'})"
        )
    w(f"\n{header}\n")
    details = {g.device_name: g for g in probe.gpus} if probe is not None else {}
    for device in rig.gpus:
        w(_gpu_line(device, details.get(device.name)) + "\n")
    if not rig.gpus:
        if probe is not None:
            w(f"  {probe.reason}\n")
        else:
            w("  none declared (CPU only)\n")

    if rig.rpc_devices:
        w("\nRPC devices\n")
        by_endpoint = {c.endpoint: c for c in checks}
        for device in rig.rpc_devices:
            label = f"  {device.label}" if device.label else ""
            w(f"  {device.name:<28} {format_bytes(device.memory_total)}{label}\n")
            check = by_endpoint.get(device.endpoint)
            if check is not None:
                w(f"  {'':<28} {check.message}\n")

    notes = [n for n in rig.notes if probe is None or n != probe.reason]
    if notes:
        w("\nNotes\n")
        for note in notes:
            w(f"  - {note}\n")


def _device_json(device: Device) -> dict[str, object]:
    return {
        "name": device.name,
        "kind": device.kind.value,
        "label": device.label,
        "index": device.index,
        "memory_total": device.memory_total,
        "memory_free": device.memory_free,
        "endpoint": device.endpoint or None,
        "pcie_gen": device.pcie_gen,
        "pcie_width": device.pcie_width,
        "pcie_bandwidth": device.pcie_bandwidth,
        "uuid": device.uuid or None,
        "compute_capability": device.compute_capability or None,
    }


def rig_json(
    rig: Rig, *, report: HardwareReport | None = None, checks: tuple[RpcCheck, ...] = ()
) -> dict[str, object]:
    """The ``hw --json`` object: the rig, NVML details when detected, RPC reachability."""
    host = rig.host
    probe = report.gpu_probe if report is not None else None
    return {
        "name": rig.name,
        "source": rig.source,
        "notes": list(rig.notes),
        "host": {
            "ram_total": host.ram_total,
            "ram_available": host.ram_available,
            "swap_total": host.swap_total,
            "cores_physical": host.cores_physical,
            "cores_logical": host.cores_logical,
            "cpu_brand": host.cpu_brand,
            "cpu_flags": sorted(host.cpu_flags),
            "numa_nodes": [
                {"id": n.id, "cpus": list(n.cpus), "memory_total": n.memory_total}
                for n in host.numa_nodes
            ],
        },
        "devices": [_device_json(d) for d in rig.devices],
        "nvidia": None
        if probe is None
        else {
            "driver_version": probe.driver_version,
            "cuda_version": probe.cuda_version,
            "reason": probe.reason or None,
            "gpus": [asdict(g) for g in probe.gpus],
        },
        "rpc_checks": [
            {
                "endpoint": c.endpoint,
                "status": c.status.value,
                "message": c.message,
                "seconds": c.seconds,
            }
            for c in checks
        ],
    }


def _cmd_hw(args: argparse.Namespace) -> int:
    report: HardwareReport | None = None
    if args.rig:
        rig = resolve_rig(args.rig)
    else:
        report = probe_hardware()
        rig = report.rig
    checks: tuple[RpcCheck, ...] = ()
    if not args.no_rpc_check:
        endpoints = dict.fromkeys(d.endpoint for d in rig.rpc_devices)
        checks = tuple(check_endpoint(e, timeout=RPC_TIMEOUT) for e in endpoints)
    if args.json:
        json.dump(rig_json(rig, report=report, checks=checks), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_rig(rig, sys.stdout, report=report, checks=checks)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``moe-studio hw``."""
    presets = ", ".join(list_presets())
    p = sub.add_parser(
        "hw",
        help="show the GPUs, RPC devices, RAM, cores, CPU flags and NUMA nodes",
        description="Detect this machine (NVIDIA GPUs through NVML, host through psutil and "
        "/sys), or show a declared rig, and say why a source is missing.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--rig",
        metavar="FILE|PRESET",
        help=f"show a rig file (TOML) or a preset instead of this machine; presets: {presets}",
    )
    p.add_argument(
        "--no-rpc-check",
        action="store_true",
        help="do not try to connect to the rig's RPC endpoints",
    )
    p.set_defaults(func=_cmd_hw)
