"""NVML probing against recorded GPUs: no driver, 1 and 4 GPUs, failing calls, CUDA order."""

from __future__ import annotations

import pytest

from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.hardware.nvml import (
    GpuInfo,
    cuda_order,
    detect_gpus,
    format_cuda_version,
    open_nvml,
    process_gpu_memory,
)
from tests.core.hardware.fake_nvml import (
    A100_80GB,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    RTX_3090,
    RTX_4090,
    RTX_PRO_6000,
    FakeGpu,
    FakeNvml,
    four_gpus,
    one_gpu,
)

MiB = 1024**2
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _missing_package() -> FakeNvml:
    raise ImportError("No module named 'pynvml'")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded"),
        (NVML_ERROR_LIB_RM_VERSION_MISMATCH, "reboot"),
        (NVML_ERROR_NO_PERMISSION, "may not open"),
    ],
)
def test_no_driver_gives_no_gpus_and_one_sentence(code: int, words: str) -> None:
    fake = FakeNvml([FakeGpu(RTX_4090, "00000000:01:00.0")], init_error=code)
    probe = detect_gpus(lambda: fake, environ={})
    assert probe.gpus == ()
    assert words in probe.reason
    assert "\n" not in probe.reason and probe.reason.endswith(".")
    assert fake.shutdowns == 0  # nothing to shut down after a failed init


def test_missing_package_is_a_reason_not_an_error() -> None:
    probe = detect_gpus(_missing_package, environ={})
    assert probe.gpus == ()
    assert "nvidia-ml-py" in probe.reason


def test_driver_without_gpus() -> None:
    probe = detect_gpus(lambda: FakeNvml([]), environ={})
    assert probe.gpus == ()
    assert "reports no GPU" in probe.reason


def test_one_rtx_4090() -> None:
    fake = one_gpu()
    probe = detect_gpus(lambda: fake, environ={})
    assert probe.reason == "" and probe.notes == ()
    assert probe.driver_version == "575.57.08"
    assert probe.cuda_version == "12.9"
    (gpu,) = probe.gpus
    assert gpu.device_name == "CUDA0"
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total == 24564 * MiB
    assert gpu.memory_free == 24082 * MiB
    assert gpu.compute_capability == "8.9"
    # Idle link at gen 1: plan with the maximum.
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max, gpu.pcie_gen) == (1, 4, 4)
    assert gpu.pcie_bandwidth == pytest.approx(31.5e9, rel=0.01)
    assert gpu.utilization == 2
    device = gpu.to_device()
    assert device.kind is DeviceKind.CUDA
    assert device.name == "CUDA0" and device.index == 0
    assert device.uuid.startswith("GPU-")
    assert fake.inits == fake.shutdowns == 1


def test_four_different_gpus_in_pci_bus_order() -> None:
    probe = detect_gpus(four_gpus, environ=PCI)
    names = [(g.device_name, g.name, g.nvml_index) for g in probe.gpus]
    assert names == [
        ("CUDA0", RTX_3090["name"], 1),
        ("CUDA1", RTX_4090["name"], 3),
        ("CUDA2", A100_80GB["name"], 2),
        ("CUDA3", RTX_PRO_6000["name"], 0),
    ]
    sizes = [d.memory_total // MiB for d in probe.devices]
    assert sizes == [24576, 24564, 81920, 97887]
    # The 3090 negotiated x8 in an x16-capable slot: plan with the real width.
    assert (probe.gpus[0].pcie_width, probe.gpus[0].pcie_width_max) == (8, 16)
    assert probe.gpus[3].pcie_gen == 5
    assert [g.compute_capability for g in probe.gpus] == ["8.6", "8.9", "8.0", "12.0"]
    assert probe.notes == ()


def test_mixed_gpus_without_pci_bus_order_get_a_note() -> None:
    probe = detect_gpus(four_gpus, environ={})
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in n for n in probe.notes)


def test_one_failing_metric_is_none_and_the_rest_is_read() -> None:
    fake = four_gpus(
        fail={
            (3, "nvmlDeviceGetUtilizationRates"): NVML_ERROR_NOT_SUPPORTED,
            (2, "nvmlDeviceGetCudaComputeCapability"): NVML_ERROR_NOT_SUPPORTED,
            (-1, "nvmlSystemGetCudaDriverVersion"): NVML_ERROR_NOT_SUPPORTED,
        }
    )
    probe = detect_gpus(lambda: fake, environ=PCI)
    by_name = {g.name: g for g in probe.gpus}
    assert by_name[RTX_4090["name"]].utilization is None
    assert by_name[RTX_4090["name"]].memory_total == 24564 * MiB
    assert by_name[A100_80GB["name"]].compute_capability is None
    assert by_name[A100_80GB["name"]].to_device().compute_capability == ""
    assert by_name[RTX_3090["name"]].utilization == 0
    assert probe.cuda_version is None and probe.driver_version == "575.57.08"


