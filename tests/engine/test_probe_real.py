"""``plan --probe`` on the real ik_llama.cpp with two rpc-server devices: the dry run's buffers are
read per device, marked measured, and agree with the estimate where the estimate is exact."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.units import MiB

pytestmark = pytest.mark.engine


@pytest.fixture
def data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


@pytest.mark.parametrize("arch", ["qwen3moe", "glm4moe", "deepseek2", "gpt_oss"])
def test_plan_probe_reads_every_device(
    arch: str,
    ik_engine: Path,
    rpc_endpoints: list[str],
    data_home: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model: Path = request.getfixturevalue(f"tiny_{arch}")
    rpc = [arg for e in rpc_endpoints for arg in ("--rpc", f"{e}=1GiB")]
    code = main(["plan", str(model), "--ram", "4GiB", *rpc, "--ctx", "4096", "--threads", "1",
                 "--engine", str(ik_engine), "--probe", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    measured = json.loads(out)["measured"]
    assert measured["outcome"] == "measured", measured["sentence"]
    devices = {d["name"]: d for d in measured["devices"]}
    assert set(devices) == {f"RPC0[{e}]" for e in rpc_endpoints} | {"CPU"}
    for name, d in devices.items():
        est = d["estimate"]
        assert abs(d["weights"] - est["weights"]) <= 0.01 * MiB, name
        assert abs(d["kv"] - est["kv"]) <= 0.01 * MiB, name
        assert d["compute"] > 0, name
    assert os.path.exists(data_home / "data" / "moe-studio" / "calibration.jsonl")


def test_plan_after_a_launch_reports_its_measured_compute(
    ik_engine: Path,
    rpc_endpoints: list[str],
    data_home: Path,
    tiny_glm4moe: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rpc = [arg for e in rpc_endpoints for arg in ("--rpc", f"{e}=1GiB")]
    common = [str(tiny_glm4moe), "--ram", "4GiB", *rpc, "--ctx", "2048", "--threads", "1",
              "--engine", str(ik_engine)]  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["launch", *common, "--port", str(port), "--check"]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["plan", *common, "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)["devices"]
    records = [
        json.loads(line)
        for line in (data_home / "data" / "moe-studio" / "calibration.jsonl")
        .read_text()
        .splitlines()
    ]
    launched = {d["name"]: d["actual"]["compute"] for d in records[-1]["devices"]}
    assert {d["name"]: d["compute"] for d in devices} == launched
    assert {d["compute_source"] for d in devices} == {"measured"}


def test_mla_dry_run_crash_is_a_sentence(
    ik_engine: Path, data_home: Path, tiny_deepseek2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ik 8337e4cd's --dry-run segfaults while reserving the compute buffers of a DeepSeek (MLA)
    # model that runs on the CPU alone; the same command without --dry-run loads.
    code = main(["plan", str(tiny_deepseek2), "--ram", "4GiB", "--ctx", "512", "--threads", "1",
                 "--engine", str(ik_engine), "--probe", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    measured = json.loads(out)["measured"]
    assert measured["outcome"] == "failed"
    assert "ended before it printed its compute buffers" in measured["sentence"]
    assert "SIGSEGV" in measured["sentence"]
