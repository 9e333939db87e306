"""How one model (one quant of a repository) lands on a rig: the rows of a comparison table.

:func:`compare_repo` lists a Hugging Face repository, reads every quant's headers remotely and
places each; ``moe-studio compare`` prints it and the GUI's "Open from Hugging Face…" shows it.
:func:`place_on_rig` auto-places a model as ``moe-studio plan`` does (the advisor's batch first,
then auto-place) and reports GPU and RAM use, whether everything fits, the share of routed-expert
bytes on GPUs, and whether the chosen engine can load every tensor type at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_studio.core.errors import Cancelled, RemoteError
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.reader import IsCancelled, Progress
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME, DeviceKind, Rig
from moe_studio.core.plan.placement import initial_plan
from moe_studio.core.plan.planning import Planner, unsupported_types
from moe_studio.core.plan.settings import Dialect, Settings
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import RangeClient
from moe_studio.core.remote.hub import RepoListing, hub_client, list_repo
from moe_studio.core.remote.quants import (
    Quant,
    download_command,
    group_quants,
    local_path,
    quant_url,
    read_quants,
)
from moe_studio.core.remote.urls import hub_endpoint

ENGINE_NAMES = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}


@dataclass(frozen=True, slots=True)
class Placement:
    """One model on one rig after auto-place."""

    gpu_bytes: int  # weights + KV + compute + overhead on every GPU-like device
    gpu_capacity: int
    ram_bytes: int
    ram_capacity: int
    fits: bool
    expert_gpu_share: float  # routed-expert bytes on GPU-like devices / all routed-expert bytes
    loadable: bool
    load_problem: str  # "" when loadable, else "IQ2_KS is ik-only"

    @property
    def engine_text(self) -> str:
        return "yes" if self.loadable else f"no: {self.load_problem}"


def load_problem(layout: ModelLayout, dialect: Dialect) -> str:
    """Why ``dialect``'s engine cannot load ``layout``'s tensors, short ("" when it can): the
    table's form of :func:`~moe_studio.core.plan.planning.engine_type_problem`."""
    missing = list(unsupported_types(layout, dialect))  # most used first
    if not missing:
        return ""
    own = "ik-only" if dialect == "mainline" else "mainline-only"
    more = f" (+{len(missing) - 2} more)" if len(missing) > 2 else ""
    return ", ".join(f"{name} is {own}" for name in missing[:2]) + more


def place_on_rig(layout: ModelLayout, rig: Rig, settings: Settings) -> Placement:
    """Auto-place ``layout`` on ``rig`` and measure the result."""
    planner = Planner(layout, rig, settings)
    plan = initial_plan(layout)
    planner.update(settings=planner.advise_batch(plan))
    plan = planner.auto_place(plan).plan
    _, est = planner.estimate(plan)
    gpus = [d for d in est.devices if d.kind is not DeviceKind.CPU]
    experts_total = experts_gpu = 0
    for i, t in enumerate(layout.tensors):
        if t.loaded and t.group in ROUTED_EXPERT_GROUPS:
            experts_total += t.nbytes
            if plan.devices[i] != CPU_NAME:
                experts_gpu += t.nbytes
    problem = load_problem(layout, planner.settings.dialect)
    return Placement(
        gpu_bytes=sum(d.total for d in gpus),
        gpu_capacity=sum(d.usable for d in gpus),
        ram_bytes=est.host.total,
        ram_capacity=est.host.usable,
        fits=est.fits,
        expert_gpu_share=experts_gpu / experts_total if experts_total else 0.0,
        loadable=not problem,
        load_problem=problem,
    )


@dataclass(frozen=True, slots=True)
class QuantRow:
    """One quant of a repository compared on a rig (``placement`` is None when unread)."""

    quant: Quant
    url: str  # hf://… of its first shard
    download: str  # the hf download command of its files alone
    local_path: str  # its first shard once downloaded
    layout: ModelLayout | None = None
    placement: Placement | None = None
    error: str = ""

    @property
    def usable(self) -> bool:
        """Fits the rig and loads on the engine."""
        return self.placement is not None and self.placement.fits and self.placement.loadable


@dataclass(frozen=True, slots=True)
class RepoComparison:
    listing: RepoListing
    settings: Settings
    rig: Rig
    rows: tuple[QuantRow, ...]

    @property
    def best(self) -> QuantRow | None:
        """The largest quant that fits and loads (rows are largest first)."""
        return next((r for r in self.rows if r.usable), None)


def compare_repo(
    repo: str,
    rig: Rig,
    settings: Settings,
    *,
    revision: str = "main",
    client: RangeClient | None = None,
    cache: HeaderCache | None = None,
    progress: Progress | None = None,
    cancelled: IsCancelled | None = None,
) -> RepoComparison:
    """List ``repo``, read every quant's headers remotely and place each on ``rig``.

    Raises:
        RemoteError: the repository cannot be listed, has no GGUF files, or no quant could be
            read (the first one's reason).
        Cancelled: ``cancelled()`` returned true.
    """
    listing = list_repo(repo, revision)
    quants = group_quants(listing.gguf_files())
    page = f"{hub_endpoint()}/{repo}"
    if not quants:
        raise RemoteError(page, f"{repo} has no GGUF files; nothing to compare.")
    results = read_quants(
        listing,
        quants,
        client=client or hub_client(),
        cache=cache if cache is not None else HeaderCache(),
        progress=progress,
        cancelled=cancelled,
    )
    if all(r.layout is None for r in results):
        raise RemoteError(page, f"No quant of {repo} could be read; the first: {results[0].error}")
    rows = []
    for r in results:
        if cancelled and cancelled():
            raise Cancelled
        rows.append(
            QuantRow(
                quant=r.quant,
                url=quant_url(listing, r.quant),
                download=download_command(repo, r.quant, quants, listing.revision),
                local_path=local_path(repo, r.quant),
                layout=r.layout,
                placement=None if r.layout is None else place_on_rig(r.layout, rig, settings),
                error=r.error,
            )
        )
    return RepoComparison(listing, settings, rig, tuple(rows))
