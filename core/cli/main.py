"""The headless command line: ``moe-studio <command> …`` (no command opens the GUI, see gui.entry).

Each command lives in its own module of this package, which registers itself through an
``add_parser(subparsers)`` function that sets ``func`` (a callable taking the parsed arguments and
returning the exit code). Only the module of the command being run is imported: ``inspect`` does
not pay for the launcher, the log parser or the exporters. Errors end as one line on stderr and a
non-zero exit code, never a traceback (set ``MOE_STUDIO_DEBUG=1`` to see one for an unexpected
failure).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from moe_studio.core import __version__
from moe_studio.core.cli.parsing import EXIT_ERROR, EXIT_INTERNAL, EXIT_USAGE, Parser, SubParsers
from moe_studio.core.errors import MoeStudioError

# Command → module in this package; the order is the order of `moe-studio --help`.
COMMANDS: dict[str, str] = {
    "inspect": "inspect",
    "compare": "compare",
    "catalog": "catalog",
    "hw": "hw",
    "plan": "plan",
    "export": "export",
    "launch": "launch",
    "tune": "tune",
}


def command_names() -> set[str]:
    return set(COMMANDS)


def unknown_command(word: str) -> str | None:
    """The one-line error for a first argument that looks like a mistyped command, else None.

    A word that is no command, no existing path and has neither a folder separator nor a file
    extension cannot be a model to open, so the GUI must not start for it.
    """
    if word in COMMANDS or word.startswith("-") or not word:
        return None
    if "/" in word or os.sep in word or "." in word or os.path.exists(word):
        return None
    close = difflib.get_close_matches(word, sorted(COMMANDS), n=1, cutoff=0.6)
    if close:
        return f"unknown command {word!r}; did you mean {close[0]!r}?"
    return f"unknown command {word!r}; the commands are {', '.join(sorted(COMMANDS))}"


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named by ``argv`` (its first word that is not an option), if it is one of ours.

    The top-level options (``-h``, ``-v``, ``--version``) take no value, so the first plain word
    is the command.
    """
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported (the others are
    registered by name, enough for argparse to route and to list the choices)."""
    parser = Parser(
        prog="moe-studio",
        description="Plan, launch and monitor Mixture-of-Experts models on ik_llama.cpp and "
        "llama.cpp. Without a command, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"moe-studio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub: SubParsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"{__package__}.{module}").add_parser(sub)
        else:
            sub.add_parser(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one CLI command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        sys.stdout.flush()
        return code
    except MoeStudioError as exc:
        sys.stderr.write(f"moe-studio: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `moe-studio inspect … | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("MOE_STUDIO_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.write(
            f"moe-studio: internal error: {type(exc).__name__}: {exc} "
            "(set MOE_STUDIO_DEBUG=1 for details; please report it)\n"
        )
        return EXIT_INTERNAL
