"""Crash-test writer for tests/core/test_fsutil.py: saves two contents in turn, forever.

Usage: ``python fsutil_child.py TARGET CONTENT_A CONTENT_B``. It prints ``ready`` once its
imports are done, then alternates ``atomic_write_text(TARGET, A)`` and ``(TARGET, B)`` until it is
killed. The repository root must be on ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from moe_studio.core.fsutil import atomic_write_text


def main() -> None:
    target = Path(sys.argv[1])
    contents = [Path(name).read_text(encoding="utf-8") for name in sys.argv[2:4]]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    turn = 0
    while True:
        turn ^= 1
        atomic_write_text(target, contents[turn])


if __name__ == "__main__":
    main()
