"""Devices and rigs: what the planner places tensors on, detected or declared.

A :class:`Device` is named exactly as the engines name its buffer type in ``-ot``: ``CPU``,
``CUDA0`` … (CUDA order, i.e. ``CUDA_VISIBLE_DEVICES``/PCI bus order), ``RPC0[10.0.0.2:50052]``
(device 0 of that ``rpc-server``; engines.md §8). A :class:`Rig` is the GPUs and RPC devices plus
the host (RAM, cores, NUMA) — the same value whether ``moe_studio.core.hardware`` detected it or a
rig file or preset declared it, so the estimator never knows the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

CPU_NAME = "CPU"


class DeviceKind(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    RPC = "rpc"


# Usable PCIe bandwidth per lane in bytes/s by generation (after 8b/10b or 128b/130b encoding).
_PCIE_LANE = {1: 250e6, 2: 500e6, 3: 984.6e6, 4: 1969e6, 5: 3938e6, 6: 7563e6}


def pcie_bandwidth(gen: int | None, width: int | None) -> float | None:
    """Theoretical one-direction PCIe bandwidth in bytes/s, or None when unknown."""
    if not gen or not width or gen not in _PCIE_LANE:
        return None
    return _PCIE_LANE[gen] * width


def rpc_name(endpoint: str, index: int = 0) -> str:
    """Buffer-type name of device ``index`` of the ``rpc-server`` at ``endpoint``."""
    return f"RPC{index}[{endpoint}]"


@dataclass(frozen=True, slots=True)
class Device:
    """A GPU, RPC device or the CPU, with its memory in bytes."""

    name: str  # buffer-type name as -ot writes it: CPU, CUDA0, RPC0[host:port]
    kind: DeviceKind
    memory_total: int
    label: str = ""  # "NVIDIA GeForce RTX 4090"
    index: int = 0  # CUDA index in engine order, or device index on the RPC server
    memory_free: int | None = None
    endpoint: str = ""  # host:port for RPC devices
    pcie_gen: int | None = None
    pcie_width: int | None = None
    uuid: str = ""
    compute_capability: str = ""

    @property
    def is_gpu_like(self) -> bool:
        """CUDA and RPC devices: what ``-ngl`` offloads to and ``-ot`` may name besides CPU."""
        return self.kind is not DeviceKind.CPU

    @property
    def pcie_bandwidth(self) -> float | None:
        return pcie_bandwidth(self.pcie_gen, self.pcie_width)

    @property
    def display(self) -> str:
        return f"{self.name} ({self.label})" if self.label else self.name


@dataclass(frozen=True, slots=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]
    memory_total: int


@dataclass(frozen=True, slots=True)
class HostInfo:
    """The machine the CPU part runs on."""

    ram_total: int
    ram_available: int | None = None
    swap_total: int | None = None
    cores_physical: int | None = None
    cores_logical: int | None = None
    cpu_brand: str = ""
    cpu_flags: frozenset[str] = frozenset()
    numa_nodes: tuple[NumaNode, ...] = ()


@dataclass(frozen=True, slots=True)
class Rig:
    """GPUs and RPC devices in engine order, plus the host.

    Attributes:
        source: ``detected``, ``preset:<name>`` or ``file:<path>``.
        notes: One line per source that is missing or degraded ("no NVIDIA driver found").
    """

    name: str
    host: HostInfo
    devices: tuple[Device, ...] = ()
    source: str = "detected"
    notes: tuple[str, ...] = field(default=())

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind is DeviceKind.CUDA)

    @property
    def rpc_devices(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind is DeviceKind.RPC)

    @property
    def cpu(self) -> Device:
        return Device(CPU_NAME, DeviceKind.CPU, self.host.ram_total, label=self.host.cpu_brand)

    @property
    def all_devices(self) -> tuple[Device, ...]:
        """GPUs and RPC devices first (engine order), then the CPU."""
        return (*self.devices, self.cpu)

    def device(self, name: str) -> Device | None:
        for d in self.all_devices:
            if d.name == name:
                return d
        return None

    def with_devices(self, devices: tuple[Device, ...]) -> Rig:
        return replace(self, devices=devices)
