"""Scripts and configs that launch a planned ``llama-server``.

Every export takes the same plain launch spec: ``argv`` (``argv[0]`` is the llama-server
executable), ``env`` (extra environment variables) and an optional ``numactl`` prefix argv. Each
format is written so that the engine receives exactly that argv and environment; a value a format
cannot carry raises :class:`~moe_studio.core.errors.ExportError` naming it, rather than being
mangled.

Formats and the rules they follow:

- **bash** (:func:`bash_script`): POSIX single quotes (:func:`shlex.quote`), which carry newlines
  and any other character except NUL; one option per line with ``\\`` continuations.
- **cmd.exe batch** (:func:`batch_script`): two layers. ``CreateProcess`` hands the program one
  string that it splits with the MSVCRT / ``CommandLineToArgvW`` rules (quotes group, backslashes
  are literal except before a quote, where ``2n`` backslashes + ``"`` give ``n`` and a delimiter,
  ``2n+1`` give ``n`` and a literal quote). cmd.exe reads the line first: ``%`` is doubled (batch
  percent expansion ignores quotes), delayed expansion is switched off so ``!`` is literal, and an
  argument containing ``"`` has every cmd metacharacter, quotes included, escaped with ``^`` so
  cmd's quote tracking cannot be thrown off. Newlines cannot be represented at all.
- **PowerShell** (:func:`powershell_script`): single-quoted strings, where the only escape is a
  doubled quote (PowerShell also treats ``‘ ’ ‚ ‛`` as single quotes, so those are doubled too).
  ``$PSNativeCommandArgumentPassing = 'Standard'`` makes PowerShell 7.3+ pass every argument
  verbatim. Windows PowerShell 5.1 ignores that setting: it drops empty arguments, does not
  escape embedded double quotes and does not double a trailing backslash of an argument it
  quotes; the script refuses to run there when an argument needs any of that. Save the script as
  UTF-8 *with* BOM (:attr:`ExportFormat.encoding`): 5.1 reads BOM-less scripts in the ANSI code
  page.
- **llama-swap** (:func:`llama_swap_model`, :func:`merge_llama_swap_config`): a ``models.<id>``
  entry. llama-swap (``internal/config/commands.go``, ``SanitizeCommand``) first drops every line
  of ``cmd`` whose trimmed text starts with ``#``, turns a trailing ``\\`` into a space, then splits
  with ``github.com/billziss-gh/golib/shlex`` (``Posix`` dialect, or ``Windows`` on Windows), and
  before all that replaces ``${NAME}`` macros in every value of the config. The quoting here keeps
  each line starting and ending with a quote character around newlines inside an argument, and
  never lets ``$`` touch ``{`` outside the ``${PORT}`` macro it adds on purpose. Merging into an
  existing config edits it with ruamel.yaml's round trip, so the user's comments and layout stay.
- **llama-server router preset** (:func:`router_preset_ini`, mainline llama.cpp
  ``--models-preset``): ``[model-id]`` sections of ``key = value`` lines whose keys are option
  names without dashes (``common/preset.cpp``). The format has no quoting: a value ends at ``;``,
  ``#`` or the line end and loses surrounding blanks, so such values are refused. Each option holds
  one value: repeated ``-ot`` are joined with commas (what ``-ot`` itself accepts), any other
  repeated option is refused. Options are re-emitted in llama.cpp's own (alphabetical) order, so
  exports whose meaning depends on order (``-ot`` before ``--cpu-moe``, ``-ot …=RPC…`` with
  ``--rpc``) are refused. Host, port, alias and API key belong to the router and are left out;
  environment variables and ``numactl`` cannot be set per model and go into a comment with the
  router's launch line.
- **JSON** (:func:`launch_json`): ``{"argv": [...], "env": {...}, "numactl": [...]}``.
"""

from __future__ import annotations

import io
import json
import math
import re
import shlex
import string
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml import error as ruamel_error
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString
from ruamel.yaml.tokens import CommentToken

from moe_studio.core.errors import ExportError
from moe_studio.core.plan.engine_options import split_options
from moe_studio.core.plan.settings import Dialect

__all__ = [
    "DEFAULT_HEALTH_CHECK_TIMEOUT",
    "PORT_MACRO",
    "ExportFormat",
    "bash_script",
    "batch_script",
    "encode_export",
    "launch_json",
    "llama_swap_cmd",
    "llama_swap_config",
    "llama_swap_model",
    "merge_llama_swap_config",
    "powershell_script",
    "router_preset_ini",
    "suggest_health_check_timeout",
]


class ExportFormat(StrEnum):
    """The export targets, with the file suffix and encoding each expects."""

    BASH = "sh"
    BATCH = "bat"
    POWERSHELL = "ps1"
    LLAMA_SWAP = "yaml"
    ROUTER_PRESET = "ini"
    JSON = "json"

    @property
    def suffix(self) -> str:
        """File name suffix, with the dot."""
        return f".{self.value}"

    @property
    def executable(self) -> bool:
        """Whether a file of this format is run directly (``./launch.sh``)."""
        return self is ExportFormat.BASH

    @property
    def encoding(self) -> str:
        """Text encoding for the file (PowerShell scripts need a BOM to be read as UTF-8)."""
        return "utf-8-sig" if self is ExportFormat.POWERSHELL else "utf-8"


