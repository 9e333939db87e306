"""The live sampler: NVML kept open, per-GPU values, failing metrics, vanishing processes."""

from __future__ import annotations

import os
from itertools import count

from moe_studio.core.hardware.sampler import Sampler
from tests.core.hardware.fake_host import FakeProcessTable, GiB, ProcState
from tests.core.hardware.fake_nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    RTX_4090,
    FakeGpu,
    FakeNvml,
    four_gpus,
)

MiB = 1024**2
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _server() -> ProcState:
    return ProcState(
        4242,
        rss=30 * GiB,
        cpu=[0.0, 800.0, 790.0],
        kids=[ProcState(4243, rss=GiB, cpu=[0.0, 10.0, 12.0])],
    )


def test_samples_keep_nvml_open_and_follow_cuda_order() -> None:
    fake = four_gpus()
    ticks = count()
    sampler = Sampler(nvml=lambda: fake, environ=PCI, clock=lambda: float(next(ticks)))
    first = sampler.sample()
    second = sampler.sample()
    assert fake.inits == 1 and fake.shutdowns == 0
    assert [g.name for g in second.gpus] == ["CUDA0", "CUDA1", "CUDA2", "CUDA3"]
    assert [g.memory_total // MiB for g in second.gpus if g.memory_total] == [
        24576,
        24564,
        81920,
        97887,
    ]
    assert second.gpus[1].memory_used == 482 * MiB and second.gpus[1].utilization == 2
    assert (first.time, second.time) == (0.0, 1.0)
    assert second.process is None and second.gpu_reason == ""
    # A sample is cheap: memory + utilization per GPU, nothing else.
    per_sample = fake.calls[-8:]
    assert sorted(set(per_sample)) == ["nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates"]
    sampler.close()
    assert fake.shutdowns == 1


def test_one_metric_failing_is_none() -> None:
    fake = four_gpus(fail={(1, "nvmlDeviceGetUtilizationRates"): NVML_ERROR_NOT_SUPPORTED})
    with Sampler(nvml=lambda: fake, environ=PCI) as sampler:
        sample = sampler.sample()
    by_name = {g.name: g for g in sample.gpus}
    assert by_name["CUDA0"].utilization is None  # NVML index 1 is the 3090, CUDA0
    assert by_name["CUDA0"].memory_used == 323 * MiB
    assert all(g.utilization is not None for g in sample.gpus if g.name != "CUDA0")
    assert fake.shutdowns == 1


def test_gpu_lost_between_samples() -> None:
    fake = FakeNvml([FakeGpu(RTX_4090, "00000000:01:00.0")])
    with Sampler(nvml=lambda: fake, environ={}) as sampler:
        assert sampler.sample().gpus[0].memory_used == 482 * MiB
        fake.fail[(0, "nvmlDeviceGetMemoryInfo")] = NVML_ERROR_GPU_IS_LOST
        fake.fail[(0, "nvmlDeviceGetUtilizationRates")] = NVML_ERROR_GPU_IS_LOST
        lost = sampler.sample().gpus[0]
    assert (lost.name, lost.memory_used, lost.memory_total, lost.utilization) == (
        "CUDA0",
        None,
        None,
        None,
    )


def test_no_driver_samples_only_the_process() -> None:
    fake = FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    table = FakeProcessTable(_server())
    with Sampler(nvml=lambda: fake, process_factory=table) as sampler:
        sampler.sample(4242)
        sample = sampler.sample(4242)
    assert sample.gpus == ()
    assert "libnvidia-ml" in sample.gpu_reason
    assert sample.process is not None
    assert sample.process.rss == 31 * GiB and sample.process.cpu_percent == 810.0


def test_process_memory_per_gpu() -> None:
    fake = FakeNvml(
        [
            FakeGpu(RTX_4090, "00000000:01:00.0", processes=[(4242, 20 * GiB), (999, GiB)]),
            FakeGpu(RTX_4090, "00000000:02:00.0", processes=[(4243, 3 * GiB)]),
        ]
    )
    table = FakeProcessTable(_server())
    with Sampler(nvml=lambda: fake, process_factory=table, environ={}) as sampler:
        sample = sampler.sample(4242)
        no_pid = sampler.sample()
    assert [g.process_memory for g in sample.gpus] == [20 * GiB, 3 * GiB]
    assert [g.process_memory for g in no_pid.gpus] == [None, None]


def test_server_gone_mid_run() -> None:
    server = _server()
    fake = four_gpus()
    with Sampler(nvml=lambda: fake, process_factory=FakeProcessTable(server)) as sampler:
        first = sampler.sample(4242).process
        assert first is not None and first.alive
        server.kids[0].vanish_on_read = True  # the child dies between listing and reading
        partial = sampler.sample(4242).process
        server.vanish_on_read = True  # then the server itself
        gone = sampler.sample(4242)
    assert partial is not None and partial.alive and partial.rss == 30 * GiB
    assert gone.process is not None and not gone.process.alive
    assert len(gone.gpus) == 4  # GPUs are still sampled


def test_a_new_pid_starts_a_new_tree() -> None:
    table = FakeProcessTable(_server(), ProcState(7, rss=GiB, cpu=[0.0, 5.0]))
    with Sampler(nvml=lambda: FakeNvml([]), process_factory=table) as sampler:
        sampler.sample(4242)
        second = sampler.sample(4242).process
        assert second is not None and second.cpu_percent == 810.0
        other = sampler.sample(7).process
    assert other is not None and other.pid == 7 and other.cpu_percent is None


def test_reopen_after_close() -> None:
    fake = four_gpus()
    sampler = Sampler(nvml=lambda: fake)
    sampler.sample()
    sampler.close()
    assert len(sampler.sample().gpus) == 4
    sampler.close()
    assert (fake.inits, fake.shutdowns) == (2, 2)


def test_real_psutil_on_this_process() -> None:
    with Sampler(nvml=lambda: FakeNvml([])) as sampler:
        sampler.sample(os.getpid())
        sample = sampler.sample(os.getpid())
    assert sample.process is not None and sample.process.alive
    assert sample.process.rss and sample.process.cpu_percent is not None
