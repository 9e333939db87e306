"""The tuner against the real engine: a tiny MoE model on the CPU plus an rpc-server device.

    MOE_STUDIO_ENGINE=/work/ik/build/bin/llama-server python benchmarks/tune_real.py
    … --budget 4m --objective balanced --depths 0,1024 --layers 8 [--no-rpc]

Writes a tiny qwen3moe GGUF (tests/support/tiny_models.py), starts one ``rpc-server`` on
127.0.0.1 as a second device (the one auto-place fills with routed experts), builds the search
space and runs :func:`moe_studio.core.engine.tune.tune` with ``llama-sweep-bench`` (and
``llama-bench`` when the engine folder has it). Prints every trial, the table, the best against
the auto-place + advisor baseline — both measured in the finals of the same run, at the same
depths — and how many model loads the trials needed. Skips with the reason when
MOE_STUDIO_ENGINE is unset.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="4m", help="time or trials, as moe-studio tune")
    parser.add_argument("--objective", default="balanced", choices=("pp", "tg", "balanced"))
    parser.add_argument("--depths", default="0,1024")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8, help="layers of the tiny model")
    parser.add_argument("--rpc-memory", default="512MiB", help="memory the rpc device offers")
    parser.add_argument("--no-rpc", action="store_true", help="CPU only")
    args = parser.parse_args()

    engine_path = os.environ.get("MOE_STUDIO_ENGINE")
    if not engine_path:
        print("skipped: MOE_STUDIO_ENGINE is not set (point it at ik_llama.cpp's llama-server)")
        return 0

    import psutil

    from moe_studio.core.cli.tune import parse_budget, parse_depths, print_summary, print_table
    from moe_studio.core.engine.discovery import probe_engine
    from moe_studio.core.engine.tune import Trial, TuneOptions, tune
    from moe_studio.core.engine.tune_space import build_space, describe_skipped
    from moe_studio.core.gguf import catalog
    from moe_studio.core.hardware.devices import HostInfo, Rig
    from moe_studio.core.hardware.rpc import rpc_device
    from moe_studio.core.plan.planning import Planner
    from moe_studio.core.plan.settings import Settings
    from moe_studio.core.units import GiB, parse_memory
    from tests.engine.conftest import RpcServers
    from tests.support.tiny_models import write_tiny_model

    engine = probe_engine(engine_path)
    if engine.problem:
        print(f"skipped: {engine.problem}")
        return 0
    seconds, trials = parse_budget(args.budget)
    options = TuneOptions(
        objective=args.objective,  # type: ignore[arg-type]
        depths=parse_depths(args.depths),
        budget_seconds=seconds,
        max_trials=trials,
    )
    print(f"{engine.label} at {engine.path}")
    print(f"tools: {', '.join(sorted(engine.helpers)) or 'none'}")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        model = Path(tmp) / "tiny-qwen3moe.gguf"
        write_tiny_model(model, "qwen3moe", n_layer=args.layers)
        devices = ()
        if not args.no_rpc:
            rpc_bin = Path(engine.path).with_name("rpc-server")
            servers = stack.enter_context(RpcServers(rpc_bin, 1, log_dir=Path(tmp)))
            memory = parse_memory("--rpc-memory", args.rpc_memory)
            devices = (rpc_device(servers.endpoints[0], memory),)
        cores = psutil.cpu_count(logical=False) or 1
        rig = Rig("this machine", HostInfo(8 * GiB, cores_physical=cores), devices)
        layout = catalog.load(str(model))
        planner = Planner(layout, rig, Settings(ctx=args.ctx))
        space = build_space(planner, planner.initial())
        print(
            f"{layout.name}: {args.layers} layers; {len(space.candidates)} configurations fit, "
            f"{len(space.skipped)} left out by the estimate"
        )
        print(f"baseline (auto-place + advisor): {space.baseline.knobs.label()}")
        for line in describe_skipped(space.skipped, limit=3):
            print(f"  left out: {line}")
        count = [0]

        def on_trial(trial: Trial) -> None:
            count[0] += 1
            state = trial.status if trial.status != "ok" else ""
            print(
                f"[{count[0]:3d}] {'final ' if trial.rung else 'screen'} {trial.knobs.label():<42}"
                f" PP {trial.pp or 0:8.1f}  TG {trial.tg or 0:7.1f}  load {trial.load} {state}",
                flush=True,
            )

        t0 = time.monotonic()
        result = tune(space, planner, engine, options, on_trial=on_trial)
        wall = time.monotonic() - t0
    print_table(result, options.objective, sys.stdout)
    print_summary(result, options.objective, sys.stdout)
    print(
        f"\nloads vs trials: {result.loads} model loads for {len(result.measured)} trials "
        f"in {wall:.0f} s (budget {args.budget})"
    )
    if result.best and result.baseline:
        b, a = result.best, result.baseline
        print(
            f"PP {a.pp or 0:.1f} → {b.pp or 0:.1f} t/s, TG {a.tg or 0:.1f} → {b.tg or 0:.1f} t/s "
            f"(baseline → best, finals at depths {args.depths})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
