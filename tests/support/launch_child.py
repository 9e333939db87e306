"""A process that launches a server through core.launch and then just keeps reading its output.

Usage: ``launch_child.py SPEC_JSON`` with ``{"argv": [...], "env": {...}, "host": ..., "port": N}``.
It prints the server's pid on its own line once started. The orphan test kills this process with
SIGKILL and checks that the server goes too (parent-death signal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moe_studio.core.engine.launch import LaunchSpec, ServerRun


def main() -> None:
    data = json.loads(sys.argv[1])
    spec = LaunchSpec(
        argv=tuple(data["argv"]), env=data["env"], host=data["host"], port=int(data["port"])
    )
    run = ServerRun(spec, base_env=data.get("base_env"))
    run.start()
    print(run.pid, flush=True)
    while True:
        run.output(0.5)


if __name__ == "__main__":
    main()
