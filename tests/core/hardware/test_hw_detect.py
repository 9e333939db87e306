"""detect_rig end to end with every I/O edge recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_studio.core.hardware.detect import detect_rig, probe_hardware
from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.hardware.nvml import NvmlLoader
from tests.core.hardware.fake_host import DATA, FakePsutil, GiB
from tests.core.hardware.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml, four_gpus, one_gpu


def test_no_driver_rig(cache_dir: Path) -> None:
    rig = detect_rig(
        nvml=lambda: FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND),
        ps=FakePsutil(ram=128 * GiB),
        sys_root=DATA / "sys-1node",
        proc_root=DATA / "proc-epyc-vm",
        cpuinfo_cache=cache_dir,
        cpuinfo_probe=None,
        environ={},
        name="test box",
    )
    assert rig.name == "test box" and rig.source == "detected"
    assert rig.devices == () and rig.gpus == ()
    assert rig.host.ram_total == 128 * GiB
    assert "avx512f" in rig.host.cpu_flags
    assert len(rig.host.numa_nodes) == 1
    assert len(rig.notes) == 1 and "No NVIDIA GPU found" in rig.notes[0]
    assert rig.all_devices[-1].kind is DeviceKind.CPU
    assert not cache_dir.exists()  # /proc/cpuinfo answered; no cache needed


@pytest.mark.parametrize(("nvml", "gpus"), [(one_gpu, 1), (four_gpus, 4)])
def test_rig_with_gpus(nvml: NvmlLoader, gpus: int, cache_dir: Path) -> None:
    report = probe_hardware(
        nvml=nvml,
        ps=FakePsutil(ram=512 * GiB, physical=64, logical=128),
        sys_root=DATA / "sys-2node",
        proc_root=DATA / "proc-xeon-spr",
        cpuinfo_cache=cache_dir,
        cpuinfo_probe=None,
        environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
    )
    rig = report.rig
    assert [d.name for d in rig.gpus] == [f"CUDA{i}" for i in range(gpus)]
    assert rig.notes == ()
    assert report.gpu_probe.driver_version == "575.57.08"
    assert len(rig.host.numa_nodes) == 2
    assert rig.device("CUDA0") is not None


def test_the_real_machine_never_raises(tmp_path: Path) -> None:
    rig = detect_rig(cpuinfo_cache=tmp_path, cpuinfo_probe=None)
    assert rig.host.ram_total > 0
    if not rig.gpus:
        assert rig.notes  # the reason there is no GPU
