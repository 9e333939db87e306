"""Exports of a launch spec (core.exports), each checked against the parser that will read it.

The bash script is executed with a stand-in engine. The other formats are parsed back with
faithful ports, written here, of the code that reads them on the target:

- llama-swap: ``SanitizeCommand``/``StripComments`` (mostlygeek/llama-swap
  ``internal/config/commands.go``, commit 0bdb372) and the ``shlex.Posix``/``shlex.Windows``
  splitters of github.com/billziss-gh/golib v0.2.0 (``shlex/shlex.go``) that it calls;
- cmd.exe: percent expansion (phase 1), CR removal (1.5) and caret/quote handling with ``^``
  line continuation (phase 2) as described in "How does the Windows Command Interpreter (CMD.EXE)
  parse scripts?" (Stack Overflow 4094699, answers by jeb and dbenham);
- the program's argv: the MSVCRT / ``CommandLineToArgvW`` rules of "Parsing C command-line
  arguments" (learn.microsoft.com/cpp/c-language/parsing-c-command-line-arguments), including the
  post-2008 ``""`` inside quotes rule;
- PowerShell: single-quoted string literals as ``Tokenizer.ScanStringLiteral`` reads them
  (PowerShell/PowerShell ``engine/parser/tokenizer.cs``: a quote character followed by another
  quote character appends the second; ``' ‘ ’ ‚ ‛`` all count as single quotes);
- llama.cpp router presets: the PEG grammar of ``parse_ini_from_file`` (ggml-org/llama.cpp
  ``common/preset.cpp``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_studio.core.errors import ExportError
from moe_studio.core.plan.engine_options import option_arity
from moe_studio.core.profiles.exports import (
    ExportFormat,
    bash_script,
    batch_script,
    encode_export,
    launch_json,
    llama_swap_cmd,
    llama_swap_config,
    llama_swap_model,
    merge_llama_swap_config,
    powershell_script,
    router_preset_ini,
    suggest_health_check_timeout,
)

ROOT = Path(__file__).resolve().parents[2]
ARGV_DUMP = ROOT / "tests" / "support" / "argv_dump.py"

NASTY = [
    "/models/模型/Modèle Q4 x.gguf",
    "it's",
    'say "hi"',
    "$(touch /tmp/moe-studio-pwned)",
    "`touch /tmp/moe-studio-pwned`",
    "%PATH% 100%",
    "!wow!",
    "a^b",
    "x & y | z < w > v ; u",
    "(paren)",
    "${HOME} $HOME ${env.HOME} ${PORT}",
    "line one\nline two\n# not a comment\nends with backslash\\\n  indented",
    "",
    "trailing backslash\\",
    'quote then backslashes \\\\" end\\\\',
    "tab\there",
    "#hash at start",
    "*?[glob]",
    "~/tilde",
    "-1",
    "‘curly’ ‚low‛",
]
ENV = {
    "CUDA_VISIBLE_DEVICES": "0,1",
    "GGML_CUDA_NO_PINNED": "1",
    "MOE_TEST_ODD": 'it\'s $HOME `x` "q" 100% 模型',
    "MOE_TEST_NEWLINE": "a\nb",
    "MOE_TEST_EMPTY": "",
}


def _argv(exe: str, extra: Sequence[str] = NASTY) -> list[str]:
    argv = [exe, "-m", NASTY[0], "-ngl", "99", "-ot", r"blk\.(3|4)\.ffn_.*_exps=CUDA0"]
    argv += ["-ot", "exps=CPU", "--port", "8080", "--jinja"]
    for value in extra:
        argv += ["--extra", value]
    return argv


# --- bash: executed with a stand-in engine --------------------------------------------------------


def _fake_engine(folder: Path) -> Path:
    """An executable at a path with blanks and non-ASCII that runs tests/support/argv_dump.py."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "llama server"
    exe.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(ARGV_DUMP))} "$@"\n',
        encoding="utf-8",
    )
    exe.chmod(0o755)
    return exe


def _run_bash(script: str, folder: Path, clear: Collection[str] = ()) -> dict[str, Any]:
    script_path = folder / "run.sh"
    script_path.write_bytes(encode_export(ExportFormat.BASH, script))
    dump = folder / "dump.json"
    dump.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in clear}
    env["ARGV_DUMP_FILE"] = str(dump)
    subprocess.run(["bash", str(script_path)], check=True, env=env, cwd=folder, timeout=30)
    record: dict[str, Any] = json.loads(dump.read_text(encoding="utf-8"))
    return record


needs_bash = pytest.mark.skipif(sys.platform == "win32", reason="runs bash and /bin/sh")


@needs_bash
def test_bash_script_passes_argv_and_env_exactly(tmp_path: Path) -> None:
    exe = _fake_engine(tmp_path / "bin dir 模型 $x")
    argv = _argv(str(exe))
    record = _run_bash(bash_script(argv, ENV), tmp_path, clear=ENV)
    assert record["argv"] == argv[1:]
    for name, value in ENV.items():
        assert record["env"][name] == value
    assert not Path("/tmp/moe-studio-pwned").exists()