def test_unreadable_memory_counts_as_zero_with_a_note() -> None:
    fake = one_gpu()
    fake.fail[(0, "nvmlDeviceGetMemoryInfo")] = NVML_ERROR_GPU_IS_LOST
    probe = detect_gpus(lambda: fake, environ={})
    assert probe.gpus[0].memory_total is None
    assert probe.devices[0].memory_total == 0
    assert any("CUDA0" in n and "memory" in n for n in probe.notes)


def test_a_gpu_that_cannot_be_opened_is_skipped_with_a_note() -> None:
    fake = four_gpus(fail={(2, "nvmlDeviceGetHandleByIndex"): NVML_ERROR_GPU_IS_LOST})
    probe = detect_gpus(lambda: fake, environ=PCI)
    assert len(probe.gpus) == 3
    assert [g.device_name for g in probe.gpus] == ["CUDA0", "CUDA1", "CUDA2"]
    assert any("GPU 2" in n for n in probe.notes)


def test_unknown_bus_ids_keep_nvml_order() -> None:
    fake = four_gpus()
    fake.fail[(1, "nvmlDeviceGetPciInfo")] = NVML_ERROR_NOT_SUPPORTED
    probe = detect_gpus(lambda: fake, environ=PCI)
    assert [g.nvml_index for g in probe.gpus] == [0, 1, 2, 3]
    assert any("PCI bus id" in n for n in probe.notes)


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1,0", [RTX_4090, RTX_3090]),  # indices into PCI order
        ("3", [RTX_PRO_6000]),
        ("0,7,1", [RTX_3090]),  # CUDA stops at the first invalid entry
        ("GPU-4d0a8c2e", [A100_80GB]),  # UUID prefix
        ("2,2", [A100_80GB]),  # a repeat ends the list too
        ("", []),
        ("-1", []),
    ],
)
def test_cuda_visible_devices(visible: str, expected: list[dict[str, object]]) -> None:
    probe = detect_gpus(four_gpus, environ={**PCI, "CUDA_VISIBLE_DEVICES": visible})
    assert [g.name for g in probe.gpus] == [r["name"] for r in expected]
    assert [g.cuda_index for g in probe.gpus] == list(range(len(expected)))
    if not expected:
        assert "hides 4 of 4" in probe.reason
    if visible == "0,7,1":
        assert any("'7'" in n for n in probe.notes)


def test_cuda_order_is_pure() -> None:
    def gpu(i: int, bus: str | None) -> GpuInfo:
        return GpuInfo(
            -1,
            i,
            "NVIDIA GeForce RTX 3090",
            "",
            bus,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    ordered, notes = cuda_order(
        [gpu(0, "0000:82:00.0"), gpu(1, "0001:01:00.0"), gpu(2, "0000:03:00.0")], {}
    )
    assert [g.nvml_index for g in ordered] == [2, 0, 1]  # domain sorts before bus
    assert [g.cuda_index for g in ordered] == [0, 1, 2]
    assert notes == ()  # identical GPUs: FASTEST_FIRST cannot reorder them


def test_process_gpu_memory() -> None:
    fake = FakeNvml(
        [
            FakeGpu(
                RTX_4090,
                "00000000:01:00.0",
                processes=[(100, 900 * MiB), (101, 50 * MiB), (7, MiB)],
            )
        ]
    )
    nvml, reason = open_nvml(lambda: fake)
    assert nvml is not None and reason == ""
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    assert process_gpu_memory(nvml, handle, frozenset({100, 101})) == 950 * MiB
    assert process_gpu_memory(nvml, handle, frozenset({5})) == 0
    fake.gpus[0].processes = [(100, None)]  # Windows WDDM hides per-process usage
    assert process_gpu_memory(nvml, handle, frozenset({100})) is None
    fake.fail[(0, "nvmlDeviceGetComputeRunningProcesses")] = NVML_ERROR_NO_PERMISSION
    assert process_gpu_memory(nvml, handle, frozenset({100})) is None


def test_format_cuda_version() -> None:
    assert format_cuda_version(12040) == "12.4"
    assert format_cuda_version(11080) == "11.8"
    assert format_cuda_version(None) is None
    assert format_cuda_version(0) is None
