"""Which device each layer defaults to — and so where its KV cache goes.

Both engines give every layer a *default device* from ``-ngl``, the device list and ``-ts``; ``-ot``
then moves individual tensors but the KV cache stays on the default device (engines.md §11). To
put KV where the plan says, the command must make this split explicit. Mainline splits by layer
count (``upper_bound`` over the cumulative ``-ts`` fractions); ik splits by *bytes*: it sizes every
layer (weights + KV, ``get_layer_sizes`` in ik ``src/llama.cpp``) and fills devices greedily up to
``-ts`` fractions of the total. :func:`ik_layer_sizes` replicates ik's sizing so the ``-ts`` we
write lands every boundary where the plan wants it, in the middle of a layer's tolerance.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moe_studio.core.gguf.ggml_types import Q8_0, TYPES
from moe_studio.core.gguf.model import ModelLayout, TensorInfo
from moe_studio.core.gguf.tensors import GLOBAL_LAYER, ROUTED_EXPERT_GROUPS, TensorGroup
from moe_studio.core.hardware.devices import CPU_NAME, Rig
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.memory import cache_type, engine_settings
from moe_studio.core.plan.placement import Plan, layer_homes
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB

IK_FIT_MARGIN = 1024 * MiB  # ik subtracts this from each device's free memory


@dataclass(frozen=True, slots=True)
class LayerSplit:
    """How the command assigns layers to devices.

    Attributes:
        ngl: value for ``-ngl``.
        devices: GPU-like devices in ``-dev`` order (engine device order).
        layer_devices: default device per layer (index ``n_layer`` is the output layer).
        exact: whether every KV layer lands on its plan home.
        notes: why not, when ``exact`` is false.
    """

    ngl: int
    devices: tuple[str, ...]
    layer_devices: tuple[str, ...]
    exact: bool = True
    notes: tuple[str, ...] = ()

    @property
    def kv_devices(self) -> tuple[str, ...]:
        return self.layer_devices[:-1]

    def ranges(self) -> list[tuple[str, int, int]]:
        """``(device, first, last)`` runs of consecutive layers (output layer excluded)."""
        out: list[tuple[str, int, int]] = []
        for il, dev in enumerate(self.kv_devices):
            if out and out[-1][0] == dev and out[-1][2] == il - 1:
                out[-1] = (dev, out[-1][1], il)
            else:
                out.append((dev, il, il))
        return out


def _gpu_like(rig: Rig, name: str) -> bool:
    d = rig.device(name)
    return d is not None and d.is_gpu_like


def plan_layer_split(layout: ModelLayout, plan: Plan, rig: Rig, settings: Settings) -> LayerSplit:
    """The layer split the generated command asks for, given where the plan puts attention."""
    n_layer = layout.n_layer
    homes = layer_homes(layout, plan)
    homes += [homes[-1] if homes else CPU_NAME] * (n_layer - len(homes))  # nextn layers
    notes: list[str] = []
    gpu_used = [d for d in plan.used_devices() if _gpu_like(rig, d)]
    if not gpu_used:
        return LayerSplit(0, (), tuple([CPU_NAME] * (n_layer + 1)))
    # Layers homed on the CPU can only be a prefix (-ngl counts from the top).
    cpu_prefix = 0
    while cpu_prefix < layout.hparams.n_layer_kv and homes[cpu_prefix] == CPU_NAME:
        cpu_prefix += 1
    if settings.is_ik and cpu_prefix >= n_layer:
        # ik drops every override at -ngl 0, so at least the last layer stays offloaded.
        cpu_prefix = n_layer - 1
        notes.append(
            f"Layer {n_layer - 1} keeps its KV cache on {gpu_used[0]}: ik_llama.cpp ignores "
            "tensor overrides unless at least one layer is offloaded (-ngl 1)."
        )
    stray = [il for il in range(cpu_prefix, layout.hparams.n_layer_kv) if homes[il] == CPU_NAME]
    if stray and not notes:
        notes.append(
            f"{_fmt_layers(stray)}: attention on the CPU after GPU layers. The engine can only "
            "leave the first layers on the CPU, so their KV cache stays on a GPU."
        )
    # Device order: first appearance in layer order, then devices that only hold -ot tensors.
    order: list[str] = []
    for il in range(cpu_prefix, n_layer):
        h = homes[il]
        if h != CPU_NAME and h not in order:
            order.append(h)
    if not order:
        order = [gpu_used[0]]
    for d in gpu_used:
        if d not in order:
            order.append(d)
    # Each device's layers must be one run; otherwise the closest contiguous split is used.
    assigned: list[str] = [CPU_NAME] * cpu_prefix
    current = order[0]
    seen: set[str] = {current}
    broken: list[int] = []
    for il in range(cpu_prefix, n_layer):
        h = homes[il]
        if h in (CPU_NAME, current):
            assigned.append(current)
        elif h not in seen:
            current = h
            seen.add(h)
            assigned.append(current)
        else:
            assigned.append(current)
            if il < layout.hparams.n_layer_kv:
                broken.append(il)
    if broken:
        notes.append(
            f"{_fmt_layers(broken)}: back on a device that earlier layers already left. The "
            "engine gives each device one run of layers, so their KV cache stays with the "
            "layers before them."
        )
    # The output layer comes after the last layer in both engines' split, so it defaults to the
    # last layer's device; -ot moves the output tensors when the plan wants them elsewhere.
    # When every layer stays on the CPU, mainline's -ngl 1 still offloads the output layer
    # (it is the first one offloaded), to the first device.
    assigned.append(assigned[-1] if cpu_prefix < n_layer else order[0])
    ngl = (
        999
        if cpu_prefix == 0
        else (n_layer - cpu_prefix if settings.is_ik else n_layer + 1 - cpu_prefix)
    )
    if settings.is_ik and ngl <= n_layer:
        assigned[-1] = CPU_NAME  # ik offloads the output layer only with ngl > n_layer
    exact = not broken and not stray
    return LayerSplit(ngl, tuple(order), tuple(assigned), exact, tuple(notes))


def _fmt_layers(layers: Sequence[int]) -> str:
    """``Layer 5`` or ``Layers 3–7, 9``."""
    runs: list[str] = []
    start = prev = layers[0]
    for il in [*layers[1:], None]:
        if il is not None and il == prev + 1:
            prev = il
            continue
        runs.append(f"{start}" if start == prev else f"{start}–{prev}")
        if il is not None:
            start = prev = il
    word = "Layer" if len(layers) == 1 else "Layers"
    return f"{word} {', '.join(runs)}"


# --- ik's byte-based split -----------------------------------------------------------------------


def ik_layer_sizes(layout: ModelLayout, settings: Settings) -> tuple[list[float], float]:
    """ik's ``get_layer_sizes``: bytes per layer (weights + KV; index n_layer = output) and the
    worst per-layer compute. Mirrors ik ``src/llama.cpp`` (commit 8337e4cd) term by term."""
    hp = layout.hparams
    n_layer = hp.n_layer
    # common.cpp get_batch_ubatch: -b is capped at -c (the unpadded context), -ub at -b.
    ub = min(settings.ubatch, settings.batch, settings.ctx or settings.batch)
    result = [0.0] * (n_layer + 1)
    ffn_exps = [0] * n_layer
    ffn_shexp = [0] * n_layer
    ffn_dense = [0] * n_layer
    has_norm = [False] * n_layer
    mla: dict[int, dict[str, TensorInfo]] = {}
    ow_size = embd_size = 0
    first_nextn = n_layer - hp.nextn_layers if hp.nextn_layers else n_layer
    for t in layout.tensors:
        if t.name == "token_embd.weight":
            embd_size = t.nbytes
            continue
        if t.name == "output.weight":
            ow_size += t.nbytes
            continue
        if t.layer == GLOBAL_LAYER or t.layer >= first_nextn:
            continue
        il = t.layer
        result[il] += t.nbytes
        if t.name.endswith((".bias", ".scale")):
            continue
        stem = t.name.rsplit(".", 2)[-2]
        if hp.is_mla and stem in ("attn_k_b", "attn_v_b", "attn_kv_b"):
            mla.setdefault(il, {})[stem] = t
            continue
        ne1 = t.shape[1] if len(t.shape) > 1 else 1
        if t.group in ROUTED_EXPERT_GROUPS:
            ffn_exps[il] += ne1 * ub * max(1, hp.n_expert_used) * 4
        elif t.group is TensorGroup.SHARED and stem != "ffn_gate_inp_shexp":
            ffn_shexp[il] += ne1 * ub * 4
        elif t.group is TensorGroup.FFN:
            ffn_dense[il] += ne1 * ub * 4
        elif stem.endswith("_norm"):
            has_norm[il] = True
    compute = [0.0] * n_layer
    for il in range(n_layer):
        inp = hp.n_embd * ub * 4 * (2 if has_norm[il] else 1)
        compute[il] = float(max(ffn_exps[il], ffn_shexp[il], ffn_dense[il]) + inp)
    mla_mode = settings.effective_mla if hp.is_mla else 0
    for il, parts in mla.items():
        k_b, v_b, kv_b = parts.get("attn_k_b"), parts.get("attn_v_b"), parts.get("attn_kv_b")
        if k_b and v_b and not kv_b:
            kt = TYPES[k_b.type_id]
            rt = Q8_0 if kt.block > 1 else kt  # ggml_is_quantized → Q8_0
            result[il] += (
                rt.row_bytes(v_b.shape[0]) * (v_b.shape[1] + k_b.shape[1]) * v_b.shape[2] * 2
            )
        elif kv_b:
            result[il] += (0 if k_b else kv_b.nbytes / 2) + (0 if v_b else kv_b.nbytes / 2)
        if mla_mode == 3 and v_b:
            n_head = v_b.shape[2]
            kv_mib = 2 * v_b.shape[1] * n_head * settings.ctx * 4 / MiB
            heads = n_head
            amb = settings.effective_amb
            if amb > 0 and kv_mib > amb:
                heads = 1
                for split in range(2, n_head):
                    if n_head % split == 0 and kv_mib / split <= amb:
                        heads = n_head // split
                        break
            compute[il] = max(compute[il], 2.0 * v_b.shape[1] * heads * settings.ctx * 4)
    max_compute = max(compute, default=0.0)
    for il in range(n_layer):
        result[il] += _ik_cache_size(layout, settings, il, mla_mode)
    output = hp.n_vocab * ub * 4
    result[n_layer] = (ow_size or embd_size) + max(0.0, output - max_compute)
    return result, max_compute


def _ik_cache_size(layout: ModelLayout, settings: Settings, il: int, mla_mode: int) -> int:
    hp = layout.hparams
    tk = cache_type(settings.cache_type_k)
    tv = cache_type(settings.cache_type_v)
    cells = settings.ctx  # ik sizes layers with the -c value (max_ctx_size), before padding
    if hp.is_mla and mla_mode:
        width = hp.kv_lora_rank + hp.n_rot
        if settings.flash_attn:
            return tk.row_bytes(width) * cells
        size = (tk if mla_mode == 1 else tv).row_bytes(width) * cells
        if mla_mode == 1:
            size += tv.row_bytes(hp.kv_lora_rank * cells)
        return size
    n_kv = hp.head_count_kv[il]
    return tk.row_bytes(hp.key_length) * n_kv * cells + tv.row_bytes(hp.value_length * n_kv) * cells


def ik_assign(
    sizes: Sequence[float],
    max_compute: float,
    splits: Sequence[float],
    i_gpu_start: int,
    n_last: int,
) -> list[int]:
    """ik's greedy fill: device index per layer (``splits`` cumulative and normalized)."""
    count = len(splits)
    n_layer = len(sizes) - 1
    out = [count - 1] * (n_layer + 1)
    total = max_compute * count + sum(sizes[i_gpu_start:n_last])
    last = i_gpu_start
    loaded = 0.0
    for dev in range(count):
        loaded += max_compute
        split_size = splits[dev] * total
        il = last
        while il < n_last:
            if loaded + sizes[il] <= split_size:
                out[il] = dev
                loaded += sizes[il]
                il += 1
                continue
            if loaded + sizes[il] - split_size < split_size - loaded:
                out[il] = dev
                loaded += sizes[il]
                il += 1
            break
        last = il
    return out


