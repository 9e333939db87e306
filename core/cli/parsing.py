"""What every subcommand module shares: the argparse types and the exit codes."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")