@needs_bash
def test_bash_script_runs_the_numactl_prefix_first(tmp_path: Path) -> None:
    exe = _fake_engine(tmp_path / "bin")
    argv = [str(exe), "-m", "x y.gguf"]
    script = bash_script(argv, {}, numactl=["env", "MOE_PREFIX_RAN=yes it did"])
    assert "exec env 'MOE_PREFIX_RAN=yes it did'" in script
    record = _run_bash(script, tmp_path, clear=["MOE_PREFIX_RAN"])
    assert record["argv"] == ["-m", "x y.gguf"]
    assert record["env"]["MOE_PREFIX_RAN"] == "yes it did"


def test_bash_script_layout() -> None:
    script = bash_script(["/opt/llama-server", "-m", "a.gguf", "-ngl", "99", "--jinja"], {"A": "1"})
    assert script == (
        "#!/usr/bin/env bash\n"
        "# Launches llama-server as planned in MoE Studio.\n"
        "set -euo pipefail\n"
        "export A=1\n"
        "exec /opt/llama-server \\\n"
        "  -m a.gguf \\\n"
        "  -ngl 99 \\\n"
        "  --jinja\n"
    )
    assert bash_script(["-odd"]).splitlines()[-1] == "exec -- -odd"


@needs_bash
def test_bash_script_with_an_odd_executable_name(tmp_path: Path) -> None:
    _fake_engine(tmp_path)
    (tmp_path / "llama server").rename(tmp_path / "-engine")
    record = _run_bash(bash_script(["./-engine", "x"]), tmp_path)
    assert record["argv"] == ["x"]


_ARG_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        st.sampled_from("\n\r\t '\"\\$`!%^&|<>(){}#;*?~"),
    ),
    max_size=24,
)


@pytest.fixture(scope="module")
def engine_dir() -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        yield path, _fake_engine(path / "bin 模型")


@needs_bash
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(_ARG_TEXT, max_size=6), value=_ARG_TEXT)
def test_bash_round_trip_property(
    engine_dir: tuple[Path, Path], args: list[str], value: str
) -> None:
    folder, exe = engine_dir
    record = _run_bash(bash_script([str(exe), *args], {"MOE_TEST_VALUE": value}), folder,
                       clear=["MOE_TEST_VALUE"])  # fmt: skip
    assert record["argv"] == args
    assert record["env"]["MOE_TEST_VALUE"] == value


def test_bash_rejects_what_argv_cannot_carry() -> None:
    with pytest.raises(ExportError, match="NUL"):
        bash_script(["/x", "a\0b"])
    with pytest.raises(ExportError, match="environment variable name"):
        bash_script(["/x"], {"NOT-A-NAME": "1"})
    with pytest.raises(ExportError, match="empty"):
        bash_script([])


# --- llama-swap: a port of its command splitting ------------------------------------------------

_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B)
)
_SPACE, _WORD = " ", "A"  # golib's parser states; a quote state is the quote rune itself
_NO_ESCAPE, _EMPTY = "NoEscape", "EmptyRune"  # golib's sentinel runes (never a 1-char string)


def _go_trim_space(s: str) -> str:
    """Go's strings.TrimSpace (unicode.IsSpace)."""
    start, end = 0, len(s)
    while start < end and s[start] in _GO_SPACE:
        start += 1
    while end > start and s[end - 1] in _GO_SPACE:
        end -= 1
    return s[start:end]


def _posix_escape(s: str, r: str, r0: str) -> str:
    if r != "\\":
        return _NO_ESCAPE
    if s in (_SPACE, _WORD):
        return _EMPTY if r0 in ("\n", _EMPTY) else r0
    if s == '"':
        if r0 in ("\n", _EMPTY):
            return _EMPTY
        return r0 if r0 in ("$", "`", '"', "\\") else _NO_ESCAPE
    return _NO_ESCAPE


def _windows_escape(s: str, r: str, r0: str) -> str:
    if s in (_SPACE, _WORD):
        return r0 if r == "\\" and r0 == '"' else _NO_ESCAPE
    if s == '"':
        return r0 if r in ("\\", '"') and r0 == '"' else _NO_ESCAPE
    return _NO_ESCAPE