def ik_tensor_split(
    layout: ModelLayout, settings: Settings, split: LayerSplit
) -> tuple[float, ...]:
    """``-ts`` values that make ik's byte-based fill reproduce ``split`` exactly."""
    sizes, mc = ik_layer_sizes(layout, engine_settings(layout, settings, split.ngl))
    n_layer = layout.n_layer
    i_gpu_start = n_layer - split.ngl if split.ngl < n_layer else 0
    n_last = n_layer + 1 if split.ngl > n_layer else n_layer
    total = mc * len(split.devices) + sum(sizes[i_gpu_start:n_last])
    targets = []
    loaded = 0.0
    il = i_gpu_start
    for j, dev in enumerate(split.devices):
        loaded += mc
        first = il
        while il < n_last and split.layer_devices[il] == dev:
            loaded += sizes[il]
            il += 1
        if j == len(split.devices) - 1:
            targets.append(total)
            break
        # Aim at the middle of the tolerance: past the last layer by up to half of it, short of
        # the next layer by up to half of that one.
        prev = sizes[il - 1] if il > first else 0.0
        nxt = sizes[il] if il < n_last else 0.0
        targets.append(loaded + (nxt - prev) / 4)
    values = []
    before = 0.0
    for t in targets:
        values.append(max(0.0, t - before) / total * 1000)
        before = t

    def assign(ts: Sequence[float]) -> list[int]:
        acc = sum(ts)
        cumulative = list(itertools.accumulate(ts))
        return ik_assign(sizes, mc, [c / acc for c in cumulative], i_gpu_start, n_last)

    return round_tensor_split(tuple(values), assign)