def encode_export(fmt: ExportFormat, text: str) -> bytes:
    """The bytes to write for ``text`` in format ``fmt`` (no newline translation)."""
    return text.encode(fmt.encoding)


# --- the launch spec ----------------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPTION = re.compile(r"--?[A-Za-z]")


def _spec(
    argv: Sequence[str], env: Mapping[str, str] | None, numactl: Sequence[str]
) -> tuple[list[str], dict[str, str], list[str]]:
    """Check and copy a launch spec."""
    args = list(argv)
    if not args or not args[0]:
        raise ExportError("There is no command to export: the llama-server path is empty.")
    variables = dict(env or {})
    prefix = list(numactl)
    for arg in (*prefix, *args):
        if "\0" in arg:
            raise ExportError(
                f"The argument {arg!r} contains a NUL character, which no command line can carry."
            )
    for name, value in variables.items():
        if not _ENV_NAME.match(name):
            raise ExportError(
                f"{name!r} is not a usable environment variable name; use letters, digits and "
                "underscores, not starting with a digit."
            )
        if "\0" in value:
            raise ExportError(f"The value of {name} contains a NUL character.")
    return args, variables, prefix


def _is_option(token: str) -> bool:
    """Whether ``token`` reads as an option (``-m``, ``--port``) rather than a value (``-1``)."""
    return _OPTION.match(token) is not None


def _option_lines(tokens: Sequence[str], options: Sequence[bool]) -> list[list[str]]:
    """Group rendered ``tokens`` into lines: each option starts a line, its values follow it."""
    lines: list[list[str]] = []
    for token, is_option in zip(tokens, options, strict=True):
        if is_option or not lines:
            lines.append([token])
        else:
            lines[-1].append(token)
    return lines


# --- bash ----------------------------------------------------------------------------------------


def bash_script(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, numactl: Sequence[str] = ()
) -> str:
    """A bash script that ``exec``s the engine with exactly ``argv`` and ``env``.

    Raises:
        ExportError: a NUL character or an unusable environment variable name.
    """
    args, variables, prefix = _spec(argv, env, numactl)
    lines = [
        "#!/usr/bin/env bash",
        "# Launches llama-server as planned in MoE Studio.",
        "set -euo pipefail",
    ]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    head = [*prefix, args[0]]
    # `exec -x` would read -x as an option of exec itself.
    exec_word = "exec -- " if head[0].startswith("-") else "exec "
    command = [exec_word + " ".join(shlex.quote(t) for t in head)]
    rest = args[1:]
    for group in _option_lines([shlex.quote(t) for t in rest], [_is_option(t) for t in rest]):
        command.append("  " + " ".join(group))
    lines.append(" \\\n".join(command))
    return "\n".join(lines) + "\n"


# --- Windows: the MSVCRT rules, cmd.exe and PowerShell -------------------------------------------

# CreateProcess limits the whole command line to 32767 characters, cmd.exe a line to 8191.
_CREATEPROCESS_MAX = 32767
_CMD_LINE_MAX = 8191
_CMD_SAFE = frozenset(string.ascii_letters + string.digits + "_-+.:/\\@=,~#$[]{}'`")
_CMD_META = frozenset('^&|<>()"')


def _msvcrt_quote(arg: str, *, always: bool = False) -> str:
    """Quote one argument for ``CommandLineToArgvW`` / the MSVCRT argv parser."""
    if not always and arg and not any(c in ' \t\n\v"' for c in arg):
        return arg
    out = ['"']
    backslashes = 0
    for c in arg:
        if c == "\\":
            backslashes += 1
            continue
        if c == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + c)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def _windows_command_line(args: Sequence[str]) -> str:
    return " ".join(_msvcrt_quote(a) for a in args)


def _no_numactl(prefix: Sequence[str], what: str) -> None:
    if prefix:
        raise ExportError(
            f"numactl exists only on Linux, so the {what} cannot use the NUMA prefix "
            f"{shlex.join(prefix)}; export a bash script instead."
        )


def _check_windows_length(args: Sequence[str]) -> None:
    length = len(_windows_command_line(args))
    if length >= _CREATEPROCESS_MAX:
        raise ExportError(
            f"The command line is {length} characters long; Windows accepts at most "
            f"{_CREATEPROCESS_MAX - 1}. Shorten the -ot list (merge layer ranges into one regex)."
        )


def _cmd_control_check(text: str, what: str) -> None:
    for c in text:
        if c in "\r\n":
            raise ExportError(
                f"{what} contains a line break, which a .bat file cannot represent; "
                "use the PowerShell script instead."
            )
        if ord(c) < 32 and c != "\t":
            raise ExportError(
                f"{what} contains the control character {c!r}, which a .bat file cannot "
                "represent; use the PowerShell script instead."
            )


def _cmd_caret_escape(text: str) -> str:
    """Escape for cmd.exe outside quotes: ``^`` before metacharacters, ``%`` doubled."""
    return "".join("^" + c if c in _CMD_META else "%%" if c == "%" else c for c in text)


