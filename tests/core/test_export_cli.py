"""``moe-studio export PROFILE --to …`` (core.export_cli): every format, through a saved profile.

The bash export is executed with tests/support/argv_dump.py standing in for llama-server, and
imported back with core.cmdline.import_command: both must give back the profile's command and
plan exactly.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_studio.core.cli.export import default_model_id, estimate_load_seconds
from moe_studio.core.cli.main import command_names, main
from moe_studio.core.fsutil import backup_path
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, NumaNode, Rig
from moe_studio.core.plan.cmdline import build_command, import_command
from moe_studio.core.plan.placement import Plan, assign, expert_cells, initial_plan
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.exports import suggest_health_check_timeout
from moe_studio.core.profiles.plans import profile_from_plan
from moe_studio.core.profiles.schema import Profile, save_profile
from moe_studio.core.units import GiB
from tests.support.tiny_models import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
ARGV_DUMP = ROOT / "tests" / "support" / "argv_dump.py"

needs_bash = pytest.mark.skipif(sys.platform == "win32", reason="runs bash and /bin/sh")


def _gpu_rig(numa: bool = False) -> Rig:
    nodes = (
        (NumaNode(0, tuple(range(8)), 64 * GiB), NumaNode(1, tuple(range(8, 16)), 64 * GiB))
        if numa
        else ()
    )
    host = HostInfo(128 * GiB, cores_physical=16, cores_logical=16, numa_nodes=nodes)
    gpu = Device("CUDA0", DeviceKind.CUDA, 24 * GiB, label="GPU", pcie_gen=4, pcie_width=16)
    return Rig("one GPU", host, (gpu,), source="command line")


def _split_plan(layout: ModelLayout) -> Plan:
    """Everything on CUDA0 but the routed experts of the last two layers: -ot rules appear."""
    plan = initial_plan(layout, "CUDA0")
    last = layout.n_layer - 1
    return assign(layout, plan, expert_cells(layout, last - 1, last), "CPU").after


def _fake_engine(folder: Path) -> Path:
    """A ``llama-server`` in a folder with blanks and non-ASCII that runs argv_dump.py."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "llama-server"
    exe.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(ARGV_DUMP))} "$@"\n',
        encoding="utf-8",
    )
    exe.chmod(0o755)
    return exe


def _save(
    folder: Path,
    layout: ModelLayout,
    *,
    rig: Rig | None = None,
    settings: Settings | None = None,
    engine: str = "llama-server",
    name: str = "tiny",
    plan: Plan | None = None,
) -> tuple[Path, Profile, Planner, Plan]:
    planner = Planner(layout, rig or _gpu_rig(), settings or Settings())
    plan = plan or _split_plan(layout)
    profile = profile_from_plan(planner, plan, executable=engine, name=name)
    path = folder / f"{name}.json"
    save_profile(path, profile)
    return path, profile, planner, plan


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, ModelLayout]:
    folder = tmp_path / "models dir ü"
    folder.mkdir()
    path = write_tiny_model(folder / "tiny moe.gguf", "qwen3moe")
    return path, open_model(path)


# --- bash: run it, import it ---------------------------------------------------------------------


