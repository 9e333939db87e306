"""NVIDIA GPUs through NVML (the ``pynvml`` module of ``nvidia-ml-py``), in CUDA order.

Everything goes through an :class:`Nvml` object: the real ``pynvml`` module, loaded lazily by
:func:`load_pynvml` (no import cost, and no failure where the package or the driver is missing),
or a recorded fake in tests. Nothing here raises for a missing driver or a failing call: no
library → no GPUs and a one-line reason; one call that fails → that field is ``None``.

NVML numbers GPUs its own way; the engines number them as CUDA does. :func:`cuda_order` sorts them
by PCI bus id (what ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` gives) and applies ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from moe_studio.core.hardware.devices import Device, DeviceKind, pcie_bandwidth

log = logging.getLogger(__name__)

T = TypeVar("T")

# NVML return codes we explain to the user (the values of pynvml.NVML_ERROR_*).
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18


class MemoryInfo(Protocol):
    """What ``nvmlDeviceGetMemoryInfo`` returns (bytes)."""

    @property
    def total(self) -> int: ...
    @property
    def free(self) -> int: ...
    @property
    def used(self) -> int: ...


class Utilization(Protocol):
    """What ``nvmlDeviceGetUtilizationRates`` returns (percent over the last sample period)."""

    @property
    def gpu(self) -> int: ...
    @property
    def memory(self) -> int: ...


class PciInfo(Protocol):
    """What ``nvmlDeviceGetPciInfo`` returns; we only read the bus id."""

    @property
    def busId(self) -> str | bytes: ...  # NVML's field name


class ProcessInfo(Protocol):
    """One entry of ``nvmlDeviceGetComputeRunningProcesses``."""

    @property
    def pid(self) -> int: ...
    @property
    def usedGpuMemory(self) -> int | None: ...  # NVML's field name


class Nvml(Protocol):
    """The subset of the ``pynvml`` API that MoE Studio calls (and the test fake replays)."""

    @property
    def NVMLError(self) -> type[Exception]: ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...
    def nvmlDeviceGetName(self, handle: object) -> str: ...
    def nvmlDeviceGetUUID(self, handle: object) -> str: ...
    def nvmlDeviceGetPciInfo(self, handle: object) -> PciInfo: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo: ...
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: object) -> int: ...
    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: object) -> int: ...
    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: object) -> int: ...
    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: object) -> int: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: object) -> tuple[int, int]: ...
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> Sequence[ProcessInfo]: ...


NvmlLoader = Callable[[], Nvml]


def load_pynvml() -> Nvml:
    """Import ``pynvml`` (from ``nvidia-ml-py``) on first use.

    Raises:
        ImportError: the package is not installed (:func:`open_nvml` turns it into a reason).
    """
    import pynvml

    nvml: Nvml = pynvml
    return nvml


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One NVIDIA GPU as NVML describes it; ``None`` where NVML could not tell.

    Attributes:
        cuda_index: Index in the engine's CUDA order (``CUDA<n>``).
        nvml_index: Index NVML uses for the same GPU.
        memory_total: Bytes (``memory_free``/``memory_used`` too).
        pcie_gen_current: The link generation now; GPUs drop to 1 when idle to save power.
        pcie_gen_max: The best generation this GPU and slot can do together.
        utilization: Percent of time a kernel ran over NVML's last sample period.
    """

    cuda_index: int
    nvml_index: int
    name: str
    uuid: str
    pci_bus_id: str | None
    memory_total: int | None
    memory_free: int | None
    memory_used: int | None
    pcie_gen_current: int | None
    pcie_gen_max: int | None
    pcie_width_current: int | None
    pcie_width_max: int | None
    compute_capability: str | None
    utilization: int | None

    @property
    def device_name(self) -> str:
        """Buffer-type name the engines use: ``CUDA<cuda_index>``."""
        return f"CUDA{self.cuda_index}"

    @property
    def pcie_gen(self) -> int | None:
        """The generation to plan with: the maximum, since the current one drops when idle."""
        return self.pcie_gen_max or self.pcie_gen_current

    @property
    def pcie_width(self) -> int | None:
        """The width to plan with: the negotiated one, which shows a x16 card in a x4 slot."""
        return self.pcie_width_current or self.pcie_width_max

    @property
    def pcie_bandwidth(self) -> float | None:
        """One-direction bytes/s of the link at :attr:`pcie_gen` × :attr:`pcie_width`."""
        return pcie_bandwidth(self.pcie_gen, self.pcie_width)

    def to_device(self) -> Device:
        """The planner's :class:`~moe_studio.core.hardware.devices.Device` for this GPU."""
        return Device(
            name=self.device_name,
            kind=DeviceKind.CUDA,
            memory_total=self.memory_total or 0,
            label=self.name,
            index=self.cuda_index,
            memory_free=self.memory_free,
            pcie_gen=self.pcie_gen,
            pcie_width=self.pcie_width,
            uuid=self.uuid,
            compute_capability=self.compute_capability or "",
        )


