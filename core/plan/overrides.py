"""Tensor overrides: resolve ``-ot`` rules the way the engines do, and generate the shortest rules.

Resolution (engines.md §1.2, §4): rules are tried in order with ``regex_search`` (a match anywhere
in the full tensor name) and the first match wins; otherwise the tensor goes to its layer's
default device (``-ngl``/``-dev``/``-ts``), ``token_embd`` always stays on the host and the output
layer is offloaded only with ``ngl > n_layer``. ik appends its ``--n-cpu-moe`` rules after the
user's and takes the *last* N MoE layers; mainline inserts them at their argv position and takes
layers 0..N−1. ik with no GPU (or ``-ngl 0``) drops every override.

Generation is the inverse: from a plan, the shortest ordered rule list that resolves back to it,
with layer numbers compressed into ranges (``blk\\.(1[0-9]|2[0-4])\\.ffn_(up|gate)_exps``) and no
``,`` or ``=`` inside a regex (both engines split the value on them).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from moe_studio.core.errors import CommandError
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.plan.layers import LayerSplit
from moe_studio.core.plan.placement import NOT_LOADED, Plan
from moe_studio.core.plan.settings import Dialect

Rule = tuple[str, str]  # (regex, buffer type)
EXPERT_RULE = "exps"  # what users write: matches ffn_{up,gate,down,gate_up}_exps and _chexps


@dataclass(frozen=True, slots=True)
class Overrides:
    """The placement-relevant part of a command line."""

    rules: tuple[Rule, ...] = ()
    n_cpu_moe: int = 0  # 999 for -cmoe / --cpu-moe
    # mainline: index into ``rules`` where --n-cpu-moe/--cpu-moe was given (argv position)
    n_cpu_moe_at: int = -1


@dataclass(frozen=True, slots=True)
class Resolution:
    """Device per tensor name (loaded tensors only), plus what the engine would say."""

    devices: dict[str, str]
    notes: tuple[str, ...] = field(default=())


def _compile(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], str]]:
    compiled = []
    for pattern, buft in rules:
        try:
            compiled.append((re.compile(pattern), buft))
        except re.error as exc:
            raise CommandError(
                f"The override regex {pattern!r} is not valid: {exc}. Fix the -ot value."
            ) from None
    return compiled


def _ncmoe_rules(
    layout: ModelLayout, n: int, dialect: Dialect, split: LayerSplit, multi_layer_mode: bool
) -> list[Rule]:
    if n <= 0:
        return []
    if dialect == "mainline":
        if n >= 999:
            return [(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps", CPU_NAME)]
        return [(rf"blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps", CPU_NAME) for i in range(n)]
    hp = layout.hparams
    moe = [
        il
        for il in range(hp.n_layer - hp.nextn_layers)
        if f"blk.{il}.ffn_down_exps.weight" in layout.index
    ]
    if not multi_layer_mode or n >= hp.n_layer:
        chosen = list(reversed(moe))[:n]
        return [
            (rf"blk\.{i}\.ffn_(up|down|gate|gate_up)_exps\.(weight|scale)", CPU_NAME)
            for i in chosen
        ]
    # Multi-GPU layer mode: N spread over devices by their share of layers, last layers first
    # (ik src/llama-load-tensors.cpp:280-345).
    devices = list(split.devices)
    counts = [sum(1 for d in split.kv_devices if d == dev) for dev in devices]
    n_layer = hp.n_layer
    want = [c * n / n_layer for c in counts]
    quota = [round(w) for w in want]
    while sum(quota) > n:
        i = max((i for i in range(len(quota)) if quota[i]), key=lambda i: quota[i] - 1 - want[i])
        quota[i] -= 1
    while sum(quota) < n:
        candidates = [i for i in range(len(quota)) if quota[i] < counts[i]]
        if not candidates:
            break
        i = min(candidates, key=lambda i: quota[i] + 1 - want[i])
        quota[i] += 1
    rules = []
    for il in range(n_layer - 1, -1, -1):
        dev = split.kv_devices[il] if il < len(split.kv_devices) else devices[-1]
        if dev in devices and quota[devices.index(dev)] > 0:
            rules.append((rf"blk\.{il}\.(ffn_(up|down|gate|gate_up)_exps\.weight)", CPU_NAME))
            quota[devices.index(dev)] -= 1
    return rules


def effective_rules(
    layout: ModelLayout,
    overrides: Overrides,
    dialect: Dialect,
    split: LayerSplit,
    *,
    graph_mode: bool = False,
) -> list[Rule]:
    """The full ordered rule list the engine ends up with (user rules plus --n-cpu-moe)."""
    rules = list(overrides.rules)
    multi = len(split.devices) > 1 and not graph_mode
    extra = _ncmoe_rules(layout, overrides.n_cpu_moe, dialect, split, multi)
    if dialect == "mainline" and overrides.n_cpu_moe_at >= 0:
        at = min(overrides.n_cpu_moe_at, len(rules))
        return rules[:at] + extra + rules[at:]
    return rules + extra


def resolve(
    layout: ModelLayout,
    overrides: Overrides,
    split: LayerSplit,
    dialect: Dialect,
    *,
    graph_mode: bool = False,
) -> Resolution:
    """Where the engine puts every loaded tensor for these overrides and this layer split."""
    n_layer = layout.n_layer
    notes: list[str] = []
    if not split.devices or (dialect == "ik" and split.ngl == 0):
        if overrides.rules or overrides.n_cpu_moe:
            notes.append(
                "With no GPU or RPC device (or -ngl 0) ik_llama.cpp discards every tensor "
                "override; all tensors stay on the CPU."
                if dialect == "ik"
                else "With no GPU or RPC device every tensor stays on the CPU."
            )
        return Resolution({t.name: CPU_NAME for t in layout.tensors if t.loaded}, tuple(notes))
    compiled = _compile(effective_rules(layout, overrides, dialect, split, graph_mode=graph_mode))
    out: dict[str, str] = {}
    for t in layout.tensors:
        if not t.loaded:
            continue
        for regex, buft in compiled:
            if regex.search(t.name):
                out[t.name] = buft
                break
        else:
            out[t.name] = _default_device(t.name, t.layer, t.group, split, n_layer)
    return Resolution(out, tuple(notes))


def _default_device(
    name: str, layer: int, group: TensorGroup, split: LayerSplit, n_layer: int
) -> str:
    if group is TensorGroup.TOKEN_EMBD:
        return CPU_NAME
    if layer == GLOBAL_LAYER:
        return split.layer_devices[n_layer]
    return split.layer_devices[layer]


# --- generation ----------------------------------------------------------------------------------


def number_regex(values: Iterable[int]) -> str:
    """A regex alternative matching exactly these non-negative integers (as whole numbers
    between ``\\.`` separators): ``{10..24}`` → ``1[0-9]|2[0-4]``."""
    nums = sorted(set(values))
    if not nums:
        raise ValueError("no numbers")
    parts: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.extend(_range_regex(start, prev))
        if n is not None:
            start = prev = n
    return "|".join(parts)


def _range_regex(lo: int, hi: int) -> list[str]:
    """Alternatives for lo..hi inclusive (numbers written without leading zeros)."""
    out: list[str] = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = min(hi, 10**width - 1)
        if a <= b:
            out += _fixed_width(str(a), str(b))
    return out


def _fixed_width(lo: str, hi: str) -> list[str]:
    """Alternatives for the digit strings lo..hi of equal width."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [_digit_class(int(lo), int(hi))]
    if lo[0] == hi[0]:
        return [lo[0] + x for x in _fixed_width(lo[1:], hi[1:])]
    rest = len(lo) - 1
    out: list[str] = []
    first, last = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * rest:
        out += [lo[0] + x for x in _fixed_width(lo[1:], "9" * rest)]
        first += 1
    top_full = hi[1:] == "9" * rest
    middle_last = last if top_full else last - 1
    if first <= middle_last:
        out.append(_digit_class(first, middle_last) + "[0-9]" * rest)
    if not top_full:
        out += [hi[0] + x for x in _fixed_width("0" * rest, hi[1:])]
    return out


