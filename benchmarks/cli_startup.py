"""Whole-process `moe-studio inspect` of a 9-shard DeepSeek-V3 vs a script that imports only the
reader and does the same work.

    python benchmarks/cli_startup.py            # 9 runs each, interleaved
    python benchmarks/cli_startup.py --runs 15

The model is the catalog's DeepSeek-V3 Q4_K_M written as sparse shards (full-size files holding
only their headers). Both contenders start a fresh interpreter, open the first shard (the others
are found), build the layout and print the per-layer table to /dev/null:

(a) ``moe-studio inspect SHARD`` (the installed console script: argument parsing, the
    subcommand's module, the one-line error handling);
(b) five lines: import ``moe_studio.core.gguf.model`` and ``moe_studio.core.cli.inspect``'s
    printer, open, print.

Target (issue 13): (a) ≤ 1.5 × (b). Medians of interleaved runs, so a busy machine slows both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.support.sparse import write_catalog_sparse

SCRIPT = """
import sys
from moe_studio.core.gguf.model import open_model
from moe_studio.core.cli.inspect import print_inspect
print_inspect(open_model(sys.argv[1]), sys.stdout)
"""


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cli = shutil.which("moe-studio", path=str(Path(sys.executable).parent))
    if cli is None:
        sys.exit("moe-studio is not installed next to this Python; run `make .venv/.installed`")
    with tempfile.TemporaryDirectory() as tmp:
        first = str(write_catalog_sparse("deepseek-v3", Path(tmp))[0])
        contenders = {
            "moe-studio inspect": [cli, "inspect", first],
            "reader-only script": [sys.executable, "-c", SCRIPT, first],
        }
        for argv in contenders.values():  # warm the page cache and the .pyc files
            _time(argv)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.runs):
            for name, argv in contenders.items():
                times[name].append(_time(argv))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:<20} median {medians[name] * 1000:7.1f} ms  (min {min(t) * 1000:.1f} ms)")
    ratio = medians["moe-studio inspect"] / medians["reader-only script"]
    print(f"ratio {ratio:.2f}× (target ≤ 1.5×)")


if __name__ == "__main__":
    main()
