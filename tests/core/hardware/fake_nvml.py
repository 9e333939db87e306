"""A recorded stand-in for ``pynvml``: the subset MoE Studio calls, replaying per-GPU recordings.

Each recording holds what NVML answers for one GPU model (values as ``nvidia-smi -q`` shows them
for that card: total memory, link, compute capability, an idle utilization). A :class:`FakeNvml`
is a machine built from recordings, each placed at a PCI bus id, with optional failures injected
per call. To record a real machine, run ``python -m tests.core.hardware.fake_nvml`` on it and paste
the printed dictionaries here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

MiB = 1024**2

RTX_4090: dict[str, Any] = {
    "name": "NVIDIA GeForce RTX 4090",
    "uuid": "GPU-5e5c1a0f-3e3b-6d4e-8a0b-2d1f4c9a7b31",
    "memory": {"total": 24564 * MiB, "free": 24082 * MiB, "used": 482 * MiB},
    "pcie_gen_current": 1,  # idle: the link drops to gen 1 to save power
    "pcie_gen_max": 4,
    "pcie_width_current": 16,
    "pcie_width_max": 16,
    "compute_capability": (8, 9),
    "utilization": {"gpu": 2, "memory": 1},
}
RTX_3090: dict[str, Any] = {
    "name": "NVIDIA GeForce RTX 3090",
    "uuid": "GPU-9b1f26c4-71d0-2f8e-5c3a-0e6d8b4f1a22",
    "memory": {"total": 24576 * MiB, "free": 24253 * MiB, "used": 323 * MiB},
    "pcie_gen_current": 1,
    "pcie_gen_max": 4,
    "pcie_width_current": 8,  # a x16 card in a slot wired x8
    "pcie_width_max": 16,
    "compute_capability": (8, 6),
    "utilization": {"gpu": 0, "memory": 0},
}
RTX_PRO_6000: dict[str, Any] = {
    "name": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
    "uuid": "GPU-1c7e4b9a-5d2f-8e3b-a6c0-7f1d2e9b4c53",
    "memory": {"total": 97887 * MiB, "free": 97242 * MiB, "used": 645 * MiB},
    "pcie_gen_current": 1,
    "pcie_gen_max": 5,
    "pcie_width_current": 16,
    "pcie_width_max": 16,
    "compute_capability": (12, 0),
    "utilization": {"gpu": 0, "memory": 0},
}
A100_80GB: dict[str, Any] = {
    "name": "NVIDIA A100 80GB PCIe",
    "uuid": "GPU-4d0a8c2e-9b6f-1e7d-3a5c-8f2b6e0d9a14",
    "memory": {"total": 81920 * MiB, "free": 81075 * MiB, "used": 845 * MiB},
    "pcie_gen_current": 4,  # datacenter cards keep their link up
    "pcie_gen_max": 4,
    "pcie_width_current": 16,
    "pcie_width_max": 16,
    "compute_capability": (8, 0),
    "utilization": {"gpu": 0, "memory": 0},
}

DRIVER = "575.57.08"
CUDA = 12090


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass(frozen=True)
class FakeHandle:
    index: int


@dataclass(frozen=True)
class Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class PciInfo:
    busId: str  # noqa: N815 - NVML's field name


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - NVML's field name


@dataclass
class FakeGpu:
    """One GPU of a fake machine: a recording at a PCI bus id, with its running processes."""

    recording: Mapping[str, Any]
    bus_id: str
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)


class FakeNvml:
    """Replays recordings through the pynvml functions MoE Studio calls.

    Args:
        gpus: The machine's GPUs in NVML index order.
        init_error: An NVML code ``nvmlInit`` fails with (no driver, and so on).
        fail: ``{(nvml_index, function name): code}``: that call raises; index ``-1`` for system
            calls.
    """

    NVMLError = FakeNVMLError

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: int | None = None,
        fail: dict[tuple[int, str], int] | None = None,
        driver: str = DRIVER,
        cuda: int = CUDA,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.fail = dict(fail or {})
        self.driver = driver
        self.cuda = cuda
        self.inits = 0
        self.shutdowns = 0
        self.calls: list[str] = []

    # -- plumbing
    def _gpu(self, handle: object, fn: str) -> Mapping[str, Any]:
        self.calls.append(fn)
        if not self.inits or self.inits == self.shutdowns:
            raise FakeNVMLError(1)  # uninitialised
        assert isinstance(handle, FakeHandle)
        code = self.fail.get((handle.index, fn))
        if code is not None:
            raise FakeNVMLError(code)
        return self.gpus[handle.index].recording

    def _system(self, fn: str) -> None:
        self.calls.append(fn)
        if not self.inits or self.inits == self.shutdowns:
            raise FakeNVMLError(1)
        code = self.fail.get((-1, fn))
        if code is not None:
            raise FakeNVMLError(code)

    # -- the pynvml API
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._system("nvmlShutdown")
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._system("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._system("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._system("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._system("nvmlDeviceGetHandleByIndex")
        code = self.fail.get((index, "nvmlDeviceGetHandleByIndex"))
        if code is not None:
            raise FakeNVMLError(code)
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(2)
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return str(self._gpu(handle, "nvmlDeviceGetName")["name"])

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return str(self._gpu(handle, "nvmlDeviceGetUUID")["uuid"])

    def nvmlDeviceGetPciInfo(self, handle: object) -> PciInfo:
        self._gpu(handle, "nvmlDeviceGetPciInfo")
        assert isinstance(handle, FakeHandle)
        return PciInfo(busId=self.gpus[handle.index].bus_id)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> Memory:
        return Memory(**self._gpu(handle, "nvmlDeviceGetMemoryInfo")["memory"])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: object) -> int:
        return int(self._gpu(handle, "nvmlDeviceGetCurrPcieLinkGeneration")["pcie_gen_current"])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: object) -> int:
        return int(self._gpu(handle, "nvmlDeviceGetMaxPcieLinkGeneration")["pcie_gen_max"])

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: object) -> int:
        return int(self._gpu(handle, "nvmlDeviceGetCurrPcieLinkWidth")["pcie_width_current"])

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: object) -> int:
        return int(self._gpu(handle, "nvmlDeviceGetMaxPcieLinkWidth")["pcie_width_max"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: object) -> tuple[int, int]:
        major, minor = self._gpu(handle, "nvmlDeviceGetCudaComputeCapability")["compute_capability"]
        return int(major), int(minor)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization:
        return Utilization(**self._gpu(handle, "nvmlDeviceGetUtilizationRates")["utilization"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[ProcessInfo]:
        self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        assert isinstance(handle, FakeHandle)
        return [ProcessInfo(pid=p, usedGpuMemory=m) for p, m in self.gpus[handle.index].processes]


def one_gpu() -> FakeNvml:
    """A desktop with one RTX 4090."""
    return FakeNvml([FakeGpu(RTX_4090, "00000000:01:00.0")])


def four_gpus(**kwargs: Any) -> FakeNvml:
    """Four different GPUs whose NVML order is not their PCI bus order.

    By bus id: 3090 (01), 4090 (21), A100 (41), RTX PRO 6000 (81).
    """
    return FakeNvml(
        [
            FakeGpu(RTX_PRO_6000, "00000000:81:00.0"),
            FakeGpu(RTX_3090, "00000000:01:00.0"),
            FakeGpu(A100_80GB, "00000000:41:00.0"),
            FakeGpu(RTX_4090, "00000000:21:00.0"),
        ],
        **kwargs,
    )


def record(nvml: Any) -> list[dict[str, Any]]:
    """What a real NVML answers for every GPU, in the shape of the recordings above."""
    nvml.nvmlInit()
    try:
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            out.append(
                {
                    "name": nvml.nvmlDeviceGetName(h),
                    "uuid": nvml.nvmlDeviceGetUUID(h),
                    "bus_id": nvml.nvmlDeviceGetPciInfo(h).busId,
                    "memory": {"total": mem.total, "free": mem.free, "used": mem.used},
                    "pcie_gen_current": nvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
                    "pcie_gen_max": nvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
                    "pcie_width_current": nvml.nvmlDeviceGetCurrPcieLinkWidth(h),
                    "pcie_width_max": nvml.nvmlDeviceGetMaxPcieLinkWidth(h),
                    "compute_capability": list(nvml.nvmlDeviceGetCudaComputeCapability(h)),
                    "utilization": {"gpu": util.gpu, "memory": util.memory},
                    "driver": nvml.nvmlSystemGetDriverVersion(),
                    "cuda": nvml.nvmlSystemGetCudaDriverVersion(),
                }
            )
        return out
    finally:
        nvml.nvmlShutdown()


if __name__ == "__main__":
    import pynvml

    json.dump(record(pynvml), sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
