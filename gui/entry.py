"""The ``moe-studio`` console entry point: a command runs the CLI, anything else opens the GUI."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``moe-studio [MODEL]`` opens the app; ``moe-studio COMMAND …`` runs a headless command."""
    args = list(sys.argv[1:] if argv is None else argv)
    from moe_studio.core.cli import main as cli

    if args and (args[0] in cli.command_names() or args[0] in ("-h", "--help", "--version")):
        return cli.main(args)
    problem = cli.unknown_command(args[0]) if args else None
    if problem is not None:
        print(f"moe-studio: {problem}", file=sys.stderr)
        return 2
    from moe_studio.gui.app import main as app_main

    return app_main(args)


if __name__ == "__main__":
    sys.exit(main())