def _batch_arg(arg: str) -> str:
    _cmd_control_check(arg, f"The argument {arg!r}")
    if arg and all(c in _CMD_SAFE for c in arg):
        return arg
    quoted = _msvcrt_quote(arg, always=True)
    if '"' not in arg:
        # A balanced "…" keeps cmd.exe in quote mode over the whole argument, where & | < > ( ) ^
        # are literal; only the percent expansion still has to be defeated.
        return quoted.replace("%", "%%")
    # Escaped quotes would desynchronise cmd.exe's quote tracking: escape everything instead.
    return _cmd_caret_escape(quoted)


def _batch_set(name: str, value: str) -> str:
    _cmd_control_check(value, f"The value of {name}")
    if not value:
        raise ExportError(
            f"{name} is set to an empty value, which Windows cannot hold (setting it empty removes "
            "the variable); remove it or give it a value."
        )
    if '"' not in value:
        return f'set "{name}={value.replace("%", "%%")}"'
    return f"set {name}={_cmd_caret_escape(value)}"


def batch_script(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, numactl: Sequence[str] = ()
) -> str:
    """A cmd.exe ``.bat`` script (CRLF line ends) that runs the engine with ``argv`` and ``env``.

    Non-ASCII text switches the console to UTF-8 (``chcp 65001``) before it is used; write the
    file as UTF-8 without BOM.

    Raises:
        ExportError: a line break or control character in an argument or value, an empty
            environment value, a double quote in the executable path, a ``numactl`` prefix, or a
            command line longer than cmd.exe accepts.
    """
    args, variables, prefix = _spec(argv, env, numactl)
    _no_numactl(prefix, ".bat script")
    exe = args[0]
    _cmd_control_check(exe, "The llama-server path")
    if '"' in exe:
        raise ExportError(f"The llama-server path {exe!r} contains a double quote.")
    _check_windows_length(args)
    lines = ["@echo off", "rem Launches llama-server as planned in MoE Studio."]
    if not all(c.isascii() for c in (*args, *variables.values())):
        # cmd.exe reads each following line in the console code page: make it UTF-8 first.
        lines.append("chcp 65001 >nul")
    lines.append("setlocal EnableExtensions DisableDelayedExpansion")
    lines += [_batch_set(name, value) for name, value in variables.items()]
    rest = args[1:]
    command = ['"' + exe.replace("%", "%%") + '"']
    for group in _option_lines([_batch_arg(t) for t in rest], [_is_option(t) for t in rest]):
        command.append("  " + " ".join(group))
    # "^" at the end of a line continues it; the next line's first character (a space) is
    # taken literally, so it still separates the arguments.
    joined = " ^\r\n".join(command)
    if len(joined) > _CMD_LINE_MAX:
        raise ExportError(
            f"The command is {len(joined)} characters long; cmd.exe accepts at most "
            f"{_CMD_LINE_MAX}. Use the PowerShell script instead."
        )
    lines.append(joined)
    return "\r\n".join(lines) + "\r\n"


_PS_SINGLE_QUOTES = frozenset("'\u2018\u2019\u201a\u201b")


def _ps_quote(text: str) -> str:
    """A PowerShell single-quoted string literal for ``text``."""
    return "'" + "".join(c * 2 if c in _PS_SINGLE_QUOTES else c for c in text) + "'"


def _ps_legacy_unsafe(arg: str) -> bool:
    """Whether Windows PowerShell 5.1 would pass ``arg`` to a program incorrectly."""
    return not arg or '"' in arg or (any(c.isspace() for c in arg) and arg.endswith("\\"))


def powershell_script(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, numactl: Sequence[str] = ()
) -> str:
    """A PowerShell ``.ps1`` script that runs the engine with ``argv`` and ``env``.

    Save it with :attr:`ExportFormat.POWERSHELL` ``.encoding`` (UTF-8 with BOM). Arguments reach
    the engine verbatim on PowerShell 7.3+; on Windows PowerShell 5.1 the script runs only when no
    argument is empty, contains a double quote or ends in a backslash after a blank, and stops with
    a message otherwise.

    Raises:
        ExportError: an empty environment value, a ``numactl`` prefix, or a command line longer
            than Windows accepts.
    """
    args, variables, prefix = _spec(argv, env, numactl)
    _no_numactl(prefix, "PowerShell script")
    _check_windows_length(args)
    for name, value in variables.items():
        if not value:
            raise ExportError(
                f"{name} is set to an empty value, which Windows cannot hold (setting it empty "
                "removes the variable); remove it or give it a value."
            )
    lines = [
        "# Launches llama-server as planned in MoE Studio.",
        "$ErrorActionPreference = 'Stop'",
        "# PowerShell 7.3+ passes every argument verbatim with this setting.",
        "$PSNativeCommandArgumentPassing = 'Standard'",
    ]
    if any(_ps_legacy_unsafe(a) for a in args[1:]):
        lines += [
            "if ($PSVersionTable.PSVersion -lt [version]'7.3') {",
            "    throw 'This script needs PowerShell 7.3 or newer (pwsh): Windows PowerShell 5.1 "
            "would pass an empty argument, a double quote or a trailing backslash incorrectly.'",
            "}",
        ]
    lines += [f"$env:{name} = {_ps_quote(value)}" for name, value in variables.items()]
    rest = args[1:]
    command = ["& " + _ps_quote(args[0])]
    for group in _option_lines([_ps_quote(t) for t in rest], [_is_option(t) for t in rest]):
        command.append("  " + " ".join(group))
    lines.append(" `\n".join(command))
    lines.append("exit $LASTEXITCODE")
    return "\n".join(lines) + "\n"


