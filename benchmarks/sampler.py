"""Cost of live sampling and of a cold hardware probe; prints the figures.

    python benchmarks/sampler.py               # 60 s of sampling at 2 Hz
    python benchmarks/sampler.py --seconds 10  # shorter

1. Samples GPUs (real NVML where there is a driver) and a stand-in server process tree (a Python
   process with one child) at ``--hz`` for ``--seconds``, and reports the CPU time this process
   spent, as a percentage of one core (target: at most 1 %).
2. Times a cold probe (``probe_hardware`` in a fresh interpreter, import included) three ways:
   with ``/proc/cpuinfo``; without it and with an empty cpuinfo cache (py-cpuinfo runs); and
   without it with the cache filled by the previous run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from moe_studio.core.hardware.sampler import Sampler
from moe_studio.core.units import format_bytes

ROOT = Path(__file__).resolve().parent.parent

_SERVER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
    "try:\n"
    "    time.sleep(3600)\n"
    "finally:\n"
    "    child.kill()\n"
)

_COLD = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from moe_studio.core.hardware.detect import probe_hardware
t1 = time.perf_counter()
kwargs = {"cpuinfo_cache": Path(sys.argv[1])}
if sys.argv[2] != "-":
    kwargs["proc_root"] = Path(sys.argv[2])
report = probe_hardware(**kwargs)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "probe": t2 - t1, "gpus": len(report.rig.gpus),
                  "flags": len(report.rig.host.cpu_flags)}))
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the stand-in server and its child, by pid."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.kill()
    proc.wait()
    for child in children:
        try:
            child.kill()
            child.wait(5)
        except psutil.NoSuchProcess:
            pass


def bench_sampling(seconds: float, hz: float) -> None:
    server = subprocess.Popen([sys.executable, "-c", _SERVER])
    try:
        time.sleep(0.5)  # let the child start
        durations: list[float] = []
        with Sampler() as sampler:
            first = sampler.sample(server.pid)  # opens NVML: not part of the steady state
            cpu0, wall0 = time.process_time(), time.perf_counter()
            ticks = max(1, round(seconds * hz))
            for i in range(ticks):
                delay = wall0 + i / hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t = time.perf_counter()
                last = sampler.sample(server.pid)
                durations.append(time.perf_counter() - t)
            rest = wall0 + ticks / hz - time.perf_counter()  # measure whole periods
            if rest > 0:
                time.sleep(rest)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        _stop(server)
    share = 100 * cpu / wall
    print(f"Sampling at {hz:g} Hz for {wall:.1f} s ({len(durations)} samples)")
    print(
        f"  GPUs sampled            {len(last.gpus)}"
        + (f"  ({first.gpu_reason})" if first.gpu_reason else "")
    )
    process = last.process
    if process is not None:
        rss = format_bytes(process.rss) if process.rss is not None else "unknown"
        print(f"  process tree            {process.processes} processes, RSS {rss}")
    print(
        f"  CPU time                {cpu * 1000:.1f} ms = {share:.3f} % of one core "
        f"({'within' if share <= 1 else 'OVER'} the 1 % target)"
    )
    print(
        f"  per sample              mean {statistics.mean(durations) * 1e3:.2f} ms, "
        f"p95 {sorted(durations)[int(0.95 * (len(durations) - 1))] * 1e3:.2f} ms, "
        f"max {max(durations) * 1e3:.2f} ms (wall)"
    )


def _cold(cache: Path, proc_root: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _COLD, str(cache), proc_root],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_cold_probe() -> None:
    print("Cold probe (fresh interpreter: import, then probe_hardware)")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        no_proc = Path(tmp) / "proc"  # a /proc without cpuinfo: forces the py-cpuinfo path
        no_proc.mkdir()
        runs = [
            ("/proc/cpuinfo present", "-"),
            ("no /proc/cpuinfo, empty cache", str(no_proc)),
            ("no /proc/cpuinfo, cache warm", str(no_proc)),
        ]
        if not Path("/proc/cpuinfo").exists():
            runs = runs[1:]
        for label, proc_root in runs:
            r = _cold(cache, proc_root)
            print(
                f"  {label:<32} import {r['import'] * 1e3:7.1f} ms"
                f"   probe {r['probe'] * 1e3:7.1f} ms"
                f"   ({r['gpus']:.0f} GPUs, {r['flags']:.0f} flags)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to sample (60)")
    parser.add_argument("--hz", type=float, default=2.0, help="samples per second (2)")
    args = parser.parse_args()
    print(f"{sys.platform}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bench_sampling(args.seconds, args.hz)
    print()
    bench_cold_probe()
    return 0


if __name__ == "__main__":
    sys.exit(main())
