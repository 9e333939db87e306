"""What the tuner may try: performance knobs that leave the model's output alone, and only the
configurations our memory estimate says fit (with a margin for its error).

The knobs (issue 15):

- ``-ub``/``-b``: the advisor's ``-ub`` options that fit (every ``-ub`` choice up to the context
  when it has none, e.g. without a CUDA GPU), ``-b`` as the advisor sets it (at least ``-ub``);
- threads: one per physical core, the physical cores of one NUMA node, half the cores;
- routed-expert layers per GPU-like device: from what auto-place puts there at that ``-ub`` (the
  compute buffer grows with it) downwards, one device at a time, others at their maximum;
- ``-amb`` for MLA models (ik), ``-sm graph`` vs layer when several CUDA GPUs hold layers (ik);
- the op-offload threshold (ik ``-cuda offload-batch-size=N``) where the advisor says copying
  RAM-resident experts to the GPU does not pay for short prompts: with and without it;
- a ``q8_0`` KV cache only when the caller allows it (it changes the output, a little).

Candidates come baseline first (auto-place + the advisor's ``-b``/``-ub`` and threads, or a given
configuration), then by how many knobs differ from it, so a small budget explores one-knob
changes before combinations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, product

from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import ROUTED_EXPERT_GROUPS
from moe_studio.core.hardware.devices import CPU_NAME, DeviceKind, Rig
from moe_studio.core.plan.advisor import UBATCH_CHOICES
from moe_studio.core.plan.memory import Estimate
from moe_studio.core.plan.placement import Plan, assign, expert_cells
from moe_studio.core.plan.planning import Planner
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import format_bytes

# Kept free on every GPU-like device beyond the estimate (and its reserve): the estimate's own
# error must not turn a trial into an out-of-memory. Compute buffers are the uncertain term (no
# closed form in either engine, engines.md §6), so the margin grows with them.
MARGIN_COMPUTE = 0.25
MARGIN_FRACTION = 0.01
AMB_CHOICES = (512, 1024)  # besides the engine default (256)
LAYER_STEPS = 4  # expert-layer counts tried per device below its maximum (plus 0 and half)


@dataclass(frozen=True, slots=True)
class Knobs:
    """One configuration of the knobs (what a trial changes; everything else is the plan's).

    Attributes:
        expert_layers: Whole routed-expert layers per GPU-like device, in rig order.
        amb: ik ``-amb`` MiB (None: the engine's default).
        cache: K and V cache type (None: as planned).
        offload_batch: ik ``-cuda offload-batch-size`` (None: the engine's threshold).
    """

    ubatch: int
    batch: int
    threads: int | None
    expert_layers: tuple[tuple[str, int], ...] = ()
    amb: int | None = None
    split_graph: bool = False
    cache: str | None = None
    offload_batch: int | None = None

    @property
    def key(self) -> str:
        """A stable text naming the configuration (journal key)."""
        layers = ",".join(f"{d}:{n}" for d, n in self.expert_layers) or "-"
        return (
            f"ub={self.ubatch} b={self.batch} t={self.threads or '-'} L={layers} "
            f"amb={self.amb or '-'} sm={'graph' if self.split_graph else 'layer'} "
            f"ctk={self.cache or '-'}" + (f" ob={self.offload_batch}" if self.offload_batch else "")
        )

    @property
    def load_key(self) -> tuple[object, ...]:
        """What needs a model (re)load: llama-bench keeps the model across tests that differ
        only in context parameters (``-ub``, ``-b``, ``-t``, ``-amb``, cache types)."""
        return (self.expert_layers, self.split_graph)

    def label(self) -> str:
        """Short text for tables: ``-ub 1024 -t 8, experts 12@CUDA0``."""
        parts = [f"-ub {self.ubatch}"]
        if self.batch != self.ubatch:
            parts[0] += f" -b {self.batch}"
        if self.threads:
            parts.append(f"-t {self.threads}")
        if self.amb:
            parts.append(f"-amb {self.amb}")
        if self.split_graph:
            parts.append("-sm graph")
        if self.cache:
            parts.append(f"cache {self.cache}")
        if self.offload_batch:
            parts.append(f"offload ≥{self.offload_batch}")
        layers = " ".join(f"{n}@{_short(d)}" for d, n in self.expert_layers)
        return ", ".join([" ".join(parts), f"experts {layers}"] if layers else [" ".join(parts)])

    def differences(self, other: Knobs) -> int:
        """How many knobs differ (``-ub`` and ``-b`` count as one)."""
        pairs = (
            (self.ubatch, other.ubatch),
            (self.threads, other.threads),
            (self.expert_layers, other.expert_layers),
            (self.amb, other.amb),
            (self.split_graph, other.split_graph),
            (self.cache, other.cache),
            (self.offload_batch, other.offload_batch),
        )
        return sum(a != b for a, b in pairs)

    def to_json(self) -> dict[str, object]:
        return {
            "ubatch": self.ubatch,
            "batch": self.batch,
            "threads": self.threads,
            "expert_layers": [[d, n] for d, n in self.expert_layers],
            "amb": self.amb,
            "split_graph": self.split_graph,
            "cache": self.cache,
            "offload_batch": self.offload_batch,
        }

    @classmethod
    def from_json(cls, obj: object) -> Knobs | None:
        """Knobs from :meth:`to_json` output, or None when ``obj`` is not that."""
        if not isinstance(obj, dict):
            return None
        try:
            layers = tuple((str(d), int(n)) for d, n in obj.get("expert_layers") or ())
            threads = obj.get("threads")
            amb = obj.get("amb")
            cache = obj.get("cache")
            offload = obj.get("offload_batch")
            return cls(
                ubatch=int(obj["ubatch"]),
                batch=int(obj["batch"]),
                threads=int(threads) if isinstance(threads, int) else None,
                expert_layers=layers,
                amb=int(amb) if isinstance(amb, int) else None,
                split_graph=bool(obj.get("split_graph")),
                cache=cache if isinstance(cache, str) else None,
                offload_batch=int(offload) if isinstance(offload, int) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


def _short(device: str) -> str:
    """``RPC0[10.0.0.2:50052]`` → ``RPC0``."""
    return device.split("[", 1)[0]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A configuration ready to measure: its knobs, plan and settings, and the estimate."""

    knobs: Knobs
    plan: Plan
    settings: Settings
    estimate: Estimate


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """The candidates (baseline first) and the configurations left out because they do not fit."""

    baseline: Candidate
    candidates: tuple[Candidate, ...]
    skipped: tuple[tuple[Knobs, str], ...] = ()
    notes: tuple[str, ...] = field(default=())

    def find(self, key: str) -> Candidate | None:
        return next((c for c in self.candidates if c.knobs.key == key), None)


def expert_layer_counts(layout: ModelLayout, plan: Plan) -> Counter[str]:
    """Whole routed-expert layers per device (a layer split over devices counts nowhere)."""
    per_layer: dict[int, set[str]] = {}
    for (layer, group), indices in layout.cells.items():
        if group not in ROUTED_EXPERT_GROUPS:
            continue
        where = per_layer.setdefault(layer, set())
        where.update(plan.devices[i] for i in indices if plan.devices[i])
    return Counter(next(iter(d)) for d in per_layer.values() if len(d) == 1)


def _device_expert_layers(layout: ModelLayout, plan: Plan, device: str) -> list[int]:
    """Layers whose routed experts all sit on ``device``, in layer order."""
    out = []
    for layer in layout.expert_layers:
        devices = {
            plan.devices[i]
            for c in expert_cells(layout, layer, layer)
            for i in layout.cells[c]
            if plan.devices[i]
        }
        if devices == {device}:
            out.append(layer)
    return out


def with_expert_layers(layout: ModelLayout, plan: Plan, device: str, count: int) -> Plan:
    """``plan`` with only ``count`` of ``device``'s whole expert layers left there; the others'
    experts go to the CPU (the last placed first), pins untouched."""
    layers = _device_expert_layers(layout, plan, device)
    if count >= len(layers):
        return plan
    # Pinned layers stay where the user put them: drop free ones first.
    free = [il for il in layers if not any(c in plan.pinned for c in expert_cells(layout, il, il))]
    drop = list(reversed(free))[: len(layers) - count]
    for layer in drop:
        plan = assign(layout, plan, expert_cells(layout, layer, layer), CPU_NAME, pin=False).after
    return plan


def layer_counts(maximum: int, steps: int = LAYER_STEPS) -> list[int]:
    """Expert-layer counts to try on one device: the maximum, a few below, half, none."""
    values = {maximum - k for k in range(steps + 1)} | {maximum // 2, 0}
    return sorted((v for v in values if 0 <= v <= maximum), reverse=True)


def thread_choices(rig: Rig) -> list[int]:
    """One thread per physical core, the cores of one NUMA node, half the cores."""
    host = rig.host
    physical = host.cores_physical or host.cores_logical or 1
    out = [physical]
    nodes = host.numa_nodes
    if len(nodes) > 1:
        logical = host.cores_logical or sum(len(n.cpus) for n in nodes)
        smt = max(1, round(logical / physical))
        out += [max(1, len(n.cpus) // smt) for n in nodes]
    if physical >= 2:
        out.append(physical // 2)
    return list(dict.fromkeys(out))


def margin_bytes(compute: int, usable: int) -> int:
    """What a GPU-like device must keep free beyond the estimate."""
    return int(compute * MARGIN_COMPUTE + usable * MARGIN_FRACTION)


def fits_with_margin(estimate: Estimate) -> str:
    """ "" when every device fits with the margin, else why not (one sentence).

    The margin grows with the compute buffer, the estimate's least certain term; the reserve
    the settings keep free on every GPU-like device counts towards it.
    """
    for d in estimate.devices:
        if d.kind is DeviceKind.CPU:
            if not d.fits:
                return f"host RAM would be {format_bytes(d.overflow)} over."
            continue
        if not d.fits:
            return f"{_short(d.name)} would be {format_bytes(d.overflow)} over its usable memory."
        # The reserve auto-place keeps free counts towards the margin.
        margin = margin_bytes(d.compute, d.usable)
        if d.free + d.reserve < margin:
            short = margin - d.free - d.reserve
            return (
                f"{_short(d.name)} would have {format_bytes(max(0, d.free + d.reserve))} free, "
                f"{format_bytes(short)} less than the {format_bytes(margin)} margin."
            )
    return ""


def no_larger(estimate: Estimate, reference: Estimate) -> bool:
    """Whether ``estimate`` needs no more memory than ``reference`` on any device."""
    totals = {d.name: d.total for d in reference.devices}
    return all(d.total <= totals.get(d.name, -1) for d in estimate.devices)


def baseline_settings(planner: Planner, plan: Plan) -> Settings:
    """The advisor's ``-b``/``-ub`` and threads on top of the planner's settings."""
    settings = planner.advise_batch(plan)
    if settings.threads is None:
        advice = Planner(planner.layout, planner.rig, settings).result(plan).advice
        if advice is not None and advice.threads:
            settings = settings.with_(threads=advice.threads)
    return settings


def _advised_offload_batch(planner: Planner, plan: Plan) -> int | None:
    """The ik op-offload threshold the advisor suggests for ``plan`` (None: none)."""
    advice = planner.result(plan).advice
    args = list(advice.extra_args) if advice is not None else []
    for flag, value in pairwise(args):
        if flag == "-cuda" and value.startswith("offload-batch-size="):
            return int(value.split("=", 1)[1])
    return None


def _ubatch_choices(planner: Planner, plan: Plan, settings: Settings) -> list[int]:
    lean = planner.auto_place(plan, experts=False).plan
    advice = Planner(planner.layout, planner.rig, settings).result(lean).advice
    options = [o.ubatch for o in advice.options if o.fits] if advice else []
    if not options:
        options = [u for u in UBATCH_CHOICES if u <= max(settings.ctx, 512)]
    return sorted({*options, settings.ubatch})


def build_space(
    planner: Planner,
    plan: Plan,
    *,
    baseline: tuple[Plan, Settings] | None = None,
    ubatches: Sequence[int] | None = None,
    threads: Sequence[int] | None = None,
    allow_cache: bool = False,
    layer_steps: int = LAYER_STEPS,
) -> SearchSpace:
    """Every configuration to try, baseline first, and those left out for memory.

    Args:
        planner: The model, rig and settings (context, dialect, flash attention … stay as they
            are; the tuner changes only the knobs).
        plan: The starting plan: its pins are kept, its free cells auto-placed per ``-ub``.
        baseline: The configuration to beat (default: auto-place + the advisor's choices).
        ubatches, threads: Replace the default choices.
        allow_cache: Also try a q8_0 KV cache (changes the output slightly).
    """
    layout, rig = planner.layout, planner.rig
    if baseline is None:
        base_settings = baseline_settings(planner, plan)
        base_plan = Planner(layout, rig, base_settings).auto_place(plan).plan
    else:
        base_plan, base_settings = baseline
    gpu_like = [d.name for d in rig.devices]
    counts = expert_layer_counts(layout, base_plan)
    base_knobs = Knobs(
        ubatch=base_settings.ubatch,
        batch=base_settings.batch,
        threads=base_settings.threads,
        expert_layers=tuple((d, counts[d]) for d in gpu_like),
        amb=base_settings.amb,
        split_graph=base_settings.split_mode_graph,
        cache=None,
    )
    notes: list[str] = []
    ub_list = sorted(set(ubatches)) if ubatches else _ubatch_choices(planner, plan, base_settings)
    t_list = list(dict.fromkeys(threads)) if threads else thread_choices(rig)
    if base_settings.threads and base_settings.threads not in t_list:
        t_list.insert(0, base_settings.threads)
    hp = layout.hparams
    amb_list: list[int | None] = [base_settings.amb]
    if base_settings.is_ik and hp.is_mla:
        amb_list += [a for a in AMB_CHOICES if a != base_settings.amb]
    sm_list = [base_settings.split_mode_graph]
    cuda_layers = {d for d in planner.estimate(base_plan)[0].layer_devices if d.startswith("CUDA")}
    if base_settings.is_ik and len(cuda_layers) >= 2:
        sm_list.append(not base_settings.split_mode_graph)
    offload_list: list[int | None] = [None]
    advised = _advised_offload_batch(Planner(layout, rig, base_settings), base_plan)
    if advised and not any(a.startswith("offload-batch-size") for a in base_settings.extra_args):
        offload_list.append(advised)
    cache_list: list[str | None] = [None]
    if allow_cache and base_settings.flash_attn and base_settings.cache_type_k != "q8_0":
        cache_list.append("q8_0")
    elif allow_cache:
        notes.append("A q8_0 cache is tried only with flash attention on and an f16 cache.")

    seen: set[str] = set()
    found: list[Candidate] = []
    skipped: list[tuple[Knobs, str]] = []

    base_estimate = Planner(layout, rig, base_settings).estimate(base_plan)[1]

    def consider(knobs: Knobs, candidate_plan: Plan, settings: Settings) -> None:
        if knobs.key in seen:
            return
        seen.add(knobs.key)
        est = Planner(layout, rig, settings).estimate(candidate_plan)[1]
        why = fits_with_margin(est)
        if why and base_estimate.fits and no_larger(est, base_estimate):
            why = ""  # the baseline runs anyway: what needs no more memory is as safe
        if why:
            skipped.append((knobs, why))
        else:
            found.append(Candidate(knobs, candidate_plan, settings, est))

    base_run = base_settings
    consider(base_knobs, base_plan, base_run)
    for ub, cache in product(ub_list, cache_list):
        settings = base_run.with_(ubatch=ub, batch=max(ub, base_run.batch))
        if cache:
            settings = settings.with_(cache_type_k=cache, cache_type_v=cache)
        top_plan = Planner(layout, rig, settings).auto_place(plan).plan
        top = expert_layer_counts(layout, top_plan)
        vectors: list[tuple[tuple[str, int], ...]] = [tuple((d, top[d]) for d in gpu_like)]
        for i, device in enumerate(gpu_like):
            for n in layer_counts(top[device], layer_steps)[1:]:
                vec = list(vectors[0])
                vec[i] = (device, n)
                vectors.append(tuple(vec))
        for layers, t, amb, sm, ob in product(vectors, t_list, amb_list, sm_list, offload_list):
            candidate_plan = top_plan
            for device, n in layers:
                candidate_plan = with_expert_layers(layout, candidate_plan, device, n)
            # Pinned layers stay: the knobs say what the plan really holds.
            got = expert_layer_counts(layout, candidate_plan)
            real = tuple((device, got[device]) for device, _ in layers)
            knobs = Knobs(ub, settings.batch, t, real, amb, sm, cache, ob)
            run = settings.with_(threads=t, amb=amb, split_mode_graph=sm)
            if ob:
                run = run.with_(extra_args=(*run.extra_args, "-cuda", f"offload-batch-size={ob}"))
            consider(knobs, candidate_plan, run)
    baseline_candidate = next((c for c in found if c.knobs == base_knobs), None)
    if baseline_candidate is None:
        why = dict((k.key, w) for k, w in skipped).get(base_knobs.key, "")
        notes.append(
            "The baseline configuration does not fit with the margin by our estimate "
            f"({why}); it is measured anyway, as the reference."
        )
        est = Planner(layout, rig, base_run).estimate(base_plan)[1]
        baseline_candidate = Candidate(base_knobs, base_plan, base_run, est)
    others = [c for c in found if c is not baseline_candidate]
    order = {id(c): i for i, c in enumerate(others)}
    others.sort(key=lambda c: (c.knobs.differences(base_knobs), order[id(c)]))
    return SearchSpace(
        baseline_candidate, (baseline_candidate, *others), tuple(skipped), tuple(notes)
    )


def describe_skipped(skipped: Iterable[tuple[Knobs, str]], limit: int = 5) -> list[str]:
    """Lines for the configurations left out (the first ``limit``, then a count)."""
    items = list(skipped)
    lines = [f"{k.label()}: {why}" for k, why in items[:limit]]
    if len(items) > limit:
        lines.append(f"… and {len(items) - limit} more")
    return lines
