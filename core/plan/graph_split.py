"""ik_llama.cpp's ``-sm graph``: every offloaded layer split across the GPUs (tensor parallel).

Derived from ik_llama.cpp at 8337e4cd (build 4840); **none of it is measured on CUDA** (this
project has no CUDA machine). What the source says:

* **Weights** (``src/llama-load-tensors.cpp``, ``create_tensors_helper`` ~5360-5790): every layer
  whose matrix buffer is not host memory is split; each matrix by heads (attention, granularity 4
  heads, ``create_split`` at line 395 and ``split_heads`` at 4747) or by rows (dense FFN and
  experts, granularity 16 or the quant block, ~5620-5660) in proportion to ``-ts``. ``create_split``
  corrects each split toward ``-ts`` by the memory already used per device, so over a model each
  GPU holds its ``-ts`` share of the split bytes. Norms and other 1-D tensors are copied to every
  GPU (``prepare_split_tensors(-1, …, mirror, …)``). The output matrix stays whole on the
  device of the output layer: ``create_embd_output`` (line 525) puts it in the split context only
  with ``use_ctx_split``, which no architecture passes since PR #1038 ("Don't split the output
  tensor", 2125f6863), so the output split at ~5763-5775 never runs. Tensors an override keeps
  in RAM are not split. The CUDA split buffer allocates only the pieces, each on its
  GPU (``ggml_backend_cuda_split_buffer_type_get_alloc_size``, ``ggml/src/ggml-cuda.cu`` 1362).
* **KV cache** (``src/llama.cpp`` ``llama_kv_cache_init`` 1248-1256, 1544-1578): without MLA
  each GPU holds the K/V heads of its attention split, so its ``-ts`` share; for MLA models
  (DeepSeek, Kimi) the latent cache is **replicated**: every GPU holds all of it
  (``replicate_mla``, "KV cache size per device (MLA replicated)").
* **Compute**: each GPU runs its share of heads and FFN rows on the full layer input, and the
  partial results are summed across GPUs (``ggml_reduce``) in ``-grt/--graph-reduce-type``
  (f16 by default; ik forces f32 for gpt-oss, ``src/llama.cpp`` 8226-8233), so each GPU receives
  one ``n_embd × T`` partial from every GPU. With split-mode-graph scheduling on (no tensor
  overrides, or ``-smgs``; ``src/llama.cpp`` 8696-8699) the scheduler keeps up to ``-mea`` MiB
  (default 256) per GPU of inputs copied from other GPUs in a separate buffer
  (``ggml_sched_prepare_graph``, ``ggml/src/ggml-backend.cpp`` 2662-2705); we charge all of it.
* **Not CUDA**: ik's CPU+RPC build accepts ``-sm graph`` (its "has no effect" warning is wrong
  for RPC), but without a split buffer type (``llama_default_buffer_type_split``,
  ``src/llama.cpp`` 485) every piece lands beside the whole tensor on the first device. Measured
  with 8337e4cd on two local rpc-servers, tiny qwen3moe, ``-c 1024 --dry-run``: layer mode put
  0.78 + 0.91 MiB of weights and 1 + 1 MiB of KV on the two devices; graph mode 3.16 + 0.13 MiB
  and 4.00 + 0 MiB, and the warm-up then crashed the rpc-server. The command refuses that. The
  split arithmetic itself is what that run printed ("Estimated model buffer size per device"
  0.79 + 0.79 MiB, "KV cache size per device" 1 + 1 MiB), and this module gives the same
  (``tests/core/test_graph_split.py``); the CUDA allocation and the compute terms are unmeasured.
  The tiny deepseek2 (2 heads) stops at load: MLA heads split in groups of 4 (``create_split``
  asserts), so the command refuses such models too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER
from moe_studio.core.hardware.devices import CPU_NAME
from moe_studio.core.plan.placement import Plan
from moe_studio.core.plan.settings import Settings
from moe_studio.core.units import MiB

# ik ``llama_context_default_params`` (``src/llama.cpp`` 7576): ``max_extra_alloc`` = 256 MiB.
MAX_EXTRA_ALLOC = 256 * MiB

# The note every -sm graph plan carries: which figures are read from source rather than measured.
DERIVED_NOTE = (
    "-sm graph figures are derived from ik_llama.cpp's source (8337e4cd), not measured on CUDA: "
    "weights and KV split by -ts (MLA KV replicated on every GPU), per-GPU compute with the "
    "reduce partials and up to -mea 256 MiB of copied inputs. Check them with a probe on the GPUs."
)


@dataclass(frozen=True, slots=True)
class GraphSplit:
    """Where ``-sm graph`` puts the offloaded layers (bytes per device)."""

    shares: dict[str, float]  # each GPU's -ts share, in -dev order
    weights: Counter[str]
    kv: Counter[str]
    output_split: bool
    overridden: bool  # some tensor of an offloaded layer stays in RAM (-ot / --n-cpu-moe)

    @property
    def extra_alloc(self) -> int:
        """Bytes of copied inputs each GPU keeps (0 when split-mode-graph scheduling is off)."""
        return 0 if self.overridden else MAX_EXTRA_ALLOC


def applies(settings: Settings, gpu_devices: Sequence[str]) -> bool:
    """Whether the plan runs with ``-sm graph`` (ik, and at least two GPUs hold layers)."""
    return settings.is_ik and settings.split_mode_graph and len(gpu_devices) >= 2


def reduce_bytes(layout: ModelLayout) -> int:
    """Bytes per element of the partial results summed across GPUs (``-grt``, default f16)."""
    return 4 if layout.architecture == "gpt-oss" else 2


def graph_split(
    layout: ModelLayout,
    plan: Plan,
    layer_devices: Sequence[str],
    kv_layers: Sequence[int],
    gpu_devices: Sequence[str],
    tensor_split: Mapping[str, float] | None = None,
) -> GraphSplit:
    """Weights and KV per device under ``-sm graph`` for a plan whose layer split (as for
    ``-sm layer``) is ``layer_devices``; ``gpu_devices`` in ``-dev`` order.

    ``-sm graph`` uses the ``-ts`` the command writes (``tensor_split``, device → value:
    :func:`moe_studio.core.plan.layers.ik_tensor_split`) as split fractions; without it each GPU's
    share is its share of the offloaded layers' bytes (weights on GPUs and KV).
    """
    gpus = set(gpu_devices)
    n_layer = layout.n_layer
    layer_bytes: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    split_bytes = 0.0
    mirrored = 0
    overridden = False
    output_split = False  # PR #1038: the output matrix is never split (module docstring)
    for t, d in zip(layout.tensors, plan.devices, strict=True):
        if not d:
            continue
        offloaded_layer = t.layer != GLOBAL_LAYER and t.layer < n_layer
        home = layer_devices[t.layer] if offloaded_layer else CPU_NAME
        if offloaded_layer and home in gpus and d == CPU_NAME:
            overridden = True
        splits = offloaded_layer and d in gpus
        if not splits:
            weights[d] += t.nbytes
            continue
        if offloaded_layer:
            layer_bytes[home] += t.nbytes
        if len(t.shape) < 2:
            mirrored += t.nbytes
        else:
            split_bytes += t.nbytes
    for il, dev in enumerate(layer_devices[: len(kv_layers)]):
        if dev in gpus:
            layer_bytes[dev] += kv_layers[il]
    ts = tensor_split or {}
    if set(ts) == gpus and sum(ts.values()) > 0:
        shares = {d: ts[d] / sum(ts.values()) for d in gpu_devices}
    else:
        total = sum(layer_bytes[d] for d in gpu_devices) or 1
        shares = {d: layer_bytes[d] / total for d in gpu_devices}
    kv: Counter[str] = Counter()
    replicated = layout.hparams.is_mla
    for il, dev in enumerate(layer_devices[: len(kv_layers)]):
        if dev not in gpus:
            kv[dev] += kv_layers[il]
            continue
        for d in gpu_devices:
            kv[d] += kv_layers[il] if replicated else round(kv_layers[il] * shares[d])
    for d in gpu_devices:
        weights[d] += round(split_bytes * shares[d]) + mirrored
    return GraphSplit(shares, weights, kv, output_split, overridden)
