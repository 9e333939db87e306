"""An ik_llama.cpp build older than a tensor type the model uses (issue 14: "types the user's build
does not know"): the build each ik type appeared in, and the sentence plan/launch/compare print."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.engine import discovery
from moe_studio.core.engine.discovery import EngineInfo, build_types_note
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.ggml_types import IK_TYPE_ORIGIN, TYPES, ik_types_newer_than
from moe_studio.core.plan.compare import load_problem
from tests.support.standin_tools import install_standin

IK_QUANT = "catalog:deepseek-v3@IQ2_KS"  # IQ2_KS (3458), IQ3_KS (3778), IQ5_KS (3696), IQ4_K, IQ6_K


def _ik(build: int | None) -> EngineInfo:
    version = f"version: {build} (abcdef1)" if build is not None else "version: 0 (unknown)"
    return EngineInfo("/opt/ik/llama-server", "ik", version, build, "abcdef1")


def test_the_table_cites_ik_history() -> None:
    # Read from ik_llama.cpp's history at 8337e4cd (build 4840), e.g. "Adding IQ2_KL (#602)".
    assert IK_TYPE_ORIGIN[157].build == 3800 and IK_TYPE_ORIGIN[157].pr == 602
    assert IK_TYPE_ORIGIN[153].build == IK_TYPE_ORIGIN[154].build == IK_TYPE_ORIGIN[155].build
    assert IK_TYPE_ORIGIN[39].build == 3834  # MXFP4 came to ik in PR #682
    assert all(TYPES[i].in_ik for i in IK_TYPE_ORIGIN)
    assert all(3347 < o.build <= 4840 for o in IK_TYPE_ORIGIN.values())
    assert 12 not in IK_TYPE_ORIGIN  # Q4_K: every ik build knows it


def test_types_newer_than_a_build_newest_first() -> None:
    ids = [12, 145, 156, 152, 157]  # Q4_K, IQ2_KS, IQ3_KS, IQ5_KS, IQ2_KL
    assert [t.name for t, _ in ik_types_newer_than(ids, 3700)] == ["IQ2_KL", "IQ3_KS"]
    assert [t.name for t, _ in ik_types_newer_than(ids, 3457)] == [
        "IQ2_KL", "IQ3_KS", "IQ5_KS", "IQ2_KS",
    ]  # fmt: skip
    assert ik_types_newer_than(ids, 3800) == []


def test_the_note_names_the_build_and_the_type() -> None:
    ids = [t.type_id for t in catalog.load(IK_QUANT).tensors]
    note = build_types_note(_ik(3700), ids)
    assert note.startswith("This ik_llama.cpp build (3700) predates IQ3_KS (added in build 3778, ")
    assert "adc28f885, PR #566, 2025-07-02" in note and note.endswith("Update the engine.")
    assert "IQ5_KS" not in note  # 3696 ≤ 3700
    assert build_types_note(_ik(3778), ids) == ""
    assert build_types_note(_ik(None), ids) == ""  # version: 0 (unknown) — cannot tell
    mainline = EngineInfo("llama-server", "mainline", "version: 6000 (abc)", 6000)
    assert build_types_note(mainline, ids) == ""  # the dialect check refuses ik types there


def test_compare_marks_a_quant_the_build_cannot_load() -> None:
    layout = catalog.load(IK_QUANT)
    assert load_problem(layout, "ik") == ""
    assert load_problem(layout, "ik", 4840) == ""
    assert load_problem(layout, "ik", 3700) == "IQ3_KS needs ik build 3778 (yours is 3700)"
    two = load_problem(layout, "ik", 3450)
    assert "IQ2_KS needs ik build 3458 (yours is 3450)" in two and "IQ3_KS" in two


@pytest.mark.parametrize("command", ["plan", "launch"])
def test_plan_and_launch_print_the_note(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in list(os.environ):
        if key.startswith(("STANDIN_", "MOE_STUDIO_ENGINE")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    engine = install_standin(tmp_path / "ik", "ik", bench=False)
    # The stand-in prints build 4840; this user's build is 3700.
    monkeypatch.setattr(
        discovery, "parse_version", lambda text: ("version: 3700 (abcdef1)", 3700, "abcdef1")
    )
    args = [command, IK_QUANT, "--gpu", "24GiB", "--ram", "256GiB", "--engine", str(engine)]
    if command == "launch":
        args.append("--dry-run")
    main(args)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "This ik_llama.cpp build (3700) predates IQ3_KS (added in build 3778" in out