@needs_bash
def test_bash_export_runs_the_engine_with_exactly_the_profiles_argv(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _fake_engine(tmp_path / "bin dir 模型 $x")
    settings = Settings(cache_type_k="q8_0", extra_args=("--alias", 'it\'s "mine"', "-v"))
    path, profile, planner, plan = _save(tmp_path, tiny[1], settings=settings, engine=str(engine))
    expected = planner.result(plan, executable=str(engine)).command
    assert expected is not None
    assert "-ot" in expected.argv and str(tiny[0]) in expected.argv

    code, script, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 0, err
    run = tmp_path / "run.sh"
    run.write_text(script, encoding="utf-8")
    dump = tmp_path / "dump.json"
    env = {**os.environ, "ARGV_DUMP_FILE": str(dump)}
    subprocess.run(["bash", str(run)], check=True, env=env, cwd=tmp_path, timeout=60)
    record: dict[str, Any] = json.loads(dump.read_text(encoding="utf-8"))
    assert record["argv"] == list(expected.argv[1:])
    assert profile.engine == str(engine)


def test_bash_export_imports_back_to_the_same_plan(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tiny[1]
    settings = Settings(ctx=8192, cache_type_k="q8_0", batch=1024, ubatch=256, port=9000)
    path, profile, planner, plan = _save(
        tmp_path, layout, settings=settings, engine="/opt/ik llama/bin/llama-server"
    )
    code, script, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 0, err

    imported_plan, imported, rig = import_command(script, layout, profile.rig, dialect="ik")
    assert imported_plan.devices == plan.devices
    assert imported.executable == "/opt/ik llama/bin/llama-server"
    assert imported.model == str(tiny[0])
    assert rig == profile.rig
    for key in ("ctx", "cache_type_k", "cache_type_v", "batch", "ubatch", "port", "host"):
        assert getattr(imported.settings, key) == getattr(profile.settings, key), key
    rebuilt = build_command(
        layout, imported_plan, rig, imported.settings, executable=imported.executable
    )
    original = planner.result(plan, executable=profile.engine).command
    assert original is not None and rebuilt.argv == original.argv


# --- every format --------------------------------------------------------------------------------


@pytest.fixture
def mainline_catalog(tmp_path: Path) -> tuple[Path, Profile, Planner, Plan]:
    layout = catalog.load("catalog:deepseek-v3")
    planner = Planner(layout, _gpu_rig(), Settings(dialect="mainline"))
    plan = planner.auto_place(planner.initial()).plan
    return _save(tmp_path, layout, settings=planner.settings, name="DeepSeek big", plan=plan)


def test_every_format_prints_the_profiles_command(
    mainline_catalog: tuple[Path, Profile, Planner, Plan],
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    path, profile, planner, plan = mainline_catalog
    command = planner.result(plan, executable=profile.engine).command
    assert command is not None
    argv = list(command.argv)
    outputs: dict[str, bytes] = {}
    for fmt in ("sh", "bat", "ps1", "llama-swap", "router-ini", "json"):
        assert main(["export", str(path), "--to", fmt]) == 0, fmt
        outputs[fmt], _ = capsysbinary.readouterr()

    assert outputs["sh"].startswith(b"#!/usr/bin/env bash\n")
    assert shlex.split(outputs["sh"].decode().split("exec ", 1)[1].replace("\\\n", " ")) == argv
    assert outputs["bat"].startswith(b"@echo off\r\n") and b"\n" not in outputs["bat"].replace(
        b"\r\n", b""
    )
    assert outputs["ps1"].startswith(b"\xef\xbb\xbf# Launches llama-server")
    launch = json.loads(outputs["json"])
    assert launch["argv"] == argv

    swap = yaml.safe_load(outputs["llama-swap"])
    entry = swap["models"]["deepseek-big"]
    assert "--port ${PORT}" in entry["cmd"]
    assert entry["checkEndpoint"] == "/health" and entry["ttl"] == 0
    load = estimate_load_seconds(planner.layout)
    assert swap["healthCheckTimeout"] == suggest_health_check_timeout(load) > 120

    ini = outputs["router-ini"].decode()
    assert "\n[deepseek-big]\n" in ini and "override-tensor = " in ini
    # The advisor's environment variable (mainline: GGML_OP_OFFLOAD_MIN_BATCH) rides along.
    assert launch["env"]
    for name, value in launch["env"].items():
        assert f"export {name}={value}\n".encode() in outputs["sh"]
        assert f"$env:{name} = '{value}'".encode() in outputs["ps1"]
        assert f'set "{name}={value}"'.encode() in outputs["bat"]


def test_no_advice_leaves_out_the_advisors_environment(
    mainline_catalog: tuple[Path, Profile, Planner, Plan], capsys: pytest.CaptureFixture[str]
) -> None:
    path = mainline_catalog[0]
    code, out, err = _export([str(path), "--to", "json"], capsys)
    assert code == 0 and list(json.loads(out)["env"]) == ["GGML_OP_OFFLOAD_MIN_BATCH"]
    assert "added GGML_OP_OFFLOAD_MIN_BATCH=" in err and "--no-advice" in err
    code, out, err = _export([str(path), "--to", "json", "--no-advice"], capsys)
    assert code == 0 and json.loads(out)["env"] == {} and err == ""


def test_numactl_prefix_when_the_settings_ask_for_numa(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1], rig=_gpu_rig(numa=True), settings=Settings(numa="numactl"))
    code, out, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 0
    assert "exec numactl --cpunodebind=0 --membind=0 llama-server" in out
    assert "--numa numactl" in out.replace(" \\\n  ", " ")
    code, out, err = _export([str(path), "--to", "bat"], capsys)
    assert code == 0 and '\r\n"llama-server" ^\r\n' in out
    assert "left out the numactl prefix (numactl --cpunodebind=0 --membind=0)" in err
    path, *_ = _save(tmp_path, tiny[1], rig=_gpu_rig(numa=True), name="no-numa")
    code, out, _ = _export([str(path), "--to", "sh"], capsys)
    assert code == 0 and "exec numactl" not in out and "exec llama-server" in out


def test_health_check_timeout_and_ttl_options(
    mainline_catalog: tuple[Path, Profile, Planner, Plan], capsys: pytest.CaptureFixture[str]
) -> None:
    path = mainline_catalog[0]
    args = [str(path), "--to", "llama-swap", "--id", "ds", "--ttl", "600"]
    code, out, _ = _export([*args, "--health-timeout", "3000"], capsys)
    swap = yaml.safe_load(out)
    assert code == 0 and swap["healthCheckTimeout"] == 3000
    assert swap["models"]["ds"]["ttl"] == 600


# --- llama-swap merge ----------------------------------------------------------------------------

EXISTING = """\
healthCheckTimeout: 60
logLevel: info
models:
  other:
    cmd: /usr/bin/llama-server -m /models/other.gguf --port ${PORT}
    ttl: 30
    aliases: [gpt-4o]
groups:
  main:
    members: [other]
"""


def test_llama_swap_merge_keeps_the_other_model(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    config = tmp_path / "config.yaml"
    config.write_text(EXISTING, encoding="utf-8")
    args = [str(path), "--to", "llama-swap", "--id", "tiny", "--merge", str(config)]
    code, out, err = _export(args, capsys)
    assert code == 0, err
    merged = yaml.safe_load(out)
    before = yaml.safe_load(EXISTING)
    assert merged["models"]["other"] == before["models"]["other"]
    assert merged["groups"] == before["groups"] and merged["logLevel"] == "info"
    assert list(merged["models"]) == ["other", "tiny"]
    assert "--port ${PORT}" in merged["models"]["tiny"]["cmd"]
    assert merged["healthCheckTimeout"] == 120  # raised to at least llama-swap's default
    assert config.read_text(encoding="utf-8") == EXISTING  # printing never writes

    # -o onto the merged file itself: written atomically, the old one kept as .bak.
    code, out, err = _export([*args, "-o", str(config)], capsys)
    assert code == 0 and out == "" and f"wrote {config}" in err
    assert yaml.safe_load(config.read_text(encoding="utf-8")) == merged
    assert backup_path(config).read_text(encoding="utf-8") == EXISTING


def test_merge_refusals(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    code, _, err = _export([str(path), "--to", "sh", "--merge", "x.yaml"], capsys)
    assert code == 1 and "--merge works only with --to llama-swap" in err
    code, _, err = _export([str(path), "--to", "llama-swap", "--merge", "nope.yaml"], capsys)
    assert code == 1 and "nope.yaml does not exist" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed\n", encoding="utf-8")
    code, _, err = _export([str(path), "--to", "llama-swap", "--merge", str(broken)], capsys)
    assert code == 1 and "not valid YAML" in err
    assert broken.read_text(encoding="utf-8") == "models: [unclosed\n"


# --- refusals ------------------------------------------------------------------------------------


def test_router_preset_needs_a_mainline_profile(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    code, out, err = _export([str(path), "--to", "router-ini"], capsys)
    assert code == 1 and out == ""
    assert "router presets exist only in mainline llama.cpp" in err


def test_a_missing_model_is_a_clear_error(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    tiny[0].unlink()
    code, out, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"moe-studio: error: The model of {path} cannot be opened: ")
    assert "does not exist" in err and err.count("\n") == 1


def test_a_changed_model_is_refused(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    write_tiny_model(tiny[0], "qwen3moe", n_layer=6)
    code, out, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 1 and out == ""
    assert "is not the one this profile was made for: it has 75 tensors, not 51" in err


def test_a_bad_profile_is_refused_and_left_alone(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    data = path.read_bytes()[:-40]
    path.write_bytes(data)
    code, out, err = _export([str(path), "--to", "sh"], capsys)
    assert code == 1 and out == "" and "is not valid JSON" in err and err.count("\n") == 1
    assert path.read_bytes() == data


def test_unknown_keys_are_warned_about_and_the_export_goes_on(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1])
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["future"] = True
    path.write_text(json.dumps(doc), encoding="utf-8")
    code, out, err = _export([str(path), "--to", "json"], capsys)
    assert code == 0 and json.loads(out)["argv"][0] == "llama-server"
    assert "warning:" in err and "unknown key 'future'" in err


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path / "p.json"), "--to", "docker"])
    assert info.value.code == 2


def test_export_is_a_cli_command_and_ids_are_slugs(tiny: tuple[Path, ModelLayout]) -> None:
    assert "export" in command_names()
    planner = Planner(tiny[1], _gpu_rig(), Settings())
    profile = profile_from_plan(planner, planner.initial(), name="Qwen3 30B / fast!")
    assert default_model_id(profile) == "qwen3-30b-fast"
    assert default_model_id(replace(profile, name="")) == default_model_id(
        replace(profile, name=tiny[1].name)
    )


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no executable bit")
def test_a_shell_script_written_to_a_file_is_executable(
    tmp_path: Path, tiny: tuple[Path, ModelLayout], capsys: pytest.CaptureFixture[str]
) -> None:
    path, *_ = _save(tmp_path, tiny[1], rig=_gpu_rig())
    script, batch = tmp_path / "run.sh", tmp_path / "run.bat"
    assert _export([str(path), "--to", "sh", "-o", str(script)], capsys)[0] == 0
    assert _export([str(path), "--to", "bat", "-o", str(batch)], capsys)[0] == 0
    assert os.access(script, os.X_OK)
    assert not os.access(batch, os.X_OK)