def _windows_long_escape(line: str) -> tuple[str, str, str | None] | None:
    """golib's LongEscape for a backslash just read; ``line`` is what follows it.

    Returns (extra backslashes, new line starting with the next rune, next rune) or None.
    """
    n = 0
    r: str | None = None
    while True:
        r = line[n] if n < len(line) else None
        n += 1
        if r != "\\":
            break
    if n < 2:
        return None
    if r != '"':
        rest = line[n - 1 :]
        return "\\" * (n - 1), rest, rest[0] if rest else None
    if n % 2 == 0:
        return "\\" * (n // 2 - 1), line[n - 1 :], '"'
    return "\\" * (n // 2 - 1), line[n - 2 :], "\\"


def golib_split(line: str, *, windows: bool = False) -> list[str]:
    """Port of ``(*Dialect).Split`` of golib/shlex for the Posix or Windows dialect."""
    is_space: Callable[[str], bool] = (
        (lambda c: c in " \t\r\n") if windows else (lambda c: c in " \t\n")
    )
    quotes = '"' if windows else "\"'"
    escape = _windows_escape if windows else _posix_escape
    tokens: list[str] = []
    token: list[str] | None = None
    state = [_SPACE]
    r: str | None = line[0] if line else None
    while r is not None:
        line = line[1:]  # invariant: line starts with r
        r0: str | None = line[0] if line else None
        s = state[-1]
        e = escape(s, r, r0 if r0 is not None else _EMPTY)
        if e != _NO_ESCAPE:
            if r0 is not None:
                line = line[1:]
                r0 = line[0] if line else None
            if e == _EMPTY:
                r = r0
                continue
        if s == _SPACE:
            if e != _NO_ESCAPE:
                state.append(_WORD)
                token = [*(token or []), e]
            elif r in quotes:
                state += [_WORD, r]
                token = []
            elif not is_space(r):
                state.append(_WORD)
                token = [*(token or []), r]
        elif s == _WORD:
            if e != _NO_ESCAPE:
                assert token is not None
                token.append(e)
            elif r in quotes:
                state.append(r)
            elif is_space(r):
                state.pop()
                tokens.append("".join(token or []))
                token = None
            else:
                assert token is not None
                token.append(r)
        elif e != _NO_ESCAPE:
            assert token is not None
            token.append(e)
        elif s == r:
            state.pop()
        else:
            assert token is not None
            token.append(r)
        if e == _NO_ESCAPE and windows and r == "\\":
            long = _windows_long_escape(line)
            if long is not None:
                extra, line, r0 = long
                assert token is not None
                token += list(extra)
        r = r0
    if token is not None:
        tokens.append("".join(token))
    return tokens


def strip_comments(cmd: str) -> str:
    """llama-swap's StripComments, applied to cmd when the config is loaded."""
    return "\n".join(ln for ln in cmd.split("\n") if not _go_trim_space(ln).startswith("#"))


def sanitize_command(cmd: str, *, windows: bool = False) -> list[str]:
    """llama-swap's SanitizeCommand: comment lines, trailing backslashes, then golib shlex."""
    cleaned = []
    for line in cmd.split("\n"):
        trimmed = _go_trim_space(line)
        if trimmed.startswith("#"):
            continue
        cleaned.append(trimmed[:-1] + " " if trimmed.endswith("\\") else line)
    args = golib_split("\n".join(cleaned), windows=windows)
    assert args, "empty command"
    return args


_MACRO = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
_ENV_MACRO = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")


def swap_argv(cmd: str, port: int, *, windows: bool = False) -> list[str]:
    """What llama-swap starts for ``cmd``: comments, macros (only ${PORT} may be used), split."""
    cmd = strip_comments(cmd)
    assert not _ENV_MACRO.search(cmd)
    assert {m.group(1) for m in _MACRO.finditer(cmd)} == {"PORT"}
    return sanitize_command(cmd.replace("${PORT}", str(port)), windows=windows)


def _expected_with_port(argv: Sequence[str], port: int) -> list[str]:
    """``argv`` with its first --port set to ``port`` and later ones dropped (or one added).

    Options and values are told apart with ik_llama.cpp's argument table, as the engine does.
    """
    out = [argv[0]]
    found = False
    i = 1
    while i < len(argv):
        token = argv[i]
        if re.match("--?[A-Za-z]", token) and not (token.startswith("--") and "=" in token):
            arity = option_arity(token, "ik")
            if arity is None:
                arity = int(i + 1 < len(argv) and not re.match("--?[A-Za-z]", argv[i + 1]))
        else:
            arity = 0
        group = list(argv[i : i + 1 + arity])
        i += 1 + arity
        if token == "--port" or token.startswith("--port="):
            if not found:
                out += ["--port", str(port)] if token == "--port" else [f"--port={port}"]
            found = True
            continue
        out += group
    return out if found else [*out, "--port", str(port)]


def test_golib_port_matches_llama_swaps_own_test() -> None:
    # TestConfig_SanitizeCommand in llama-swap's internal/config/config_posix_test.go.
    cmd = """python model1.py \\
    -a "double quotes" \\
    --arg2 'single quotes'
    -s
    # comment 1
    --arg3 123 \\

      # comment 2
    --arg4 '"string in string"'


    # this will get stripped out as well as the white space above
    -c "'single quoted'"
    """
    assert sanitize_command(cmd) == [
        "python", "model1.py", "-a", "double quotes", "--arg2", "single quotes", "-s",
        "--arg3", "123", "--arg4", '"string in string"', "-c", "'single quoted'",
    ]  # fmt: skip


def test_golib_port_windows_backslash_rules() -> None:
    # The rules spelled out in golib's LongEscape comment.
    assert golib_split(r'a\\\"b "c d" e\\"f g" h\\') == ['a\\"b', "c d", "e\\f g", "h\\"]
    assert golib_split('"" x', windows=True) == ["", "x"]
    assert golib_split(r'"a\\" "b\\\"c" d\e', windows=True) == ["a\\", 'b\\"c', "d\\e"]
    assert golib_split(r'"C:\Program Files\x\\" y', windows=True) == ["C:\\Program Files\\x\\", "y"]


@pytest.mark.parametrize("windows", [False, True])
def test_llama_swap_cmd_round_trips_through_llama_swap(windows: bool) -> None:
    extra = [v for v in NASTY if not (windows and "\n" in v)]
    argv = _argv("/opt/llama server/llama-server", extra)
    cmd = llama_swap_cmd(argv, numactl=["numactl", "--interleave=all"], windows=windows)
    expected = ["numactl", "--interleave=all", *_expected_with_port(argv, 5800)]
    assert swap_argv(cmd, 5800, windows=windows) == expected


def test_llama_swap_cmd_adds_a_port_and_handles_port_equals() -> None:
    assert swap_argv(llama_swap_cmd(["/x", "-m", "a"]), 9) == ["/x", "-m", "a", "--port", "9"]
    assert swap_argv(llama_swap_cmd(["/x", "--port=1"]), 9) == ["/x", "--port=9"]
    cmd = llama_swap_cmd(["/x", "-m", "a b", "--port", "1", "-c", "4096"])
    assert cmd == "/x\n  -m 'a b'\n  --port ${PORT}\n  -c 4096"


def test_llama_swap_cmd_has_exactly_one_port() -> None:
    # A literal --port in the extra arguments: one --port ${PORT}, nothing appended after it.
    argv = ["/x", "-m", "a", "--port", "8080", "--metrics", "--port", "9000"]
    cmd = llama_swap_cmd(argv)
    assert cmd.count("--port") == 1
    assert swap_argv(cmd, 9) == ["/x", "-m", "a", "--port", "9", "--metrics"]
    assert swap_argv(llama_swap_cmd(["/x", "--port=1", "--port", "2"]), 9) == ["/x", "--port=9"]
    # "--port" as the value of another option is that option's value, not a port.
    cmd = llama_swap_cmd(["/x", "--alias", "--port", "--port", "8080"])
    assert swap_argv(cmd, 9) == ["/x", "--alias", "--port", "--port", "9"]
    # A value starting with "-" stays with its option (mainline and ik tables alike).
    for dialect in ("ik", "mainline"):
        cmd = llama_swap_cmd(["/x", "--log-file", "-x", "-c", "-1"], dialect=dialect)
        assert cmd == "/x\n  --log-file -x\n  -c -1\n  --port ${PORT}"


def test_llama_swap_windows_refuses_line_breaks() -> None:
    with pytest.raises(ExportError, match="line break"):
        llama_swap_cmd(["/x", "a\nb"], windows=True)


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(_ARG_TEXT, max_size=6),
    windows=st.booleans(),
    existing=st.sampled_from(["", "# mine\nmodels: {}\n", "COMMENTED"]),
)
def test_llama_swap_round_trip_property(args: list[str], windows: bool, existing: str) -> None:
    if windows:
        args = [a for a in args if "\n" not in a and "\r" not in a]
    argv = ["/opt/llama-server", *args]
    entry = llama_swap_model(argv, windows=windows)
    text = merge_llama_swap_config(COMMENTED if existing == "COMMENTED" else existing, "m", entry)
    # llama-swap expands ${env.X} in the whole text and ${NAME} in every value.
    assert not _ENV_MACRO.search(text)
    assert {m.group(1) for m in _MACRO.finditer(text)} == {"PORT"}
    assert ("# mine" in text) == (existing == "# mine\nmodels: {}\n")
    cmd = yaml.safe_load(text)["models"]["m"]["cmd"]
    assert swap_argv(cmd, 5801, windows=windows) == _expected_with_port(argv, 5801)


def test_llama_swap_config_shape() -> None:
    argv = ["/opt/llama-server", "-m", "/m/x.gguf", "--host", "0.0.0.0", "--port", "8080"]
    text = llama_swap_config(
        "deepseek-v3", argv, {"CUDA_VISIBLE_DEVICES": "0,1"}, ttl=600, load_seconds_estimate=300
    )
    config = yaml.safe_load(text)
    assert list(config) == ["healthCheckTimeout", "models"]
    assert config["healthCheckTimeout"] == 600
    model = config["models"]["deepseek-v3"]
    assert model == {
        "cmd": "/opt/llama-server\n  -m /m/x.gguf\n  --host 0.0.0.0\n  --port ${PORT}",
        "env": ["CUDA_VISIBLE_DEVICES=0,1"],
        "proxy": "http://127.0.0.1:${PORT}",
        "checkEndpoint": "/health",
        "ttl": 600,
    }
    assert "cmd: |-\n" in text  # readable block, one option per line
    assert '\n  "deepseek-v3":\n' in text  # quoted: no YAML version reads an id as a number


def test_llama_swap_proxy_follows_a_specific_host() -> None:
    assert llama_swap_model(["/x", "--host", "10.0.0.5"])["proxy"] == "http://10.0.0.5:${PORT}"
    assert llama_swap_model(["/x", "--host", "::1"])["proxy"] == "http://[::1]:${PORT}"
    assert llama_swap_model(["/x"])["proxy"] == "http://127.0.0.1:${PORT}"


def test_llama_swap_env_round_trips_and_refuses_macros() -> None:
    env = {"A": 'it\'s "q" 模型 $HOME', "B": "x\ny"}
    text = llama_swap_config("m", ["/x"], env)
    assert yaml.safe_load(text)["models"]["m"]["env"] == ['A=it\'s "q" 模型 $HOME', "B=x\ny"]
    with pytest.raises(ExportError, match="macro"):
        llama_swap_model(["/x"], {"A": "${HOME}"})
    with pytest.raises(ExportError, match="macro"):
        merge_llama_swap_config("", "m${PORT}", {})


def test_suggested_health_check_timeout() -> None:
    assert suggest_health_check_timeout(None) == 120
    assert suggest_health_check_timeout(10) == 120
    assert suggest_health_check_timeout(400.2) == 801
    assert suggest_health_check_timeout(float("nan")) == 120


EXISTING = """\
# my llama-swap config
healthCheckTimeout: 900
logLevel: debug
macros:
  "latest-llama": /opt/llama-server --port ${PORT}
models:
  "qwen":
    cmd: |
      ${latest-llama}
      -m /models/qwen.gguf
    ttl: 60
    aliases: [gpt-4o-mini]
    metadata: {shared: &s {a: 1}, again: *s}
  old-moe:
    cmd: /old --port ${PORT}
groups:
  g1: {members: [qwen]}
"""


def test_merge_keeps_other_models_and_top_level_keys() -> None:
    before = yaml.safe_load(EXISTING)
    merged = llama_swap_config(
        "new-moe", ["/opt/llama-server", "-m", "/m/x.gguf"], ttl=0, load_seconds_estimate=100,
        existing=EXISTING,
    )  # fmt: skip
    after = yaml.safe_load(merged)
    assert after["healthCheckTimeout"] == 900  # never lowered
    assert {k: v for k, v in after.items() if k != "models"} == {
        k: v for k, v in before.items() if k != "models"
    }
    assert after["models"]["qwen"] == before["models"]["qwen"]
    assert after["models"]["old-moe"] == before["models"]["old-moe"]
    assert list(after["models"]) == ["qwen", "old-moe", "new-moe"]
    # The user's own anchor stays as written; the new entry adds none.
    assert merged.count("&") == EXISTING.count("&") and merged.count("*s") == EXISTING.count("*s")
    # Replacing an existing model keeps its place.
    replaced = yaml.safe_load(merge_llama_swap_config(merged, "qwen", {"cmd": "/q"}))
    assert list(replaced["models"]) == ["qwen", "old-moe", "new-moe"]
    assert replaced["models"]["qwen"] == {"cmd": "/q"}
    assert replaced["models"]["new-moe"] == after["models"]["new-moe"]


COMMENTED = """\
# My llama-swap config: keep these notes!
healthCheckTimeout: 900   # slow disks
models:
  # the small one
  "qwen":
    cmd: |
      /opt/llama-server --port ${PORT}
      -m /models/qwen.gguf
    env:
    - A=1   # why A
  old-moe:
    cmd: /old --port ${PORT}   # end of line
# groups below

groups:
  g1: {members: [qwen]}   # flow style stays
"""


def test_merge_keeps_the_users_comments_and_formatting() -> None:
    merged = llama_swap_config(
        "new-moe", ["/opt/llama-server", "-m", "/m/x.gguf"], ttl=0, existing=COMMENTED
    )
    # Everything the user wrote is still there, line for line and in order; the new model goes
    # after the last one, above the comment that introduces the next section.
    lines = merged.splitlines()
    assert [line for line in lines if line in COMMENTED.splitlines()] == COMMENTED.splitlines()
    assert lines.index('  "new-moe":') < lines.index("# groups below")
    assert lines.index("    cmd: /old --port ${PORT}   # end of line") < lines.index('  "new-moe":')
    after = yaml.safe_load(merged)
    assert after["models"]["new-moe"]["cmd"].startswith("/opt/llama-server")
    assert list(after) == ["healthCheckTimeout", "models", "groups"]
    # Replacing a model rewrites only that entry; a raised timeout keeps its comment.
    again = merge_llama_swap_config(merged, "qwen", {"cmd": "/q"}, health_check_timeout=2000)
    assert "healthCheckTimeout: 2000  # slow disks" in again
    assert "# the small one" in again and "# groups below" in again
    assert "why A" not in again  # it was inside the replaced entry
    assert yaml.safe_load(again)["models"]["qwen"] == {"cmd": "/q"}


def test_merge_raises_the_health_check_timeout_when_needed() -> None:
    config = yaml.safe_load(
        llama_swap_config("m", ["/x"], load_seconds_estimate=1000, existing=EXISTING)
    )
    assert config["healthCheckTimeout"] == 2000
    no_timeout = merge_llama_swap_config("models: {}\n", "m", {"cmd": "/x"})
    assert "healthCheckTimeout" not in yaml.safe_load(no_timeout)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  a: [1, 2\n  b: 3\n", r"not valid YAML \(line \d+, column \d+"),
        ("key: value\n  bad indent: 1\n", r"not valid YAML \(line 2"),
        ("- just\n- a list\n", "not a mapping"),
        ("models: [a, b]\n", "'models' key"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ],
)
def test_merge_refuses_a_broken_config(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        merge_llama_swap_config(text, "m", {"cmd": "/x"})


def test_merge_into_empty_or_null_documents() -> None:
    for text in ("", "\n", "# only a comment\n", "~\n", "models:\n"):
        config = yaml.safe_load(merge_llama_swap_config(text, "m", {"cmd": "/x"}))
        assert config == {"models": {"m": {"cmd": "/x"}}}


# --- cmd.exe .bat ---------------------------------------------------------------------------------


def msvcrt_split(line: str) -> list[str]:
    """CommandLineToArgvW / MSVCRT (post-2008) splitting; see the module docstring."""
    n = len(line)
    if line.startswith('"'):
        end = line.index('"', 1)
        args, i = [line[1:end]], end + 1
    else:
        end = next((k for k, c in enumerate(line) if c in " \t"), n)
        args, i = [line[:end]], end
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return args
        arg: list[str] = []
        quoted = False
        while i < n and (quoted or line[i] not in " \t"):
            c = line[i]
            if c == "\\":
                k = i
                while k < n and line[k] == "\\":
                    k += 1
                count = k - i
                if k < n and line[k] == '"':
                    arg.append("\\" * (count // 2))
                    if count % 2:
                        arg.append('"')
                        k += 1
                else:
                    arg.append("\\" * count)
                i = k
            elif c == '"':
                if quoted and i + 1 < n and line[i + 1] == '"':
                    arg.append('"')
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                arg.append(c)
                i += 1
        args.append("".join(arg))


def _cmd_percent(line: str) -> str:
    """Phase 1 in a batch file, for text without variables: %% becomes %."""
    out, i = [], 0
    while i < len(line):
        if line[i] == "%":
            assert line[i + 1 : i + 2] == "%", f"lone % would start a variable: {line!r}"
            out.append("%")
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def cmd_logical_lines(bat: str) -> list[str]:
    """Phases 1, 1.5 and 2 of cmd.exe for each logical line of a batch file.

    Fails on any unescaped, unquoted & | < > ( ), which cmd.exe would act on.
    """
    physical = [_cmd_percent(p).replace("\r", "") for p in bat.split("\n")]
    lines: list[str] = []
    k = 0
    while k < len(physical):
        text, out, quoted, i = physical[k], [], False, 0
        while i < len(text):
            c = text[i]
            if c == '"':
                quoted = not quoted
                out.append(c)
                i += 1
            elif quoted:
                out.append(c)
                i += 1
            elif c == "^" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
            elif c == "^":
                # A caret ending the line continues it on the next one, whose first character is
                # taken literally.
                k += 1
                text = physical[k]
                out.append(text[:1])
                i = 1
            else:
                assert c not in "&|<>()", f"cmd.exe would act on {c!r} in {text!r}"
                out.append(c)
                i += 1
        lines.append("".join(out))
        k += 1
    return [line for line in lines if line]


def parse_batch(bat: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment a .bat from batch_script() gives the engine."""
    env: dict[str, str] = {}
    argv: list[str] | None = None
    fixed = (
        "@echo off",
        "rem Launches llama-server as planned in MoE Studio.",
        "chcp 65001 >nul",
        "setlocal EnableExtensions DisableDelayedExpansion",
    )
    rest = "\r\n".join(line for line in bat.split("\r\n") if line not in fixed)
    for line in cmd_logical_lines(rest):
        if line.startswith("set "):
            rest = line[4:]
            if rest.startswith('"'):
                rest = rest[1 : rest.rindex('"')]
            name, _, value = rest.partition("=")
            env[name] = value
            continue
        assert argv is None, f"second command: {line!r}"
        argv = msvcrt_split(line)
    assert argv is not None
    return argv, env


def test_msvcrt_port_matches_the_documented_examples() -> None:
    # The table in "Parsing C command-line arguments".
    assert msvcrt_split('x "abc" d e') == ["x", "abc", "d", "e"]
    assert msvcrt_split(r"x a\\b d" + '"e f"g h') == ["x", "a\\\\b", "de fg", "h"]
    assert msvcrt_split(r"x a\\\"b c d") == ["x", 'a\\"b', "c", "d"]
    assert msvcrt_split(r'x a\\\\"b c" d e') == ["x", "a\\\\b c", "d", "e"]
    assert msvcrt_split('x a"b"" c d') == ["x", 'ab" c d']


def test_batch_script_round_trips_through_cmd_and_msvcrt() -> None:
    extra = [v for v in NASTY if "\n" not in v]
    argv = _argv(r"C:\Program Files\llama (x86)\llama-server.exe", extra)
    env = {k: v for k, v in ENV.items() if v and "\n" not in v}
    bat = batch_script(argv, env)
    assert "\r\n" in bat and "\n" not in bat.replace("\r\n", "")
    assert bat.startswith("@echo off\r\n")
    assert "chcp 65001 >nul" in bat  # non-ASCII present
    got_argv, got_env = parse_batch(bat)
    assert got_argv == argv
    assert got_env == env


def test_batch_script_layout_for_plain_arguments() -> None:
    bat = batch_script([r"C:\llama\llama-server.exe", "-m", r"D:\m\x.gguf", "-c", "4096"])
    assert bat == (
        "@echo off\r\n"
        "rem Launches llama-server as planned in MoE Studio.\r\n"
        "setlocal EnableExtensions DisableDelayedExpansion\r\n"
        '"C:\\llama\\llama-server.exe" ^\r\n'
        "  -m D:\\m\\x.gguf ^\r\n"
        "  -c 4096\r\n"
    )


@settings(max_examples=300, deadline=None)
@given(args=st.lists(_ARG_TEXT, max_size=6), value=_ARG_TEXT)
def test_batch_round_trip_property(args: list[str], value: str) -> None:
    def representable(text: str) -> bool:
        return not any(ord(c) < 32 and c != "\t" for c in text)

    args = [a for a in args if representable(a)]
    env = {"V": value} if value and representable(value) else {}
    argv = [r"C:\llama\llama-server.exe", *args]
    assert parse_batch(batch_script(argv, env)) == (argv, env)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["/x", "a\nb"], {}, "line break"),
        (["/x", "a\rb"], {}, "line break"),
        (["/x", "bell\x07"], {}, "control character"),
        (["/x"], {"A": "x\ny"}, "line break"),
        (["/x"], {"A": ""}, "empty value"),
        (['C:\\a"b.exe'], {}, "double quote"),
        (["/x", "-ot", "a" * 9000], {}, "8191"),
    ],
)
def test_batch_script_refusals(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        batch_script(argv, env)


def test_windows_exports_refuse_numactl_and_huge_command_lines() -> None:
    with pytest.raises(ExportError, match="numactl"):
        batch_script(["/x"], numactl=["numactl", "-i", "all"])
    with pytest.raises(ExportError, match="numactl"):
        powershell_script(["/x"], numactl=["numactl", "-i", "all"])
    with pytest.raises(ExportError, match="32766"):
        powershell_script(["/x", "-ot", "a" * 33000])


# --- PowerShell ---------------------------------------------------------------------------------

_PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def _ps_string(text: str, i: int) -> tuple[str, int]:
    """Read a single-quoted literal starting at text[i]; see the module docstring."""
    assert text[i] in _PS_QUOTES
    out: list[str] = []
    i += 1
    while True:
        c = text[i]
        if c in _PS_QUOTES:
            if i + 1 < len(text) and text[i + 1] in _PS_QUOTES:
                out.append(text[i + 1])
                i += 2
                continue
            return "".join(out), i + 1
        out.append(c)
        i += 1


def parse_powershell(script: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment a .ps1 from powershell_script() gives the engine."""
    env: dict[str, str] = {}
    i = 0
    while True:
        if script.startswith("$env:", i):
            name_end = script.index(" = ", i)
            name = script[i + 5 : name_end]
            value, i = _ps_string(script, name_end + 3)
            env[name] = value
            assert script[i] == "\n"
            i += 1
        elif script.startswith("& ", i):
            break
        else:
            i = script.index("\n", i) + 1
    i += 2
    argv: list[str] = []
    while True:
        word, i = _ps_string(script, i)
        argv.append(word)
        if script.startswith(" `\n  ", i):
            i += 5
        elif script.startswith(" ", i):
            i += 1
        else:
            assert script[i:] == "\nexit $LASTEXITCODE\n"
            return argv, env


def test_powershell_script_round_trips() -> None:
    argv = _argv(r"C:\Program Files\llama\llama-server.exe")
    env = {k: v for k, v in ENV.items() if v}
    script = powershell_script(argv, env)
    assert "$PSNativeCommandArgumentPassing = 'Standard'" in script
    assert "PSVersion -lt [version]'7.3'" in script  # an empty argument and quotes are present
    assert parse_powershell(script) == (argv, env)
    assert encode_export(ExportFormat.POWERSHELL, script).startswith(b"\xef\xbb\xbf")


def test_powershell_version_guard_only_when_needed() -> None:
    plain = powershell_script(["C:\\x.exe", "-m", "C:\\my models\\x.gguf"])
    assert "7.3" not in plain.replace("PowerShell 7.3+", "")
    for risky in ("", 'a"b', "C:\\my dir\\"):
        assert "PSVersion -lt" in powershell_script(["C:\\x.exe", risky])


@settings(max_examples=300, deadline=None)
@given(args=st.lists(_ARG_TEXT, max_size=6), value=_ARG_TEXT.filter(bool))
def test_powershell_round_trip_property(args: list[str], value: str) -> None:
    argv = ["C:\\x.exe", *args]
    assert parse_powershell(powershell_script(argv, {"V": value})) == (argv, {"V": value})


# --- llama-server router preset -----------------------------------------------------------------

_INI_HEADER = re.compile(r"\[[ \t]*([^\]]+)[ \t]*\][ \t]*(?:[;#].*)?\Z")
_INI_KV = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*=[ \t]*(.*?)[ \t]*(?:[;#].*)?\Z")
_INI_SKIP = re.compile(r"[ \t]*(?:[;#].*)?\Z")


def parse_preset(text: str) -> dict[str, dict[str, str]]:
    """Port of parse_ini_from_file's grammar (common/preset.cpp)."""
    parsed: dict[str, dict[str, str]] = {}
    section = "default"
    for line in re.split(r"\r\n|\n|\r", text):
        if m := _INI_HEADER.match(line):
            section = m.group(1)
            parsed[section] = {}
        elif m := _INI_KV.match(line):
            parsed.setdefault(section, {})[m.group(1)] = m.group(2)
        else:
            assert _INI_SKIP.match(line), f"llama-server cannot parse {line!r}"
    return parsed


def test_router_preset_maps_options_to_keys() -> None:
    argv = [
        "/opt/llama-server", "-m", "/models/模型/Modèle Q4 x.gguf", "-c", "32768",
        "-ngl", "99", "-ot", r"blk\.(3|4)\.ffn_.*_exps=CUDA0", "--override-tensor", "exps=CPU",
        "--jinja", "--no-mmap", "--seed", "-1", "--host", "0.0.0.0", "--port", "8080",
        "-a", "alias", "--chat-template-kwargs", '{"enable_thinking": false}', "-fa=on",
    ]  # fmt: skip
    ini = router_preset_ini(
        "deepseek/V3:Q4", argv, {"CUDA_VISIBLE_DEVICES": "0,1"},
        numactl=["numactl", "--interleave=all"], load_on_startup=True, stop_timeout=30,
    )  # fmt: skip
    parsed = parse_preset(ini)
    assert parsed["default"] == {"version": "1"}
    assert parsed["deepseek/V3:Q4"] == {
        "model": "/models/模型/Modèle Q4 x.gguf",
        "ctx-size": "32768",
        "n-gpu-layers": "99",
        "override-tensor": r"blk\.(3|4)\.ffn_.*_exps=CUDA0,exps=CPU",
        "jinja": "true",
        "no-mmap": "true",
        "seed": "-1",
        "chat-template-kwargs": '{"enable_thinking": false}',
        "flash-attn": "on",
        "load-on-startup": "true",
        "stop-timeout": "30",
    }
    assert "; Left out, the router sets them: --host --port -a" in ini
    assert ";   CUDA_VISIBLE_DEVICES=0,1 numactl --interleave=all /opt/llama-server" in ini


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/x", "-m", "a;b.gguf"], "cannot be written"),
        (["/x", "-m", "a#b.gguf"], "cannot be written"),
        (["/x", "-m", " lead"], "cannot be written"),
        (["/x", "--extra", "a\nb"], "cannot be written"),
        (["/x", "-c", "1", "--ctx-size", "2"], "more than once"),
        (["/x", "-ot", "a=CPU", "-ncmoe", "3"], "comes after -ot"),
        (["/x", "--rpc", "h:1", "-ot", "a=RPC0[h:1]"], "RPC"),
        (["/x", "stray"], "follows no option"),
    ],
)
def test_router_preset_refusals(argv: list[str], message: str) -> None:
    with pytest.raises(ExportError, match=re.escape(message)):
        router_preset_ini("m", argv)


def test_router_preset_keeps_values_that_start_with_a_dash() -> None:
    argv = ["/x", "--log-file", "-x", "-c", "-1", "--jinja", "--alias", "--port", "--special"]
    ini = router_preset_ini("m", argv)
    assert parse_preset(ini)["m"] == {
        "log-file": "-x",
        "ctx-size": "-1",
        "jinja": "true",
        "special": "true",
    }
    assert "x = true" not in ini


def test_router_preset_refuses_an_option_with_two_values() -> None:
    with pytest.raises(ExportError, match="takes 2 values"):
        router_preset_ini("m", ["/x", "--control-vector-layer-range", "1", "5"])


def test_router_preset_accepts_moe_options_before_ot() -> None:
    parsed = parse_preset(router_preset_ini("m", ["/x", "-ncmoe", "3", "-ot", "a=CUDA0"]))
    assert parsed["m"] == {"n-cpu-moe": "3", "override-tensor": "a=CUDA0"}


@pytest.mark.parametrize("model_id", ["", "*", " x", "a]b", "a\nb"])
def test_router_preset_refuses_bad_section_names(model_id: str) -> None:
    with pytest.raises(ExportError, match="preset section"):
        router_preset_ini(model_id, ["/x"])


@settings(max_examples=300, deadline=None)
@given(value=_ARG_TEXT)
def test_router_preset_values_round_trip_or_are_refused(value: str) -> None:
    # --chat-template takes a value whatever it looks like (mainline's argument table).
    argv = ["/x", "--chat-template", value]
    unrepresentable = any(c in value for c in ";#\r\n") or value != value.strip(" \t")
    try:
        ini = router_preset_ini("m", argv)
    except ExportError:
        assert unrepresentable
        return
    assert not unrepresentable
    assert parse_preset(ini)["m"] == {"chat-template": value}


# --- JSON and formats ---------------------------------------------------------------------------


def test_launch_json_round_trips() -> None:
    argv = _argv("/opt/llama-server")
    text = launch_json(argv, ENV, numactl=["numactl", "--interleave=all"])
    assert json.loads(text) == {
        "argv": argv, "env": ENV, "numactl": ["numactl", "--interleave=all"],
    }  # fmt: skip
    assert "模型" in text


def test_export_formats() -> None:
    assert ExportFormat.BASH.suffix == ".sh"
    assert ExportFormat.LLAMA_SWAP.suffix == ".yaml"
    assert ExportFormat.POWERSHELL.encoding == "utf-8-sig"
    assert encode_export(ExportFormat.BATCH, "a\r\n") == b"a\r\n"