# --- JSON ----------------------------------------------------------------------------------------


def launch_json(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, numactl: Sequence[str] = ()
) -> str:
    """``{"argv": [...], "env": {...}, "numactl": [...]}`` as indented UTF-8 JSON."""
    args, variables, prefix = _spec(argv, env, numactl)
    document = {"argv": args, "env": variables, "numactl": prefix}
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


# --- llama-swap ----------------------------------------------------------------------------------

PORT_MACRO = "${PORT}"
DEFAULT_HEALTH_CHECK_TIMEOUT = 120
_SWAP_POSIX_SAFE = frozenset(string.ascii_letters + string.digits + "_-+=.,:/@%^")
_SWAP_WINDOWS_SAFE = _SWAP_POSIX_SAFE | frozenset("'\\")


def _swap_posix_quote(arg: str) -> str:
    """Quote for golib ``shlex.Posix`` after llama-swap's line and macro processing."""
    if arg and all(c in _SWAP_POSIX_SAFE for c in arg):
        return arg
    out = ["'"]
    previous = ""
    for c in arg:
        if c == "'":
            out.append("'\\''")
        elif c == "\n":
            # Close the single quotes around the line break and put it in double quotes, so that
            # the line before it ends with '"' (never a continuation backslash) and the line after
            # it starts with '"' (never a '#' comment).
            out.append("'\"\n\"'")
        elif c == "{" and previous == "$":
            out.append("''{")  # never "${": llama-swap would take it for a macro
        else:
            out.append(c)
        previous = c
    out.append("'")
    return "".join(out)


def _swap_windows_quote(arg: str) -> str:
    """Quote for golib ``shlex.Windows`` (llama-swap on Windows)."""
    if "\n" in arg or "\r" in arg:
        raise ExportError(
            f"The argument {arg!r} contains a line break, which llama-swap on Windows cannot pass."
        )
    if arg and all(c in _SWAP_WINDOWS_SAFE for c in arg) and not arg.endswith("\\"):
        return arg
    out = ['"']
    backslashes = 0
    previous = ""
    for c in arg:
        if c == "\\":
            backslashes += 1
            previous = c
            continue
        if c == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        elif c == "{" and previous == "$":
            out.append('"{"')  # close the quotes between "$" and "{": never "${"
        else:
            out.append("\\" * backslashes + c)
        backslashes = 0
        previous = c
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def llama_swap_cmd(
    argv: Sequence[str],
    *,
    numactl: Sequence[str] = (),
    windows: bool = False,
    dialect: Dialect = "ik",
) -> str:
    """The ``cmd`` text of a llama-swap model, with exactly one ``--port ${PORT}``.

    The first ``--port N`` (or ``--port=N``) becomes ``--port ${PORT}`` and any later one is left
    out; without one, ``--port ${PORT}`` is appended. Options and their values are read with the
    engine's own argument table (:mod:`moe_studio.core.plan.engine_options`), so a value that is
    spelled ``--port`` (``--alias --port``) stays a value. One option per line (llama-swap treats
    line breaks as blanks).

    Args:
        argv: The launch argv (``argv[0]`` is llama-server).
        numactl: Optional prefix argv.
        windows: Quote for llama-swap running on Windows (its ``shlex.Windows`` splitter).
        dialect: The engine's dialect, whose option table decides what is a value.

    Raises:
        ExportError: a NUL character, or a line break in an argument when ``windows`` is set.
    """
    args, _, prefix = _spec(argv, None, numactl)
    quote = _swap_windows_quote if windows else _swap_posix_quote
    head = " ".join(quote(t) for t in (*prefix, args[0]))
    tokens: list[str] = []
    options: list[bool] = []
    has_port = False
    for group in split_options(args[1:], dialect):
        option = group[0]
        if option == "--port" or option.startswith("--port="):
            if has_port:
                continue  # llama-swap chooses the port: one --port is all the engine may see
            if "=" in option:
                tokens.append("--port=" + PORT_MACRO)
                options.append(True)
            else:
                tokens += ["--port", PORT_MACRO]
                options += [True, False]
            has_port = True
            continue
        tokens += [quote(t) for t in group]
        options += [_is_option(option)] + [False] * (len(group) - 1)
    if not has_port:
        tokens += ["--port", PORT_MACRO]
        options += [True, False]
    lines = [head] + ["  " + " ".join(group) for group in _option_lines(tokens, options)]
    return "\n".join(lines)