@dataclass(frozen=True, slots=True)
class GpuProbe:
    """The result of one NVML probe.

    Attributes:
        gpus: Visible GPUs in CUDA order.
        reason: Why there are no GPUs, as one sentence ("" when NVML answered).
        notes: Degraded fields and ordering caveats, one sentence each.
    """

    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(g.to_device() for g in self.gpus)


def _error_code(error: Exception) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


def unavailable_reason(error: BaseException) -> str:
    """One sentence saying why NVML gave no GPUs, for an error from import or ``nvmlInit``."""
    if isinstance(error, ImportError):
        return (
            "No NVIDIA GPU can be detected: the nvidia-ml-py package (module pynvml) is not "
            "installed; install it with pip to see NVIDIA GPUs."
        )
    code = _error_code(error) if isinstance(error, Exception) else None
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return (
            "No NVIDIA GPU found: the NVIDIA driver's NVML library (libnvidia-ml.so.1 or nvml.dll) "
            "is not installed or could not be loaded."
        )
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "No NVIDIA GPU found: the NVIDIA kernel driver is not loaded (is a GPU present?)."
    if code == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return (
            "NVIDIA GPUs cannot be read: the NVML library and the loaded kernel driver have "
            "different versions; reboot after a driver update."
        )
    if code == NVML_ERROR_NO_PERMISSION:
        return "NVIDIA GPUs cannot be read: this user may not open the NVIDIA device files."
    return f"NVIDIA GPUs cannot be read: NVML failed to start ({error})."


def open_nvml(loader: NvmlLoader = load_pynvml) -> tuple[Nvml | None, str]:
    """Load and initialise NVML; returns ``(nvml, "")`` or ``(None, reason)``.

    Call :func:`close_nvml` when done; the sampler keeps it open between samples.
    """
    try:
        nvml = loader()
    except ImportError as exc:
        log.debug("pynvml import failed: %s", exc)
        return None, unavailable_reason(exc)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.debug("nvmlInit failed: %s", exc)
        return None, unavailable_reason(exc)
    except OSError as exc:  # ctypes can fail below pynvml's own error mapping
        log.debug("nvmlInit failed: %s", exc)
        return None, unavailable_reason(exc)
    return nvml, ""


def close_nvml(nvml: Nvml | None) -> None:
    """Shut NVML down after :func:`open_nvml`; failures only log."""
    if nvml is None:
        return
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        log.debug("nvmlShutdown failed: %s", exc)


def call(nvml: Nvml, fn: Callable[..., T], *args: Any) -> T | None:
    """``fn(*args)``, or ``None`` when NVML raises (not supported, GPU lost, no permission)."""
    try:
        return fn(*args)
    except (nvml.NVMLError, OSError, UnicodeError) as exc:  # ctypes and decoding fail below NVML
        log.debug("%s failed: %s", getattr(fn, "__name__", fn), exc)
        return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _bus_key(bus_id: str | None) -> tuple[int, int, int, int] | None:
    """``00000000:41:00.0`` → (domain, bus, device, function), as CUDA sorts PCI_BUS_ID order."""
    if not bus_id:
        return None
    try:
        domain, bus, rest = bus_id.strip().split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        return None


