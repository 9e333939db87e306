"""Listing every tensor of a 9-shard DeepSeek-V3: our reader, PyPI gguf's GGUFReader, the floor.

    python benchmarks/open_model.py            # 5 runs each
    python benchmarks/open_model.py --runs 9

The model is the catalog's DeepSeek-V3 Q4_K_M written as sparse shards (full-size files holding
only their headers, with a tokenizer of the published size), so it costs a few MB of disk. Each
contender lists every tensor with its byte size, page cache warm (one untimed run first):

(a) ours: ``moe_studio.core.gguf.model.open_model`` on the first shard (it finds the others),
    then the tensors;
(b) ``gguf.GGUFReader`` (PyPI gguf) on each shard in turn, ``n_bytes`` of every tensor (it opens
    one file; Q4_K_M is all mainline types, so it can read this layout);
(c) the floor: reading bytes ``0..data_start`` of every shard, nothing parsed.

Targets: ours ≥ 100× faster than GGUFReader, within 10× of the floor, peak memory < 50 MB.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from moe_studio.core.gguf.model import open_model
from moe_studio.core.gguf.reader import read_model
from tests.support.sparse import write_catalog_sparse

ROOT = Path(__file__).resolve().parents[1]

Listing = list[tuple[str, int]]

# Peak memory of one listing, measured in a fresh interpreter: tracemalloc's peak of Python (and
# numpy) allocations, and the growth of the resident set (ru_maxrss, which also counts the mmapped
# pages GGUFReader touches) over an interpreter that only imported the same modules.
_PEAK_SCRIPT = """
import resource, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, {root!r})
which, paths = sys.argv[1], [Path(p) for p in sys.argv[2:]]
if which == "gguf":
    import gguf
else:
    import moe_studio.core.gguf.model
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
if which == "gguf":
    rows = [(t.name, int(t.n_bytes)) for p in paths for t in gguf.GGUFReader(p).tensors]
elif which == "ours":
    rows = [(t.name, t.nbytes) for t in moe_studio.core.gguf.model.open_model(paths[0]).tensors]
peak = tracemalloc.get_traced_memory()[1]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(peak, grown * 1024)
"""


def ours(paths: list[Path]) -> Listing:
    return [(t.name, t.nbytes) for t in open_model(paths[0]).tensors]


def gguf_reader(paths: list[Path]) -> Listing:
    from gguf import GGUFReader

    return [(t.name, int(t.n_bytes)) for p in paths for t in GGUFReader(p).tensors]


def floor(paths: list[Path], data_starts: list[int]) -> int:
    total = 0
    for path, end in zip(paths, data_starts, strict=True):
        with path.open("rb") as f:
            total += len(f.read(end))
    return total


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm the page cache and the imports
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_in_subprocess(which: str, paths: list[Path]) -> tuple[int, int]:
    """(tracemalloc peak, resident-set growth) in bytes, for one listing in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT.format(root=str(ROOT)), which, *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def mb(n: float) -> str:
    return f"{n / 1e6:7.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per contender (≥ 5)")
    args = parser.parse_args()
    runs = max(5, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_catalog_sparse("deepseek-v3", Path(tmp))
        shards = read_model(paths[0]).shards
        data_starts = [s.data_start for s in shards]
        apparent = sum(p.stat().st_size for p in paths)
        header_bytes = sum(data_starts)

        a, b = sorted(ours(paths)), sorted(gguf_reader(paths))
        assert a == b, "the two readers disagree about the tensors"
        print(
            f"DeepSeek-V3 Q4_K_M, {len(paths)} sparse shards: {len(a)} tensors, "
            f"{apparent / 2**30:.1f} GiB apparent, {header_bytes / 1e6:.1f} MB of headers"
        )
        print(f"median of {runs} runs, page cache warm:")
        t_ours = median_seconds(lambda: ours(paths), runs)
        t_gguf = median_seconds(lambda: gguf_reader(paths), runs)
        t_floor = median_seconds(lambda: floor(paths, data_starts), runs)
        print(f"  (a) ours (open_model + tensors)      {t_ours * 1000:9.1f} ms")
        print(f"  (b) gguf.GGUFReader, 9 files         {t_gguf * 1000:9.1f} ms")
        print(f"  (c) floor: read the header bytes     {t_floor * 1000:9.1f} ms")
        print(f"  GGUFReader / ours  {t_gguf / t_ours:8.1f}x   (target ≥ 100x)")
        print(f"  ours / floor       {t_ours / t_floor:8.1f}x   (target ≤ 10x)")

        tracemalloc.start()
        ours(paths)
        our_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ours_sub = peak_in_subprocess("ours", paths)
        gguf_sub = peak_in_subprocess("gguf", paths)
        print("peak memory of one listing:")
        print(f"  ours, tracemalloc in this process      {mb(our_peak)}   (target < 50 MB)")
        for name, (traced, grown) in (("ours", ours_sub), ("GGUFReader", gguf_sub)):
            print(
                f"  {name + ', fresh process:':26} tracemalloc {mb(traced)}, RSS growth {mb(grown)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