def _proxy_host(argv: Sequence[str], dialect: Dialect) -> str:
    """The address llama-swap should proxy to, from ``--host`` (loopback by default)."""
    host = "127.0.0.1"
    for group in split_options(list(argv[1:]), dialect):
        if group[0] == "--host" and len(group) == 2:
            host = group[1]
        elif group[0].startswith("--host="):
            host = group[0].split("=", 1)[1]
    if host in ("", "0.0.0.0", "::", "[::]") or "," in host or host.endswith(".sock"):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def llama_swap_model(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    numactl: Sequence[str] = (),
    ttl: int = 0,
    windows: bool = False,
    dialect: Dialect = "ik",
) -> dict[str, Any]:
    """One llama-swap ``models.<id>`` entry: cmd, env, proxy, checkEndpoint and ttl.

    Args:
        argv: The launch argv.
        env: Extra environment, written as llama-swap's ``KEY=value`` list.
        numactl: Optional prefix argv.
        ttl: Seconds of inactivity before llama-swap unloads the model; 0 never unloads, -1 uses
            the config's ``globalTTL``.
        windows: Quote ``cmd`` for llama-swap running on Windows.
        dialect: The engine's dialect (see :func:`llama_swap_cmd`).

    Raises:
        ExportError: see :func:`llama_swap_cmd`; an environment value containing ``${`` (which
            llama-swap would expand as a macro and cannot be escaped); a ``ttl`` below -1.
    """
    args, variables, prefix = _spec(argv, env, numactl)
    if ttl < -1:
        raise ExportError(f"A llama-swap ttl of {ttl} is invalid; use 0 (never unload) or more.")
    for name, value in variables.items():
        if "${" in value:
            raise ExportError(
                f"The value of {name} contains '${{', which llama-swap expands as a macro; "
                "it cannot be escaped in an env entry."
            )
    entry: dict[str, Any] = {
        "cmd": llama_swap_cmd(args, numactl=prefix, windows=windows, dialect=dialect)
    }
    if variables:
        entry["env"] = [f"{name}={value}" for name, value in variables.items()]
    entry["proxy"] = f"http://{_proxy_host(args, dialect)}:{PORT_MACRO}"
    entry["checkEndpoint"] = "/health"
    entry["ttl"] = ttl
    return entry


def suggest_health_check_timeout(load_seconds_estimate: float | None) -> int:
    """A llama-swap ``healthCheckTimeout`` for a model that loads in about this many seconds.

    Twice the estimate, never below llama-swap's default of 120 s.
    """
    if load_seconds_estimate is None or not math.isfinite(load_seconds_estimate):
        return DEFAULT_HEALTH_CHECK_TIMEOUT
    return max(DEFAULT_HEALTH_CHECK_TIMEOUT, math.ceil(2 * load_seconds_estimate))