def format_cuda_version(version: int | None) -> str | None:
    """NVML's ``12040`` → ``"12.4"``."""
    if version is None or version <= 0:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def _read_gpu(nvml: Nvml, nvml_index: int, handle: object) -> GpuInfo:
    name = call(nvml, nvml.nvmlDeviceGetName, handle)
    uuid = call(nvml, nvml.nvmlDeviceGetUUID, handle)
    pci = call(nvml, nvml.nvmlDeviceGetPciInfo, handle)
    memory = call(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    capability = call(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    utilization = call(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    return GpuInfo(
        cuda_index=-1,  # set by cuda_order
        nvml_index=nvml_index,
        name=_text(name) if name is not None else f"NVIDIA GPU {nvml_index}",
        uuid=_text(uuid) if uuid is not None else "",
        pci_bus_id=_text(pci.busId) if pci is not None else None,
        memory_total=memory.total if memory is not None else None,
        memory_free=memory.free if memory is not None else None,
        memory_used=memory.used if memory is not None else None,
        pcie_gen_current=call(nvml, nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        pcie_gen_max=call(nvml, nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        pcie_width_current=call(nvml, nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
        pcie_width_max=call(nvml, nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
        utilization=utilization.gpu if utilization is not None else None,
    )


def _visible_selection(gpus: Sequence[GpuInfo], visible: str) -> tuple[list[GpuInfo], list[str]]:
    """Apply ``CUDA_VISIBLE_DEVICES`` as the CUDA runtime does: indices or UUID prefixes,
    and the list ends at the first entry that names no GPU (or one already listed)."""
    chosen: list[GpuInfo] = []
    notes: list[str] = []
    for raw in visible.split(","):
        entry = raw.strip()
        match: GpuInfo | None = None
        if entry.lstrip("-").isdigit():
            number = int(entry)
            match = gpus[number] if 0 <= number < len(gpus) else None
        elif entry.upper().startswith("GPU-"):
            found = [g for g in gpus if g.uuid.lower().startswith(entry.lower())]
            match = found[0] if len(found) == 1 else None
        if match is None or match in chosen:
            if entry and entry != "-1":
                notes.append(
                    f"CUDA_VISIBLE_DEVICES entry {entry!r} names no single GPU, so CUDA ignores "
                    "it and every entry after it."
                )
            break
        chosen.append(match)
    return chosen, notes


def cuda_order(
    gpus: Sequence[GpuInfo], environ: Mapping[str, str]
) -> tuple[tuple[GpuInfo, ...], tuple[str, ...]]:
    """GPUs in the order (and subset) the engine's CUDA runtime sees, with ``cuda_index`` set.

    Sorted by PCI bus id, then filtered by ``CUDA_VISIBLE_DEVICES`` (indices into that order, or
    ``GPU-…`` UUID prefixes). Returns the GPUs and notes on anything that may differ.
    """
    notes: list[str] = []
    keyed = [(key, g) for g in gpus if (key := _bus_key(g.pci_bus_id)) is not None]
    ordered = list(gpus)
    if len(keyed) == len(gpus):
        ordered = [g for _, g in sorted(keyed, key=lambda kg: kg[0])]
    elif len(gpus) > 1:
        notes.append("Some GPUs did not report a PCI bus id; they are listed in NVML order.")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ordered, visible_notes = _visible_selection(ordered, visible)
        notes.extend(visible_notes)
        hidden = len(gpus) - len(ordered)
        if hidden:
            notes.append(
                f"CUDA_VISIBLE_DEVICES={visible!r} hides {hidden} of {len(gpus)} GPU(s) from "
                "the engine."
            )
    if (
        environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID"
        and len({g.name for g in ordered}) > 1
    ):
        # CUDA's default FASTEST_FIRST puts a guessed fastest GPU first; its heuristic is not
        # documented, so we cannot reproduce it. PCI order is what NVML and nvidia-smi show.
        notes.append(
            "The GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so CUDA may number the "
            "fastest one first; start the server with CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA0, "
            "CUDA1 … follow this list."
        )
    return tuple(replace(g, cuda_index=i) for i, g in enumerate(ordered)), tuple(notes)


def enumerate_gpus(nvml: Nvml) -> tuple[list[tuple[int, object]], list[str]]:
    """``[(nvml_index, handle)]`` for every GPU NVML can open, and notes on the others."""
    count = call(nvml, nvml.nvmlDeviceGetCount)
    if count is None:
        return [], ["NVIDIA GPUs cannot be read: NVML did not say how many GPUs there are."]
    handles: list[tuple[int, object]] = []
    notes: list[str] = []
    for index in range(count):
        handle = call(nvml, nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            notes.append(
                f"NVML could not open GPU {index} (lost, or no permission); it is skipped."
            )
            continue
        handles.append((index, handle))
    if count == 0:
        notes.append("No NVIDIA GPU found: the NVIDIA driver is loaded but reports no GPU.")
    return handles, notes


def probe_gpus(nvml: Nvml, *, environ: Mapping[str, str] | None = None) -> GpuProbe:
    """Describe every GPU of an initialised NVML (see :func:`open_nvml`) in CUDA order."""
    env = os.environ if environ is None else environ
    handles, notes = enumerate_gpus(nvml)
    driver = call(nvml, nvml.nvmlSystemGetDriverVersion)
    cuda = call(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    raw = [_read_gpu(nvml, index, handle) for index, handle in handles]
    gpus, order_notes = cuda_order(raw, env)
    notes.extend(order_notes)
    for gpu in gpus:
        if gpu.memory_total is None:
            notes.append(f"{gpu.device_name}: NVML did not report its memory; it counts as 0 B.")
    reason = ""
    if not gpus:
        # The most specific note is the reason; the rest stay notes.
        reason = notes.pop(0) if notes else "No NVIDIA GPU found."
    return GpuProbe(
        gpus=gpus,
        driver_version=_text(driver) if driver is not None else None,
        cuda_version=format_cuda_version(cuda),
        reason=reason,
        notes=tuple(notes),
    )


def detect_gpus(
    loader: NvmlLoader = load_pynvml, *, environ: Mapping[str, str] | None = None
) -> GpuProbe:
    """Open NVML, probe every GPU, close NVML. Never raises for a missing driver."""
    nvml, reason = open_nvml(loader)
    if nvml is None:
        return GpuProbe(reason=reason)
    try:
        return probe_gpus(nvml, environ=environ)
    finally:
        close_nvml(nvml)


def process_gpu_memory(nvml: Nvml, handle: object, pids: frozenset[int]) -> int | None:
    """Bytes of this GPU used by the given processes (the server's tree), or ``None``.

    ``None`` when NVML cannot list processes or hides their usage (Windows WDDM). Inside a
    container NVML reports host pids, so the server's pids may not match: that reads as 0.
    """
    procs = call(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
    if procs is None:
        return None
    total = 0
    for proc in procs:
        if proc.pid in pids:
            if proc.usedGpuMemory is None:
                return None
            total += proc.usedGpuMemory
    return total