def graph_tensor_split(
    layout: ModelLayout, settings: Settings, split: LayerSplit
) -> dict[str, float]:
    """The ``-ts`` value of each device of ``split`` (what ``-sm graph`` splits every layer by)."""
    return dict(zip(split.devices, ik_tensor_split(layout, settings, split), strict=True))


def round_tensor_split(
    values: tuple[float, ...], assign: Callable[[Sequence[float]], Sequence[int]]
) -> tuple[float, ...]:
    """``values`` rounded to the fewest decimals (whole numbers first) that ``assign`` maps to
    the same device per layer: ``-ts 644,331,25`` rather than ``644.262,330.654,25.0842``."""
    wanted = list(assign(values))
    for decimals in range(4):
        rounded = tuple(round(v, decimals) for v in values)
        if sum(rounded) > 0 and list(assign(rounded)) == wanted:
            return rounded
    return values


def mainline_tensor_split(layout: ModelLayout, split: LayerSplit) -> tuple[float, ...]:
    """``-ts`` layer counts for mainline (the output layer counts on the device that holds it)."""
    counts = {d: 0 for d in split.devices}
    start = 0 if split.ngl > layout.n_layer else layout.n_layer + 1 - split.ngl
    for il in range(start, layout.n_layer + 1):
        dev = split.layer_devices[il]
        if dev in counts:
            counts[dev] += 1
    return tuple(float(counts[d]) for d in split.devices)


