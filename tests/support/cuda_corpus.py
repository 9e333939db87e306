"""Published real CUDA runs (``tests/data/cuda_corpus``) run through the planner.

Each JSON file is one engine start someone published: the URL, author and date of the post,
the engine and its build as printed, the GPUs, the model (a ``catalog:`` layout standing in for
the user's file, with a note on how it differs), the command, and the sizes the engine printed
per device and term (``kv``, ``compute``, ``weights``; MiB, ``CPU`` for ``CUDA_Host``/``CPU``).
A GPU's ``free_mib``, where the log printed it (mainline: "using device CUDA0 (…) - N MiB
free"), is what the engine split the layers by.
``tolerance_pct`` gives each term's tolerance; ``null`` means reported, not asserted, and
``tolerance_note`` says why (a setting the log does not show, a build older than the model, a
stand-in layout). ``printed_weights_mib`` keeps the per-GPU weight sizes the engine printed: they
pin where the user's tensors went, but are not compared, because the catalog layout that stands
in for the user's file has other quant types. ``expert_types`` (optional) gives the routed
experts' types where the file's name states them (``{"up": "q8_0", "gate": …, "down": …}``):
whether a CUDA build copies RAM experts in, and how much, depends on their type. A point whose
build
:func:`moe_studio.core.plan.compute.describes_build` covers counts towards the corpus targets
(``date`` is the day the log was posted, so the build is at least that old).

Most runs come from the ik_llama.cpp threads archived in the engine's repository
(``github-data/``, issues and discussions up to July 2025); a few from a later copy of that
archive (issues and PRs of October/November 2025, builds 3933-3964). Their URLs point at the
thread.

``tests/core/test_cuda_corpus.py`` asserts the tolerances; ``benchmarks/cuda_corpus.py`` prints
the error distribution per term.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from moe_studio.core.engine.discovery import parse_version
from moe_studio.core.gguf import catalog
from moe_studio.core.gguf.ggml_types import type_by_name
from moe_studio.core.gguf.model import ModelLayout, classify_tensors, hyperparams_from_metadata
from moe_studio.core.gguf.tensors import TensorGroup
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.plan import engine_builds
from moe_studio.core.plan.cmdline import import_command, imported_split
from moe_studio.core.plan.compute import describes_build
from moe_studio.core.plan.memory import estimate
from moe_studio.core.units import GiB, MiB

CORPUS = Path(__file__).resolve().parents[1] / "data" / "cuda_corpus"
TERMS = ("weights", "kv", "compute")
KINDS = ("weights", "kv", "compute GPU", "compute host")

Run = dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One printed figure and ours."""

    run: str
    term: str
    device: str
    reported_mib: float
    ours_mib: float
    tolerance_pct: float | None
    claimed: bool  # the model claims to describe this build

    @property
    def error_pct(self) -> float:
        return (self.ours_mib - self.reported_mib) / self.reported_mib * 100

    @property
    def name(self) -> str:
        return f"{self.run}:{self.term}@{self.device}"

    @property
    def kind(self) -> str:
        """The benchmark's row: weights, KV, compute GPU or compute host."""
        if self.term != "compute":
            return self.term
        return "compute host" if self.device == "CPU" else "compute GPU"


