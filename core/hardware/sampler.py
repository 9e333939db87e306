"""Live sampling at 1–2 Hz: GPU memory and utilization, and the server's process tree.

One :class:`Sampler` keeps NVML initialised and the psutil ``Process`` objects alive between
samples, so each :meth:`Sampler.sample` is a handful of cheap calls. Use it from one thread and
:meth:`Sampler.close` it (or use it as a context manager).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from moe_studio.core.hardware.host import ProcessFactory, ProcessSample, ProcessTree, psutil_process
from moe_studio.core.hardware.nvml import (
    Nvml,
    NvmlLoader,
    call,
    close_nvml,
    load_pynvml,
    open_nvml,
    probe_gpus,
    process_gpu_memory,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one instant; ``None`` where NVML did not answer.

    Attributes:
        name: ``CUDA<n>`` in engine order.
        utilization: Percent of time a kernel ran over NVML's last sample period.
        process_memory: Bytes used on this GPU by the sampled process tree (``None`` without a
            process, or where NVML hides per-process usage).
    """

    name: str
    memory_used: int | None
    memory_total: int | None
    utilization: int | None
    process_memory: int | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything one tick of the live view needs.

    Attributes:
        time: ``clock()`` when the sample was taken (monotonic seconds by default).
        gpu_reason: Why there are no GPU samples ("" when NVML works).
    """

    time: float
    gpus: tuple[GpuSample, ...]
    process: ProcessSample | None
    gpu_reason: str = ""


class Sampler:
    """Cheap repeated readings of GPUs and one process tree.

    Args:
        nvml: Loads the NVML module (the real ``pynvml`` by default, a fake in tests).
        process_factory: Builds a process object from a pid (``psutil.Process`` by default).
        environ: For ``CUDA_VISIBLE_DEVICES``; ``None`` is ``os.environ``.
        clock: Timestamp source for :attr:`Sample.time`.
    """

    def __init__(
        self,
        *,
        nvml: NvmlLoader = load_pynvml,
        process_factory: ProcessFactory = psutil_process,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = nvml
        self._factory = process_factory
        self._environ = environ
        self._clock = clock
        self._nvml: Nvml | None = None
        self._opened = False
        self._handles: list[tuple[str, object]] = []
        self._tree: ProcessTree | None = None
        self.gpu_reason = ""

    def _open(self) -> None:
        # NVML is opened once, on the first sample: opening costs tens of milliseconds.
        self._opened = True
        nvml, reason = open_nvml(self._loader)
        if nvml is None:
            self.gpu_reason = reason
            return
        probe = probe_gpus(nvml, environ=self._environ)
        self.gpu_reason = probe.reason
        for gpu in probe.gpus:
            handle = call(nvml, nvml.nvmlDeviceGetHandleByIndex, gpu.nvml_index)
            if handle is not None:
                self._handles.append((gpu.device_name, handle))
        self._nvml = nvml

    def _gpu(self, nvml: Nvml, name: str, handle: object, pids: frozenset[int]) -> GpuSample:
        memory = call(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
        utilization = call(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        return GpuSample(
            name=name,
            memory_used=memory.used if memory is not None else None,
            memory_total=memory.total if memory is not None else None,
            utilization=utilization.gpu if utilization is not None else None,
            process_memory=process_gpu_memory(nvml, handle, pids) if pids else None,
        )

    def sample(self, pid: int | None = None) -> Sample:
        """Read every GPU and, when ``pid`` is given, that process and its descendants."""
        if not self._opened:
            self._open()
        process: ProcessSample | None = None
        pids: frozenset[int] = frozenset()
        if pid is not None:
            if self._tree is None or self._tree.pid != pid:
                self._tree = ProcessTree(pid, process_factory=self._factory)
            process = self._tree.sample()
            pids = self._tree.pids()
        elif self._tree is not None:
            self._tree = None
        gpus: tuple[GpuSample, ...] = ()
        nvml = self._nvml
        if nvml is not None:
            gpus = tuple(self._gpu(nvml, name, handle, pids) for name, handle in self._handles)
        return Sample(time=self._clock(), gpus=gpus, process=process, gpu_reason=self.gpu_reason)

    def close(self) -> None:
        """Shut NVML down; a later :meth:`sample` opens it again."""
        close_nvml(self._nvml)
        self._nvml = None
        self._opened = False
        self._handles = []
        self._tree = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
