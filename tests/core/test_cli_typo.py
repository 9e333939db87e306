"""A mistyped subcommand says so instead of opening the GUI (issue 12, item 9)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moe_studio.core.cli.main import unknown_command


def test_a_close_typo_suggests_the_command() -> None:
    assert unknown_command("catalgo") == "unknown command 'catalgo'; did you mean 'catalog'?"
    assert unknown_command("inspcet") == "unknown command 'inspcet'; did you mean 'inspect'?"


def test_a_far_word_lists_the_commands() -> None:
    message = unknown_command("zzz")
    assert message is not None and "the commands are" in message and "launch" in message


@pytest.mark.parametrize("word", ["catalog", "model.gguf", "dir/model", "-h", ""])
def test_commands_paths_and_options_are_not_typos(word: str) -> None:
    assert unknown_command(word) is None


def test_an_existing_extensionless_path_opens_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodel").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert unknown_command("mymodel") is None


def test_the_entry_point_exits_2_without_starting_qt(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moe_studio.gui import entry

    monkeypatch.setitem(sys.modules, "moe_studio.gui.app", None)  # importing it would fail
    assert entry.main(["catalgo"]) == 2
    err = capsys.readouterr().err
    assert err == "moe-studio: unknown command 'catalgo'; did you mean 'catalog'?\n"
