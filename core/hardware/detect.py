"""Detecting this machine: NVIDIA GPUs, host RAM/cores/flags and NUMA, as one :class:`Rig`.

Every I/O edge is a parameter so tests replay recorded NVML answers and ``/sys``/``/proc`` trees.
Nothing here raises for missing hardware; what could not be read becomes a note on the rig.
Detection opens NVML (tens of milliseconds) and may run py-cpuinfo once per CPU model (over a
second, then cached), so call it off the GUI thread.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from moe_studio.core.hardware.cpu import CpuinfoProbe, run_py_cpuinfo
from moe_studio.core.hardware.devices import Rig
from moe_studio.core.hardware.host import Psutil, probe_host
from moe_studio.core.hardware.nvml import GpuProbe, NvmlLoader, detect_gpus, load_pynvml


@dataclass(frozen=True, slots=True)
class HardwareReport:
    """A detected :class:`Rig` plus the GPU details a rig does not carry (driver, utilization)."""

    rig: Rig
    gpu_probe: GpuProbe


def probe_hardware(
    *,
    nvml: NvmlLoader = load_pynvml,
    ps: Psutil = psutil,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    cpuinfo_cache: Path | None = None,
    cpuinfo_probe: CpuinfoProbe | None = run_py_cpuinfo,
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> HardwareReport:
    """Detect this machine; see :func:`detect_rig` for the arguments."""
    gpus = detect_gpus(nvml, environ=os.environ if environ is None else environ)
    host, host_notes = probe_host(
        ps=ps,
        proc_root=proc_root,
        sys_root=sys_root,
        cpuinfo_cache=cpuinfo_cache,
        cpuinfo_probe=cpuinfo_probe,
    )
    notes = (*((gpus.reason,) if gpus.reason else ()), *gpus.notes, *host_notes)
    rig = Rig(
        name=name or platform.node() or "this machine",
        host=host,
        devices=gpus.devices,
        source="detected",
        notes=notes,
    )
    return HardwareReport(rig=rig, gpu_probe=gpus)


def detect_rig(
    *,
    nvml: NvmlLoader = load_pynvml,
    ps: Psutil = psutil,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    cpuinfo_cache: Path | None = None,
    cpuinfo_probe: CpuinfoProbe | None = run_py_cpuinfo,
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Rig:
    """This machine as a :class:`~moe_studio.core.hardware.devices.Rig`: GPUs in CUDA order, then
    the host.

    Args:
        nvml: Loads the NVML module (``pynvml`` lazily; a recorded fake in tests).
        ps: The psutil module or a stand-in with ``virtual_memory``, ``swap_memory``,
            ``cpu_count``.
        sys_root: Where ``/sys`` is (NUMA nodes).
        proc_root: Where ``/proc`` is (``cpuinfo``).
        cpuinfo_cache: Folder of the py-cpuinfo cache; ``None`` is the user cache folder.
        cpuinfo_probe: The slow py-cpuinfo call, or ``None`` to never run it.
        environ: For ``CUDA_VISIBLE_DEVICES``/``CUDA_DEVICE_ORDER``; ``None`` is ``os.environ``.
        name: The rig's name; the host name by default.

    Returns:
        The rig; ``notes`` says which source is missing and why (one sentence each).
    """
    return probe_hardware(
        nvml=nvml,
        ps=ps,
        sys_root=sys_root,
        proc_root=proc_root,
        cpuinfo_cache=cpuinfo_cache,
        cpuinfo_probe=cpuinfo_probe,
        environ=environ,
        name=name,
    ).rig
