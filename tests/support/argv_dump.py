"""Stand-in for llama-server in export tests: records how it was started.

Writes ``{"argv": sys.argv[1:], "env": os.environ}`` as JSON to the file named by the
``ARGV_DUMP_FILE`` environment variable, then exits 0.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    record = {"argv": sys.argv[1:], "env": dict(os.environ)}
    with open(os.environ["ARGV_DUMP_FILE"], "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
