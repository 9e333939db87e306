"""Mainline cannot load ik_llama.cpp's own quant types (issue 11 item 6): ``plan`` warns, naming the
types and how many tensors use them, ``launch`` refuses, ``export`` warns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.gguf import catalog
from moe_studio.core.hardware.devices import HostInfo, Rig
from moe_studio.core.plan.planning import Planner, engine_type_problem, unsupported_types
from moe_studio.core.plan.settings import Settings
from moe_studio.core.profiles.plans import profile_from_plan
from moe_studio.core.profiles.schema import save_profile
from moe_studio.core.units import GiB
from tests.support.standin_tools import install_standin

IK_QUANT = "catalog:deepseek-v3@IQ2_KS"
RIG = ("--gpu", "24GiB", "--ram", "256GiB")


def test_the_ik_only_types_of_a_model_are_counted() -> None:
    layout = catalog.load(IK_QUANT)
    missing = unsupported_types(layout, "mainline")
    assert "IQ2_KS" in missing and missing["IQ2_KS"] > 0
    assert all(name.startswith("IQ") for name in missing)  # F32/Q8_0… are in both engines
    assert unsupported_types(layout, "ik") == {}
    assert unsupported_types(catalog.load("catalog:deepseek-v3@Q4_K_M"), "mainline") == {}
    sentence = engine_type_problem(layout, "mainline")
    assert f"{sum(missing.values())} of " in sentence and "IQ2_KS ×" in sentence
    assert "ik_llama.cpp" in sentence


def test_plan_warns_with_the_types_and_the_tensor_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", IK_QUANT, *RIG, "--dialect", "mainline"]) == 0
    out = capsys.readouterr().out
    assert "! llama.cpp (mainline) cannot load this model:" in out
    assert "IQ2_KS ×" in out and "tensors use ik_llama.cpp-only quant types" in out
    assert main(["plan", IK_QUANT, *RIG, "--dialect", "mainline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "IQ2_KS" in data["engine_problem"]
    assert main(["plan", IK_QUANT, *RIG, "--json"]) == 0  # ik: nothing to say
    assert json.loads(capsys.readouterr().out)["engine_problem"] is None


def test_launch_refuses_mainline_with_ik_only_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in list(os.environ):
        if key.startswith(("STANDIN_", "MOE_STUDIO_ENGINE")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    engine = install_standin(tmp_path / "mainline", "mainline", bench=False)
    args = ["launch", IK_QUANT, *RIG, "--engine", str(engine), "--dry-run"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Not launched: llama.cpp (mainline) cannot load this model" in err
    assert "IQ2_KS" in err


def test_export_warns_that_the_command_will_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = catalog.load(IK_QUANT)
    rig = Rig("rig", HostInfo(256 * GiB), ())
    planner = Planner(layout, rig, Settings(dialect="mainline"))
    profile = profile_from_plan(planner, planner.initial(), name="ds")
    path = tmp_path / "ds.json"
    save_profile(path, profile)
    assert main(["export", str(path), "--to", "sh"]) == 0
    err = capsys.readouterr().err
    assert "moe-studio: warning: llama.cpp (mainline) cannot load this model" in err
