"""`moe-studio hw`: detected and declared rigs, JSON shape, one-line errors."""

from __future__ import annotations

import json
import socket
from functools import partial
from pathlib import Path

import pytest

from moe_studio.core.cli import hw as hw_cli
from moe_studio.core.cli.main import command_names, main
from moe_studio.core.hardware.detect import HardwareReport, probe_hardware
from moe_studio.core.hardware.nvml import NvmlLoader
from tests.core.hardware.fake_host import DATA, FakePsutil, GiB
from tests.core.hardware.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml, four_gpus


def _fake_probe(nvml: NvmlLoader) -> HardwareReport:
    return probe_hardware(
        nvml=nvml,
        ps=FakePsutil(ram=256 * GiB, available=200 * GiB),
        sys_root=DATA / "sys-2node",
        proc_root=DATA / "proc-xeon-spr",
        cpuinfo_probe=None,
        environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        name="recorded",
    )


def test_hw_is_registered() -> None:
    assert "hw" in command_names()


def test_no_gpu_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(hw_cli, "probe_hardware", lambda: _fake_probe(lambda: fake))
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "256.0 GiB total, 200.0 GiB available" in out
    assert "16 physical, 32 logical" in out
    assert "AMX yes" in out and "amx_int8" in out
    assert "node1: CPUs 32-63,96-127" in out
    assert "No NVIDIA GPU found" in out


def test_four_gpus_text_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hw_cli, "probe_hardware", lambda: _fake_probe(four_gpus))
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "driver 575.57.08, CUDA 12.9" in out
    assert "CUDA3   NVIDIA RTX PRO 6000" in out
    assert "PCIe 5.0 x16 (63.0 GB/s), now gen 1" in out
    assert main(["hw", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "detected"
    assert [d["name"] for d in data["devices"]] == ["CUDA0", "CUDA1", "CUDA2", "CUDA3"]
    assert data["nvidia"]["cuda_version"] == "12.9"
    assert data["nvidia"]["gpus"][3]["pcie_gen_current"] == 1
    assert data["host"]["numa_nodes"][1]["cpus"][0] == 32


def test_preset_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--rig", "epyc2s-768g-24g", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "preset:epyc2s-768g-24g"
    assert data["nvidia"] is None and data["rpc_checks"] == []
    assert len(data["host"]["numa_nodes"]) == 2
    assert data["devices"][0]["memory_total"] == 24576 * 1024**2
    assert set(data) == {"name", "source", "notes", "host", "devices", "nvidia", "rpc_checks"}


def test_cpu_only_preset_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--rig", "cpu-128g"]) == 0
    assert "none declared (CPU only)" in capsys.readouterr().out


def test_rig_file_with_rpc_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        path = tmp_path / "rpc.toml"
        path.write_text(
            f'[host]\nram = "64 GiB"\n[[rpc]]\nendpoint = "127.0.0.1:{port}"\nmemory = "8 GiB"\n'
        )
        assert main(["hw", "--rig", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"RPC0[127.0.0.1:{port}]" in out and "refused" in out
        assert main(["hw", "--rig", str(path), "--json", "--no-rpc-check"]) == 0
        assert json.loads(capsys.readouterr().out)["rpc_checks"] == []


@pytest.mark.parametrize(
    ("arg", "words"),
    [("no-such-preset", "no rig preset"), ("missing.toml", "no such rig file")],
)
def test_errors_are_one_line(arg: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--rig", arg]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_malformed_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[host]\nram = 64\n")
    assert main(["hw", "--rig", str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "without a unit" in err


def test_real_machine_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # This machine, as it is; only the cpuinfo cache goes to a temporary folder.
    monkeypatch.setattr(hw_cli, "probe_hardware", partial(probe_hardware, cpuinfo_cache=tmp_path))
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "RAM" in out and "cores" in out and "NUMA" in out and "GPUs" in out
