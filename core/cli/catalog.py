"""``moe-studio catalog``: the built-in model layouts (``catalog:NAME[@RECIPE]``)."""

from __future__ import annotations

import argparse
import json
import sys

from moe_studio.core.cli.parsing import SubParsers
from moe_studio.core.gguf import catalog


def _cmd_catalog(args: argparse.Namespace) -> int:
    if args.json:
        json.dump(
            [
                {
                    "name": key,
                    "title": e.title,
                    "architecture": e.architecture,
                    "recipes": list(e.recipes),
                }
                for key, e in catalog.CATALOG.items()
            ],
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
        return 0
    for key, entry in catalog.CATALOG.items():
        sys.stdout.write(
            f"catalog:{key:<18} {entry.title:<20} recipes: {', '.join(entry.recipes)}\n"
        )
    return 0


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("catalog", help="list the built-in model layouts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_catalog)
