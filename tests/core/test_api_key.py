"""``--api-key`` for a server that listens beyond this machine (issue 12, item 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.errors import CommandError
from moe_studio.core.plan.settings import Settings, exposure_warning, generate_api_key

BASE = ["plan", "catalog:qwen3-30b-a3b", "--gpu", "24GiB", "--ram", "64GiB"]


def test_generated_keys_are_long_random_and_usable() -> None:
    keys = {generate_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert len(key) == 32 and not key.startswith("-")
        Settings(api_key=key)  # accepted by the same check as a typed key


@pytest.mark.parametrize("key", ["a b", "a,b", "-x", "é", "x" * 257, "tab\there"])
def test_unusable_keys_are_refused_with_the_flag_named(key: str) -> None:
    with pytest.raises(CommandError, match="--api-key"):
        Settings(api_key=key)


def test_a_key_silences_the_exposure_warning() -> None:
    assert exposure_warning("0.0.0.0") is not None
    assert "--api-key auto" in (exposure_warning("0.0.0.0") or "")
    assert exposure_warning("0.0.0.0", "k3y") is None


def test_plan_api_key_auto_goes_into_the_command_and_the_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "p.json"
    assert main([*BASE, "--host", "0.0.0.0", "--api-key", "auto", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    key = json.loads(saved.read_text())["settings"]["api_key"]
    assert len(key) == 32
    assert f"--api-key {key}" in out
    assert "no authentication" not in out
    # The export carries the key; launching the profile sends it (see test_launch_cli).
    assert main(["export", str(saved), "--to", "sh"]) == 0
    assert f"--api-key {key}" in capsys.readouterr().out.replace("'", "")


def test_plan_with_a_typed_key_and_an_imported_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--api-key", "s3cret"]) == 0
    assert "--api-key s3cret" in capsys.readouterr().out
    assert main([*BASE, "--import", "llama-server -m x.gguf --api-key imp0rted"]) == 0
    assert "--api-key imp0rted" in capsys.readouterr().out
    assert main([*BASE, "--api-key", "a,b"]) == 1
    assert "--api-key" in capsys.readouterr().err
