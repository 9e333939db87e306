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
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


# An imported -ot regex is matched against every tensor name (thousands). Python's regex engine,
# like std::regex in the engines, backtracks: a nested quantifier such as (a+)+$ takes time
# exponential in the name's length, and many .* in a row a high power of it. Such patterns are
# refused before they run (no timeout needed): -ot regexes never need them. Repeats with literal
# text between them (.*blk\..*ffn.*exps.*, as users write) cost little and are kept.
MAX_REGEX_LENGTH = 2000
# Repeats that can take many lengths (*, +, {m,n} with n > 1) with no literal character between
# them (.*.*.*.*Q took 1.7 s per 1,000 tensor names; each more multiplies that by a name's length).
MAX_WIDE_REPEATS = 3


def _regex_parse(pattern: str) -> object:
    from re import _parser  # type: ignore[attr-defined]  # the stdlib's own regex parser

    return _parser.parse(pattern)


def _first_literals(branches: Sequence[Any]) -> bool:
    """Whether every alternative starts with its own literal character (no two can both match)."""
    from re import _constants  # type: ignore[attr-defined]

    firsts = []
    for branch in branches:
        items = list(branch)
        if not items or items[0][0] is not _constants.LITERAL:
            return False
        firsts.append(items[0][1])
    return len(set(firsts)) == len(firsts)


def _backtracking_risk(pattern: str) -> str:
    """Why ``pattern`` could backtrack for ever on a tensor name, or "" when it cannot."""
    from re import _constants  # type: ignore[attr-defined]

    repeats = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT)
    wide = 0  # repeats since the last literal character

    def walk(items: Any, in_repeat: bool) -> str:
        nonlocal wide
        for op, av in items:
            if op is _constants.LITERAL:
                wide = 0
            if op in repeats:
                _, high, body = av
                if high > 1:
                    if in_repeat:
                        return "it repeats a part that itself repeats, like (a+)+"
                    wide += 1
                    if wide > MAX_WIDE_REPEATS:
                        return (
                            f"it has more than {MAX_WIDE_REPEATS} repeats (*, +, {{m,n}}) with no "
                            "literal text between them, like .*.*.*.*"
                        )
                found = walk(body, in_repeat or high > 1)
            elif op is _constants.SUBPATTERN:
                found = walk(av[3], in_repeat)
            elif op is _constants.BRANCH:
                if in_repeat and not _first_literals(av[1]):
                    return "it repeats alternatives that can match the same text, like (a|a)*"
                found = next((f for b in av[1] if (f := walk(b, in_repeat))), "")
            elif op in (_constants.ASSERT, _constants.ASSERT_NOT):
                found = walk(av[1], in_repeat)
            elif op is _constants.ATOMIC_GROUP:
                found = walk(av, in_repeat)
            elif op is _constants.GROUPREF_EXISTS:
                found = walk(av[1], in_repeat) or (walk(av[2], in_repeat) if av[2] else "")
            else:
                found = ""
            if found:
                return found
        return ""

    return walk(_regex_parse(pattern), False)


def compile_override(pattern: str) -> re.Pattern[str]:
    """Compile an ``-ot`` regex, refusing one that is invalid or could backtrack without end.

    Raises:
        CommandError: the pattern is not valid, too long, or could take exponential time.
    """
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    if len(pattern) > MAX_REGEX_LENGTH:
        raise CommandError(
            f"The override regex {shown!r} is {len(pattern)} characters long; MoE Studio reads "
            f"-ot regexes of up to {MAX_REGEX_LENGTH}. Split it into several -ot rules."
        )
    try:
        with warnings.catch_warnings():
            # "Possible nested set" FutureWarnings: the pattern is the user's, not our code.
            warnings.simplefilter("ignore", FutureWarning)
            compiled = re.compile(pattern)
            risk = _backtracking_risk(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CommandError(
            f"The override regex {shown!r} is not valid: {reason}. Fix the -ot value."
        ) from None
    if risk:
        raise CommandError(
            f"The override regex {shown!r} could take hours to match a tensor name: {risk}. "
            "Write it without the nested or repeated repeats (e.g. blk\\.[0-9]+\\.ffn_.*_exps)."
        )
    return compiled


def _compile(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], str]]:
    return [(compile_override(pattern), buft) for pattern, buft in rules]


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
    cpu_moe_flags: bool = True,
) -> Overrides:
    """The shortest override list we find that resolves to exactly ``plan`` under ``split``
    (``-ot`` rules only when ``cpu_moe_flags`` is False: an engine without ``-cmoe``)."""
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
    if cpu_moe_flags:
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