def engine_layer_devices(
    layout: ModelLayout,
    settings: Settings,
    devices: Sequence[str],
    ngl: int,
    tensor_split: Sequence[float],
    free_memory: Sequence[int] | None = None,
) -> list[str]:
    """The default device per layer (index n_layer = output) the engine picks for these flags.

    ``devices`` is the engine's device list (``-dev`` order, RPC first by default); an empty list
    or ``ngl == 0`` means CPU only.
    """
    n_layer = layout.n_layer
    if not devices or ngl == 0:
        return [CPU_NAME] * (n_layer + 1)
    ts = [float(x) for x in tensor_split[: len(devices)]]
    ts += [0.0] * (len(devices) - len(ts))
    old_ik = settings.is_ik and not settings.has(builds.LAYER_SIZE_SPLIT)
    if not any(ts):
        # Mainline splits by the free memory itself (``llama_model::load_tensors``, "default
        # split, by free memory": ``splits[i] = free``, at b5331 and in the newest source alike),
        # and so did ik before build 4327 (``llama_get_device_memory``).
        margin = IK_FIT_MARGIN if settings.is_ik and not old_ik else 0
        ts = (
            [float(max(0, m - margin)) for m in free_memory]
            if free_memory
            else [1.0] * len(devices)
        )
        if not any(ts):
            ts = [1.0] * len(devices)
    cumulative = []
    acc = 0.0
    for x in ts:
        acc += x
        cumulative.append(acc)
    splits = [c / acc for c in cumulative]
    out: list[str]
    if old_ik:
        # ik before build 4327 (src/llama.cpp at 58f08e43): layer i to the first device whose
        # cumulative split exceeds (i - i_gpu_start) / min(ngl, n_layer + 1); the output to the
        # one past (act - 1) / act when ngl > n_layer.
        i_gpu_start = max(n_layer - ngl, 0)
        act = min(ngl, n_layer + 1)
        out = [CPU_NAME] * (n_layer + 1)
        for il in range(i_gpu_start, n_layer):
            x = (il - i_gpu_start) / act
            out[il] = devices[next((i for i, s in enumerate(splits) if s > x), len(splits) - 1)]
        if ngl > n_layer:
            x = (act - 1) / act
            out[n_layer] = devices[
                next((i for i, s in enumerate(splits) if s > x), len(splits) - 1)
            ]
        return out
    if settings.is_ik:
        i_gpu_start = max(n_layer - ngl, 0)
        if len(devices) == 1:
            index = [0] * (n_layer + 1)
        else:
            sizes, mc = ik_layer_sizes(layout, engine_settings(layout, settings, ngl))
            n_last = n_layer + 1 if ngl > n_layer else n_layer
            index = ik_assign(sizes, mc, splits, i_gpu_start, n_last)
        out = [devices[i] for i in index]
        for il in range(i_gpu_start):
            out[il] = CPU_NAME
        if ngl <= n_layer:
            out[n_layer] = CPU_NAME
        return out
    i_gpu_start = max(n_layer + 1 - ngl, 0)
    active = n_layer + 1 - i_gpu_start
    out = []
    for il in range(n_layer + 1):
        if il < i_gpu_start:
            out.append(CPU_NAME)
            continue
        x = (il - i_gpu_start) / active
        dev = next((i for i, s in enumerate(splits) if s > x), len(splits) - 1)
        out.append(devices[dev])
    return out