class _SwapDumper(yaml.SafeDumper):
    """Safe YAML without anchors, with block scalars for multi-line strings."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style: str | None = None
    if any(c in data for c in "\x85\u2028\u2029"):
        style = '"'  # explicit escapes; these read as line breaks in some YAML versions
    elif "\n" in data:
        style = "|"  # PyYAML falls back to quotes by itself when a block cannot hold the text
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


class _QuotedKey(str):
    """A mapping key written in double quotes, so no YAML version reads it as a number."""

    __slots__ = ()


def _represent_quoted(dumper: yaml.SafeDumper, data: _QuotedKey) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_SwapDumper.add_representer(str, _represent_str)
_SwapDumper.add_representer(_QuotedKey, _represent_quoted)


def _dump_yaml(document: Any) -> str:
    text: str = yaml.dump(
        document,
        Dumper=_SwapDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )
    return text


def _check_model_id(model_id: str) -> None:
    if not model_id or model_id != model_id.strip():
        raise ExportError(
            f"The model id {model_id!r} is empty or starts or ends with a blank; choose another."
        )
    if "${" in model_id:
        raise ExportError(
            f"The model id {model_id!r} contains '${{', which llama-swap would expand as a macro."
        )
    if any(ord(c) < 32 or c == "\x7f" for c in model_id):
        raise ExportError(f"The model id {model_id!r} contains a control character.")


def merge_llama_swap_config(
    existing: str,
    model_id: str,
    model: Mapping[str, Any],
    *,
    health_check_timeout: int | None = None,
) -> str:
    """Add or replace ``models.<model_id>`` in a llama-swap config text, leaving the rest alone.

    The existing text is edited in place with a round-trip YAML library, so the user's comments,
    key order, quoting, flow and block styles and anchors survive; only the model's entry (and
    ``healthCheckTimeout``) is written anew. ``healthCheckTimeout`` is raised to
    ``health_check_timeout`` when given and larger than the current value (it is global).

    Args:
        existing: The current config text; empty for a new config.
        model_id: The model's id (the key under ``models``).
        model: The entry, usually from :func:`llama_swap_model`.
        health_check_timeout: Seconds llama-swap waits for the model to become healthy.

    Raises:
        ExportError: the existing text is not valid YAML or not a mapping, its ``models`` is not a
            mapping, or the model id cannot be used.
    """
    _check_model_id(model_id)
    if not existing.strip():
        return _new_llama_swap_config(model_id, model, health_check_timeout)
    _check_yaml_shape(existing)
    rt = _round_trip_yaml()
    try:
        document = rt.load(existing)
    except ruamel_error.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown line"
        raise ExportError(
            f"The existing llama-swap config is not valid YAML ({where}: {exc.problem}); "
            "it was left unchanged. Fix it or export to a new file.",
            details=str(exc),
        ) from exc
    except ruamel_error.YAMLError as exc:
        raise ExportError(
            f"The existing llama-swap config is not valid YAML ({exc}); it was left unchanged.",
            details=str(exc),
        ) from exc
    except (RecursionError, ValueError, AttributeError, TypeError) as exc:
        # ruamel.yaml's own failures on hostile text: nesting deeper than Python's stack, an int
        # of over 4,300 digits, and (AttributeError) an anchor on a node it cannot refer to.
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ExportError(
            f"The existing llama-swap config cannot be read ({reason}); it was left unchanged. "
            "Fix it or export to a new file.",
            details=f"{type(exc).__name__}: {exc}",
        ) from None
    if document is None:
        new = _new_llama_swap_config(model_id, model, health_check_timeout)
        if all(not line.strip() or line.lstrip().startswith("#") for line in existing.split("\n")):
            return existing.rstrip("\n") + "\n" + new  # keep a header of comments
        return new
    if not isinstance(document, CommentedMap):
        raise ExportError(
            "The existing llama-swap config is not a mapping of settings (it is "
            f"{_yaml_kind(document)}); it was left unchanged."
        )
    models = document.get("models")
    if models is None:
        models = CommentedMap()
        document["models"] = models
    elif not isinstance(models, CommentedMap):
        raise ExportError(
            "The 'models' key of the existing llama-swap config is not a mapping; "
            "it was left unchanged."
        )
    entry = _round_trip_value(model)
    if model_id in models:
        models[model_id] = entry  # replaced where it is, its key as the user wrote it
    else:
        if models:
            # Comment lines after the last model ("# groups below") stay after the models.
            _move_trailing_comment(models, entry)
        models[DoubleQuotedScalarString(model_id)] = entry
    if health_check_timeout is not None:
        current = document.get("healthCheckTimeout")
        if isinstance(current, int) and not isinstance(current, bool):
            health_check_timeout = max(current, health_check_timeout)
        if "healthCheckTimeout" in document:
            document["healthCheckTimeout"] = health_check_timeout
        else:
            document.insert(0, "healthCheckTimeout", health_check_timeout)
    out = io.StringIO()
    rt.dump(document, out)
    return out.getvalue()


# A llama-swap config is a few kilobytes of shallow mappings. ruamel.yaml's time grows faster than
# the text with flow nesting and with anchors merged into many entries, so text far outside that
# shape is refused before it is parsed (a hostile or corrupted file must not freeze the export).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_FLOW_DEPTH = 64
MAX_ANCHORS = 1000


def _check_yaml_shape(text: str) -> None:
    if len(text) > MAX_CONFIG_BYTES:
        raise ExportError(
            f"The existing llama-swap config is {len(text) / 2**20:.1f} MiB, more than any "
            f"config ({MAX_CONFIG_BYTES // 2**20} MiB at most); it was left unchanged. "
            "Export to a new file."
        )
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_FLOW_DEPTH:
        raise ExportError(
            f"The existing llama-swap config nests brackets {deepest} deep (at most "
            f"{MAX_FLOW_DEPTH} are read); it was left unchanged. Fix it or export to a new file."
        )
    if text.count("&") > MAX_ANCHORS and text.count("*") > MAX_ANCHORS:
        raise ExportError(
            f"The existing llama-swap config has over {MAX_ANCHORS} anchors and aliases; it was "
            "left unchanged. Export to a new file."
        )


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a piece of text"
    if isinstance(value, bool):
        return "a true/false value"
    return "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}"


def _new_llama_swap_config(
    model_id: str, model: Mapping[str, Any], health_check_timeout: int | None
) -> str:
    document: dict[str, Any] = {}
    if health_check_timeout is not None:
        document["healthCheckTimeout"] = health_check_timeout
    document["models"] = {_QuotedKey(model_id): dict(model)}
    return _dump_yaml(document)


def _last_slot(node: Any) -> tuple[Any, Any, int] | None:
    """The deepest last item of ``node``: (container, key, comment slot), ``None`` if empty."""
    found: tuple[Any, Any, int] | None = None
    while isinstance(node, (CommentedMap, CommentedSeq)) and len(node):
        if isinstance(node, CommentedMap):
            key: Any = next(reversed(node))
            found = (node, key, 2)  # a mapping keeps a value's trailing comment in slot 2
        else:
            key = len(node) - 1
            found = (node, key, 0)  # a sequence in slot 0
        node = node[key]
    return found


def _move_trailing_comment(models: CommentedMap, entry: CommentedMap) -> None:
    """Move the comment lines that follow the current last model to the end of ``entry``.

    ruamel.yaml keeps them with the last value before them (its end-of-line comment first,
    then the following lines), so appending a model would put them above it.
    """
    old, new = _last_slot(models), _last_slot(entry)
    if old is None or new is None:
        return
    container, key, slot = old
    comments = container.ca.items.get(key)
    token = comments[slot] if comments and len(comments) > slot else None
    if token is None or "\n" not in token.value:
        return
    end_of_line, below = token.value.split("\n", 1)
    if not below.strip():
        return
    comments[slot] = CommentToken(end_of_line + "\n", token.start_mark) if end_of_line else None
    target, target_key, target_slot = new
    holder = target.ca.items.setdefault(target_key, [None, None, None, None])
    holder[target_slot] = CommentToken("\n" + below, ruamel_error.CommentMark(0))


def _round_trip_yaml() -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 1_000_000  # never fold a long command line
    rt.allow_unicode = True
    return rt


# Characters a YAML block or plain scalar cannot hold as they are (outside YAML's printable set,
# or line breaks that some YAML versions read as such): the value is written double-quoted, with
# escapes.
_NEEDS_ESCAPES = re.compile(
    "[^\x09\x0a\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029]"
)


def _round_trip_value(value: Any) -> Any:
    """``value`` with strings styled as :func:`_represent_str` styles them for PyYAML."""
    if isinstance(value, Mapping):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _round_trip_value(v)
        return out
    if isinstance(value, (list, tuple)):
        return CommentedSeq(_round_trip_value(v) for v in value)
    if isinstance(value, str):
        if _NEEDS_ESCAPES.search(value):
            return DoubleQuotedScalarString(value)
        if "\n" in value and _literal_block_safe(value):
            return LiteralScalarString(value)
    return value


def _literal_block_safe(text: str) -> bool:
    """Whether a ``|`` block holds ``text`` exactly (no tabs or blanks at the edges of lines,
    which block scalars keep but some editors strip, and no leading blank line)."""
    lines = text.split("\n")
    return not text.startswith(("\n", " ")) and all(
        line == line.rstrip(" \t") and "\t" not in line for line in lines
    )


def llama_swap_config(
    model_id: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    numactl: Sequence[str] = (),
    ttl: int = 0,
    load_seconds_estimate: float | None = None,
    health_timeout: int | None = None,
    existing: str = "",
    windows: bool = False,
    dialect: Dialect = "ik",
) -> str:
    """A llama-swap config with this model, new or merged into ``existing``.

    ``healthCheckTimeout`` is ``health_timeout`` when given, else
    :func:`suggest_health_check_timeout` of ``load_seconds_estimate``; see
    :func:`merge_llama_swap_config` for how it combines with an existing value.

    Raises:
        ExportError: see :func:`llama_swap_model` and :func:`merge_llama_swap_config`.
    """
    entry = llama_swap_model(argv, env, numactl=numactl, ttl=ttl, windows=windows, dialect=dialect)
    timeout = health_timeout
    if timeout is None:
        timeout = suggest_health_check_timeout(load_seconds_estimate)
    return merge_llama_swap_config(existing, model_id, entry, health_check_timeout=timeout)


# --- llama-server router preset (mainline llama.cpp) ---------------------------------------------

# Short spellings of mainline options mapped to their long names (common/arg.cpp), so that keys
# read as documented and synonyms are recognised as the same option.
_PRESET_LONG_NAMES = {
    "m": "model",
    "mu": "model-url",
    "hf": "hf-repo",
    "hfr": "hf-repo",
    "md": "model-draft",
    "c": "ctx-size",
    "ngl": "n-gpu-layers",
    "gpu-layers": "n-gpu-layers",
    "ot": "override-tensor",
    "otd": "override-tensor-draft",
    "cmoe": "cpu-moe",
    "ncmoe": "n-cpu-moe",
    "ncffn": "n-cpu-ffn",
    "ts": "tensor-split",
    "sm": "split-mode",
    "mg": "main-gpu",
    "dev": "device",
    "b": "batch-size",
    "ub": "ubatch-size",
    "ctk": "cache-type-k",
    "ctv": "cache-type-v",
    "fa": "flash-attn",
    "t": "threads",
    "tb": "threads-batch",
    "np": "parallel",
    "a": "alias",
    "kvu": "kv-unified",
    "nkvo": "no-kv-offload",
    "lm": "load-mode",
    "fitt": "fit-target",
    "fitc": "fit-ctx",
}
# Set by the router for each model instance (tools/server/server-models.cpp), or router-only.
_PRESET_ROUTER_KEYS = frozenset(
    {
        "host",
        "port",
        "alias",
        "api-key",
        "api-key-file",
        "ssl-key-file",
        "ssl-cert-file",
        "models-dir",
        "models-max",
        "models-preset",
        "models-autoload",
        "no-models-autoload",
    }
)
# Options whose value is a comma-separated list, so repeats can be joined.
_PRESET_LIST_KEYS = frozenset({"override-tensor", "override-tensor-draft"})
# Options that add tensor overrides in front of the -ot ones in llama.cpp's option order.
_PRESET_MOE_KEYS = frozenset({"cpu-moe", "n-cpu-moe", "n-cpu-ffn"})
_INI_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _check_preset_value(option: str, value: str) -> None:
    if any(c in value for c in ";#\r\n") or value != value.strip(" \t"):
        raise ExportError(
            f"The value of {option} ({value!r}) cannot be written to a llama-server preset: the "
            "preset format has no quoting, so ';', '#', line breaks and leading or trailing "
            "blanks are lost. Use the shell script or the llama-swap export instead."
        )


def _check_preset_section(model_id: str) -> None:
    if (
        not model_id
        or model_id != model_id.strip(" \t")
        or any(c in model_id for c in "]\r\n")
        or model_id == "*"
    ):
        raise ExportError(
            f"{model_id!r} cannot name a llama-server preset section: it must not be empty or "
            "'*', start or end with a blank, or contain ']' or a line break."
        )


def _comment_safe(texts: Sequence[str], what: str) -> None:
    for text in texts:
        if "\n" in text or "\r" in text:
            raise ExportError(f"{what} {text!r} contains a line break, which a preset cannot show.")


def router_preset_ini(
    model_id: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    numactl: Sequence[str] = (),
    load_on_startup: bool | None = None,
    stop_timeout: int | None = None,
) -> str:
    """A ``--models-preset`` INI file for llama.cpp's router mode with one ``[model_id]`` section.

    Options become ``long-name = value`` (flags ``= true``); ``argv[0]``, ``--host``, ``--port``,
    ``--alias`` and the API key are left out because the router sets them. Which token is a value
    is read from mainline's argument table (:mod:`moe_studio.core.plan.engine_options`):
    ``--log-file -x`` keeps ``-x`` as the file name; an option missing from the table takes the
    next token unless it looks like an option. The preset is mainline-only: ik_llama.cpp has no
    router.

    Args:
        model_id: Section name: the id clients ask the router for.
        argv: The launch argv.
        env: Environment the router must be started with (a preset cannot set it per model).
        numactl: Prefix the router must be started with.
        load_on_startup: The preset-only ``load-on-startup`` option, when given.
        stop_timeout: The preset-only ``stop-timeout`` option (seconds), when given.

    Raises:
        ExportError: a value or model id the format cannot carry, a repeated option other than
            ``-ot``, or an option order the preset would change.
    """
    args, variables, prefix = _spec(argv, env, numactl)
    _check_preset_section(model_id)

    parsed: list[tuple[str, str, str | None]] = []  # (as written, key, value or None for a flag)
    # The router is mainline's: read options and values with mainline's argument table, so a
    # value that starts with "-" (--log-file -x, -c -1) stays the option's value.
    for group in split_options(args[1:], "mainline"):
        token = group[0]
        if not _is_option(token):
            raise ExportError(
                f"{token!r} follows no option; a llama-server preset holds only options."
            )
        name, eq, inline = token.lstrip("-").partition("=")
        key = _PRESET_LONG_NAMES.get(name, name)
        if not _INI_KEY.match(key):
            raise ExportError(f"The option {token} cannot be written as a preset key.")
        if len(group) > 2:
            raise ExportError(
                f"{token} takes {len(group) - 1} values, but a llama-server preset holds one "
                "value per option. Use the shell script or the llama-swap export instead."
            )
        if eq:
            parsed.append((token.partition("=")[0], key, inline))
        else:
            parsed.append((token, key, group[1] if len(group) == 2 else None))

    dropped = [written for written, key, _ in parsed if key in _PRESET_ROUTER_KEYS]
    parsed = [item for item in parsed if item[1] not in _PRESET_ROUTER_KEYS]

    keys_in_order = [key for _, key, _ in parsed]
    if "override-tensor" in keys_in_order:
        first_ot = keys_in_order.index("override-tensor")
        late_moe = [w for w, k, _ in parsed[first_ot:] if k in _PRESET_MOE_KEYS]
        if late_moe:
            raise ExportError(
                f"{late_moe[0]} comes after -ot here, but a llama-server preset puts it first, "
                "which changes which override wins. Put it before the -ot options, or use the "
                "shell script or llama-swap export."
            )
        ot_values = [v or "" for _, k, v in parsed if k in _PRESET_LIST_KEYS]
        if "rpc" in keys_in_order and any(re.search(r"=\s*RPC", v) for v in ot_values):
            raise ExportError(
                "-ot sends tensors to an RPC device, but a llama-server preset passes -ot before "
                "--rpc, when the RPC devices do not exist yet. Use the shell script or the "
                "llama-swap export."
            )

    values: dict[str, str] = {}
    written_as: dict[str, str] = {}
    for written, key, value in parsed:
        text = "true" if value is None else value
        _check_preset_value(written, text)
        if key in values:
            if key not in _PRESET_LIST_KEYS:
                raise ExportError(
                    f"{written} is given more than once; a llama-server preset holds one value per "
                    "option. Keep one, or use the shell script or llama-swap export."
                )
            if any(not v for v in (values[key], text)):
                raise ExportError(f"{written} is given an empty value.")
            values[key] = f"{values[key]},{text}"
        else:
            values[key] = text
            written_as[key] = written
    if load_on_startup is not None:
        values["load-on-startup"] = "true" if load_on_startup else "false"
    if stop_timeout is not None:
        values["stop-timeout"] = str(int(stop_timeout))

    lines = [
        "; llama-server router preset written by MoE Studio (llama.cpp router mode only).",
        "; Start the router with:",
    ]
    _comment_safe([*variables.values(), *prefix, args[0]], "The router setting")
    launch = [f"{n}={shlex.quote(v)}" for n, v in variables.items()]
    launch += [shlex.quote(t) for t in prefix]
    launch += [shlex.quote(args[0]), "--models-preset", "FILE.ini"]
    lines.append(";   " + " ".join(launch))
    if variables or prefix:
        lines.append("; (a preset cannot set environment variables or a numactl prefix per model)")
    if dropped:
        lines.append(f"; Left out, the router sets them: {' '.join(dropped)}")
    lines += ["version = 1", "", f"[{model_id}]"]
    lines += [f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
