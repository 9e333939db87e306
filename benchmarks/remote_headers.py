"""Reading the 9-shard DeepSeek-V3 headers remotely: bytes, requests and time against local open.

    python benchmarks/remote_headers.py                 # the stand-in Hub on 127.0.0.1
    python benchmarks/remote_headers.py --latency 50    # with 50 ms added to every answer

Serves the sparse DeepSeek-V3 Q4_K_M layout (a tokenizer of the published size, so the first
header is ~5 MB) from tests/support/hf_server.py and opens it as hf://… (listing + Range reads),
as a plain http URL, from the header cache, and from disk. Goal: ≤ 1.2× the header bytes and
≤ 2 requests per shard.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from moe_studio.core.gguf.model import open_model
from moe_studio.core.gguf.reader import read_header
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.model import open_remote_model
from tests.support.hf_server import HubServer
from tests.support.sparse import write_catalog_sparse


def _timed(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cold(
    hub: HubServer, url: str, caches: Path, shards: list[Path], runs: int
) -> tuple[float, int, int, int]:
    """Median wall time of opening ``url`` with an empty cache; bytes, requests, most per shard."""
    times = []
    for run in range(runs):
        n, b = len(hub.file_requests()), hub.bytes_sent()
        start = time.perf_counter()
        open_remote_model(url, cache=HeaderCache(caches / str(run)))
        times.append(time.perf_counter() - start)
    new = hub.file_requests()[n:]
    most = max(sum(p.name in r.path for r in new) for p in shards)
    return statistics.median(times), hub.bytes_sent() - b, len(new), most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="ms added to every answer")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_catalog_sparse("deepseek-v3", root / "files")
        header_bytes = sum(read_header(p).data_start for p in shards)
        apparent = sum(p.stat().st_size for p in shards)
        local = _timed(lambda: open_model(shards[0]), args.runs)
        with HubServer() as hub:
            hub.behaviour.latency = args.latency / 1000
            hub.add_repo("org/DeepSeek-V3-GGUF", {f"Q4_K_M/{p.name}": p for p in shards})
            hub.add_plain({p.name: p for p in shards})
            os.environ["HF_ENDPOINT"] = hub.url
            spec = f"hf://org/DeepSeek-V3-GGUF/Q4_K_M/{shards[0].name}"
            rows = [
                ("hf:// (cold cache)", *_cold(hub, spec, root / "hf", shards, args.runs)),
                (
                    "plain URL (cold)",
                    *_cold(hub, hub.file_url(shards[0].name), root / "plain", shards, args.runs),
                ),
            ]
            warm_cache = HeaderCache(root / "warm")
            open_remote_model(spec, cache=warm_cache)
            n = len(hub.file_requests())
            warm = _timed(lambda: open_remote_model(spec, cache=warm_cache), args.runs)
            rows.append(("hf:// (cached)", warm, 0, (len(hub.file_requests()) - n) // args.runs, 0))
    print(f"DeepSeek-V3 Q4_K_M, {len(shards)} shards, {apparent / 2**30:.1f} GiB apparent")
    print(f"header bytes (sum of data offsets): {header_bytes:,}")
    print(f"added latency per answer: {args.latency:g} ms; median of {args.runs} runs\n")
    print(f"{'open':<22}{'wall ms':>9}{'bytes read':>14}{'× header':>10}{'requests':>10}"
          f"{'per shard':>11}{'max/shard':>11}{'× local':>9}")  # fmt: skip
    print(f"{'local disk':<22}{local * 1000:>9.1f}{header_bytes:>14,}{1:>10.2f}{'-':>10}{'-':>11}"
          f"{'-':>11}{1:>9.1f}")  # fmt: skip
    for label, wall, sent_bytes, requests, top in rows:
        print(
            f"{label:<22}{wall * 1000:>9.1f}{sent_bytes:>14,}{sent_bytes / header_bytes:>10.2f}"
            f"{requests:>10}{requests / len(shards):>11.2f}{top:>11}{wall / local:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