def load_runs() -> list[Run]:
    return [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.json"))]


@cache
def layout_for(model: str, expert_types: tuple[tuple[str, str], ...] = ()) -> ModelLayout:
    """The catalog layout, with the routed experts' types replaced (``expert_types``: pairs of
    ``up``/``gate``/``down`` and a ggml type name)."""
    layout = catalog.load_catalog(model)
    if not expert_types:
        return layout
    groups = {}
    for part, name in expert_types:
        gtype = type_by_name(name)
        assert gtype is not None, f"{name} is not a ggml type"
        groups[TensorGroup(f"exps_{part}")] = gtype
    tensors = []
    for t in layout.tensors:
        gtype = groups.get(t.group)
        tensors.append(
            t if gtype is None else replace(t, type_id=gtype.id, nbytes=gtype.tensor_bytes(t.shape))
        )
    return replace(layout, tensors=tuple(tensors))


def printed_build(text: str) -> int | None:
    """The build in a record's ``build`` field, read as the engine's ``version:`` line is."""
    return parse_version(f"version: {text}")[1]


def build_number(run: Run) -> int | None:
    """The build the run used: the number the engine printed (``"3737 (58f08e43)"`` → 3737)
    when the run's engine could have printed it by the post's date; otherwise one that behaves
    like every build of that engine out that day (in an ik log: a mainline-numbered build, or
    none printed). Mainline numbers its builds the same way (``"5331 (33eff402)"``)."""
    changes = (
        engine_builds.IK_CHANGES
        if run["engine"] == "ik_llama.cpp"
        else engine_builds.MAINLINE_CHANGES
    )
    printed = printed_build(run.get("build", "")) or 0
    if printed and engine_builds.plausible(printed, run["date"], changes):
        return printed
    return engine_builds.newest_by(run["date"], changes)


def points_of(run: Run) -> list[Point]:
    """Import the run's command on its GPUs, estimate, and pair every printed figure with ours."""
    layout = layout_for(run["model"], tuple(sorted(run.get("expert_types", {}).items())))
    gpus = tuple(
        Device(
            g["name"],
            DeviceKind.CUDA,
            g["memory_mib"] * MiB,
            index=i,
            label=g.get("label", ""),
            memory_free=g["free_mib"] * MiB if "free_mib" in g else None,
        )
        for i, g in enumerate(run["gpus"])
    )
    rig = Rig("corpus", HostInfo(ram_total=1024 * GiB), gpus)
    dialect = "ik" if run["engine"] == "ik_llama.cpp" else "mainline"
    build = build_number(run)
    plan, imported, full_rig = import_command(
        run["command"], layout, rig, dialect=dialect, engine_build=build
    )
    settings = imported.settings.with_(engine_build=build)  # plan for the build of the log
    imported = replace(imported, settings=settings)
    split = imported_split(layout, imported, full_rig)
    est = estimate(layout, plan, full_rig, settings, split.kv_devices)
    claimed = describes_build(run["engine"], run["date"], build)
    out = []
    for term in TERMS:
        for device, reported in run["reported"].get(term, {}).items():
            budget = est.device(device)
            assert budget is not None, f"{run['id']}: {device} is not a device of the command"
            ours = getattr(budget, term) / MiB
            tolerance = run["tolerance_pct"].get(term)
            out.append(Point(run["id"], term, device, reported, ours, tolerance, claimed))
    return out


def all_points() -> list[Point]:
    return [p for run in load_runs() for p in points_of(run)]


MLA_DRYRUN = CORPUS.parent / "mla_dryrun.json"


@cache
def attention_layout(model: str = "deepseek-v3") -> ModelLayout:
    """A catalog MLA model (ik flavour, IQ2_KS) cut to 4 layers (1 dense) of 32 experts: the
    models behind ``tests/data/mla_dryrun.json``. Attention keeps its full width."""
    entry = catalog.CATALOG[model]
    _, recipe = catalog.RECIPES["IQ2_KS"]
    assert entry.ik_metadata is not None
    meta = dict(entry.ik_metadata)
    meta |= {
        "deepseek2.block_count": 4,
        "deepseek2.expert_count": 32,
        "deepseek2.leading_dense_block_count": 1,
        "general.file_type_name": "IQ2_KS",
    }
    records = []
    for name, shape in entry.build(meta):
        stem, _, suffix = name.rpartition(".")
        layer = -1
        if stem.startswith("blk."):
            _, num, stem = stem.split(".", 2)
            layer = int(num)
        gtype = catalog._pick_type(name, stem, suffix, shape, recipe, layer, 4)
        records.append((name, shape, gtype.id, gtype.tensor_bytes(shape), 0))
    tensors = classify_tensors(records, 4, 0)
    return ModelLayout(
        source=f"{model}-attention.gguf",
        name=f"{entry.title} attention, 4 layers",
        architecture="deepseek2",
        hparams=hyperparams_from_metadata(meta, tensors),
        tensors=tensors,
        metadata=meta,
        recipe="IQ2_KS",
    )


MLA_3737 = CORPUS.parent / "mla_dryrun_3737.json"


def dryrun_points(model: str | None = None, path: Path = MLA_DRYRUN) -> list[Point]:
    """Every compute and KV figure of ``path`` (``mla_dryrun.json``: the newest build's dry runs;
    ``mla_dryrun_3737.json``: build 3737's loads) of one ``model``, or all, paired with our
    estimate for the build that printed them (RPC devices)."""
    doc = json.loads(path.read_text())
    build = printed_build(doc["build"])
    out = []
    for i, run in enumerate(doc["runs"]):
        if model is not None and run["model"] != model:
            continue
        layout = attention_layout(run["model"])
        rig = Rig("dryrun", HostInfo(ram_total=1024 * GiB), ())
        plan, imported, full_rig = import_command(
            run["command"], layout, rig, dialect="ik", engine_build=build
        )
        full_rig = replace(
            full_rig, devices=tuple(replace(d, memory_total=24 * GiB) for d in full_rig.devices)
        )
        settings = imported.settings.with_(engine_build=build)
        if run.get("printed", {}).get("fused_moe") == 0:
            # the run printed fused_moe = 0 (build 3737 without -fmoe); the planner's own
            # commands fuse from build 3571, so say what this one did
            settings = settings.with_(extra_args=(*settings.extra_args, "-no-fmoe"))
        imported = replace(imported, settings=settings)
        split = imported_split(layout, imported, full_rig)
        est = estimate(layout, plan, full_rig, imported.settings, split.kv_devices)
        for term in ("kv", "compute"):
            for device, reported in run[term].items():
                budget = est.device(device)
                assert budget is not None, f"run {i}: {device} is not a device of the command"
                ours = getattr(budget, term) / MiB
                name = f"{path.stem}:{i}-{run['model']}"
                out.append(Point(name, term, device, reported, ours, None, True))
    return out