def _digit_class(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _alternation(items: Sequence[str]) -> str:
    """``a`` or ``(a|b)`` with a common prefix/suffix factored on ``_`` boundaries."""
    items = sorted(set(items))
    if len(items) == 1:
        return items[0]
    split_items = [s.split("_") for s in items]
    pre: list[str] = []
    while (
        all(len(p) > len(pre) + 1 for p in split_items)
        and len({tuple(p[: len(pre) + 1]) for p in split_items}) == 1
    ):
        pre.append(split_items[0][len(pre)])
    suf: list[str] = []
    while (
        all(len(p) > len(pre) + len(suf) + 1 for p in split_items)
        and len({tuple(p[len(p) - len(suf) - 1 :]) for p in split_items}) == 1
    ):
        suf.insert(0, split_items[0][-len(suf) - 1])
    mids = ["_".join(p[len(pre) : len(p) - len(suf)]) for p in split_items]
    head = "_".join(pre) + ("_" if pre else "")
    tail = ("_" if suf else "") + "_".join(suf)
    return f"{head}({'|'.join(mids)}){tail}"


@dataclass(frozen=True, slots=True)
class _Need:
    layer: int
    stem: str  # name without "blk.N." and suffix
    suffix: str
    device: str


def _stem_suffix(name: str, layer: int) -> tuple[str, str]:
    body = name[len(f"blk.{layer}.") :] if layer != GLOBAL_LAYER else name
    stem, _, suffix = body.rpartition(".")
    return (stem, suffix) if stem else (body, "")


def _rules_for(
    layout: ModelLayout, needs: list[_Need], present: dict[tuple[int, str], set[str]]
) -> list[Rule]:
    """Compress needed (layer, stem, suffix) → device into few specific rules."""
    rules: list[Rule] = []
    by_device: dict[str, list[_Need]] = defaultdict(list)
    for need in needs:
        by_device[need.device].append(need)
    for device, items in by_device.items():
        # Per layer, the set of stem patterns (whole stem when all its suffixes move).
        per_layer: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for n in items:
            per_layer[n.layer][n.stem].add(n.suffix)
        signatures: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for layer, stems in per_layer.items():
            if layer == GLOBAL_LAYER:
                for stem, suffixes in stems.items():
                    every = present[(layer, stem)] <= suffixes
                    tail = r"\." if every else r"\." + _alternation(sorted(suffixes)) + "$"
                    rules.append((f"^{re.escape(stem)}{tail}", device))
                continue
            whole_layer = all(
                present[(layer, stem)] <= stems.get(stem, set())
                for (lyr, stem) in present
                if lyr == layer
            )
            if whole_layer:
                signatures[("",)].append(layer)
                continue
            keys = []
            for stem, suffixes in sorted(stems.items()):
                if present[(layer, stem)] <= suffixes:
                    keys.append(f"{stem}\t")
                else:
                    keys.extend(f"{stem}\t{s}" for s in sorted(suffixes))
            signatures[tuple(keys)].append(layer)
        for sig, layers in signatures.items():
            layer_re = number_regex(layers)
            layer_part = (
                f"blk\\.({layer_re})\\."
                if "|" in layer_re or "[" in layer_re
                else f"blk\\.{layer_re}\\."
            )
            if sig == ("",):
                rules.append((layer_part, device))
                continue
            # Group stems by suffix requirement: whole stems vs stem.suffix.
            whole = [k.split("\t")[0] for k in sig if k.endswith("\t")]
            partial = [k for k in sig if not k.endswith("\t")]
            if whole:
                rules.append((layer_part + _alternation(whole) + r"\.", device))
            by_suffix: dict[str, list[str]] = defaultdict(list)
            for k in partial:
                stem, suffix = k.split("\t")
                by_suffix[suffix].append(stem)
            for suffix, names in by_suffix.items():
                rules.append((layer_part + _alternation(names) + r"\." + re.escape(suffix), device))
    return rules


def generate(
    layout: ModelLayout,
    plan: Plan,
    split: LayerSplit,
    dialect: Dialect,
    *,
    graph_mode: bool = False,
) -> Overrides:
    """The shortest override list we find that resolves to exactly ``plan`` under ``split``."""
    if not split.devices:
        return Overrides()
    present: dict[tuple[int, str], set[str]] = defaultdict(set)
    defaults: list[str] = []
    for t in layout.tensors:
        stem, suffix = _stem_suffix(t.name, t.layer)
        present[(t.layer, stem)].add(suffix)
        defaults.append(_default_device(t.name, t.layer, t.group, split, layout.n_layer))

    def needs(broad_expert: str | None) -> list[_Need]:
        out = []
        for t, want, default in zip(layout.tensors, plan.devices, defaults, strict=True):
            if want == NOT_LOADED:
                continue
            base = broad_expert if (broad_expert and t.group in ROUTED_EXPERT_GROUPS) else default
            if want != base:
                stem, suffix = _stem_suffix(t.name, t.layer)
                out.append(_Need(t.layer, stem, suffix, want))
        return out

    candidates: list[Overrides] = [Overrides(tuple(_rules_for(layout, needs(None), present)))]
    expert_devices = {
        d
        for t, d in zip(layout.tensors, plan.devices, strict=True)
        if t.group in ROUTED_EXPERT_GROUPS and d
    }
    for device in sorted(expert_devices):
        rules = _rules_for(layout, needs(device), present)
        candidates.append(Overrides((*rules, (EXPERT_RULE, device))))
    candidates.extend(_ncmoe_candidates(layout, plan, split, dialect))
    best = min(candidates, key=_cost)
    expected = {t.name: d for t, d in zip(layout.tensors, plan.devices, strict=True) if d}
    for cand in sorted(candidates, key=_cost):
        if resolve(layout, cand, split, dialect, graph_mode=graph_mode).devices == expected:
            return cand
    return best


def _cost(o: Overrides) -> tuple[int, int]:
    """Flags first, then characters (so ``-cmoe`` beats ``--n-cpu-moe 58`` for all layers)."""
    flags = len(o.rules) + (1 if o.n_cpu_moe else 0)
    chars = sum(len(r) + len(b) + 5 for r, b in o.rules)
    if o.n_cpu_moe:
        chars += len("-cmoe") if o.n_cpu_moe >= 999 else len(f"--n-cpu-moe {o.n_cpu_moe}")
    return flags, chars


def _ncmoe_candidates(
    layout: ModelLayout, plan: Plan, split: LayerSplit, dialect: Dialect
) -> list[Overrides]:
    """-cmoe / --n-cpu-moe when they say the same thing as rules would (checked by resolve)."""
    cpu_layers = sorted(
        {
            t.layer
            for t, d in zip(layout.tensors, plan.devices, strict=True)
            if t.group in ROUTED_EXPERT_GROUPS and d == CPU_NAME
        }
    )
    if not cpu_layers:
        return []
    out = [Overrides(n_cpu_moe=len(cpu_layers) if dialect == "ik" else cpu_layers[-1] + 1)]
    if len(cpu_layers) == len(layout.expert_layers):
        out.append(Overrides(n_cpu_moe=999))
    return out
