"""Seeded mutations for every text parser other than the GGUF reader (that one is fuzz_gguf.py).

Shared by tests/core/test_fuzz_parsers.py (a few hundred cases per parser) and
benchmarks/fuzz_parsers.py (many more, timed). Each :class:`Target` has seed texts (valid inputs
of its format) and a ``run`` that feeds one text to the parser the way the product does. Case
``n`` of a target is derived from a seed with ``random.Random(f"{target}:{n}")``, so it is the
same on every machine.

A case ends one of three ways: accepted (the parser returned), refused (it raised one of our
:class:`~moe_studio.core.errors.MoeStudioError` sentences) or a crash (anything else: a
traceback a user would see). Hangs show in the benchmark's timings; the CI tests bound the work
structurally (a regex that could backtrack is refused before it runs).

Mutations, chosen at random and applied 1-3 times:
    truncate  cut the text anywhere
    flip      replace a character with a random one (NUL, control, non-ASCII included)
    nasty     insert a hostile token: deep brackets, huge/NaN/inf numbers, ReDoS regexes,
              YAML anchors, quotes, path traversal, very long runs
    number    replace a number with an edge value (0, -1, 2^63, 1e400, nan, inf, 10^5000 digits)
    dup       duplicate a slice (repeated keys, lines, rows)
    swap      exchange two lines
For JSON seeds, a structural mutation also replaces one value with another type.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from moe_studio.core.errors import MoeStudioError

DATA = Path(__file__).resolve().parent.parent / "data"

NASTY = (
    "\0",
    "\x1b[31m",
    "\ufeff",
    "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    "é",
    "💥",
    "[" * 5000,
    "{" * 5000,
    '{"a":' * 3000,
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    "9" * 5000,
    "-9223372036854775809",
    "18446744073709551616",
    "0x7fffffff",
    "-0",
    '"',
    "'",
    "\\",
    "\\\n",
    "`",
    "$(",
    "${",
    "../../etc/passwd",
    "/../../../../tmp/x",
    "C:\\Windows\\",
    "(a+)+$",
    "(.*)*x",
    "(.+)+z",
    "(a|a)*b",
    "((((((((((((((((((((a))))))))))))))))))))",
    "(" * 3000,
    "a{4294967295}",
    "[z-a]",
    "&a [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    "!!python/object/apply:os.system ['x']",
    "<<: *a",
    "---\n",
    "...\n",
    "\n\n\n",
    "\r",
    "\t",
    "x" * 100_000,
    " " * 10_000,
    "data: ",
    "data: [DONE]",
    ":",
    "=",
    ",",
    "|",
    "-",
    "--",
    "-ot",
    "-m",
)
EDGE_NUMBERS = (
    "0",
    "-1",
    "1",
    "2147483648",
    "9223372036854775808",
    "18446744073709551615",
    "1e400",
    "-1e400",
    "1e-400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1" * 5000,
    "0.0000001",
    "-0",
    "99999",
    "00000",
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class Target:
    """One parser: valid seeds of its format, and how the product feeds it one text."""

    name: str
    seeds: Callable[[], tuple[str, ...]]
    run: Callable[[str], object]
    json_seeds: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "accepted", "refused", "crash"
    detail: str = ""


def _mutate_json(text: str, rnd: random.Random) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    nodes: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k in list(node):
                nodes.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                nodes.append((node, i))
                walk(node[i])

    walk(doc)
    if not nodes:
        return text
    values: tuple[object, ...] = (
        None,
        True,
        0,
        -1,
        2**63,
        10**400,
        1e308,
        float("inf"),
        float("nan"),
        "",
        "x" * 1000,
        "../../etc/passwd",
        "\0",
        [],
        {},
        [[]],
        {"": None},
        [1, "a", None],
        "1e400",
        "Infinity",
    )
    for _ in range(rnd.randint(1, 3)):
        parent, key = nodes[rnd.randrange(len(nodes))]
        value = values[rnd.randrange(len(values))]
        if isinstance(parent, dict):
            if rnd.random() < 0.2:
                parent[f"unknown_{rnd.randrange(100)}"] = value
            else:
                parent[key] = value
        elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
            parent[key] = value
    if rnd.random() < 0.1:
        doc = [doc] if rnd.random() < 0.5 else "text"
    return json.dumps(doc)


def mutate_text(text: str, rnd: random.Random) -> str:
    """One to three text mutations of ``text``."""
    for _ in range(rnd.randint(1, 3)):
        op = rnd.choice(("truncate", "flip", "nasty", "nasty", "number", "number", "dup", "swap"))
        n = len(text)
        if op == "truncate" and n:
            text = text[: rnd.randrange(n)]
        elif op == "flip" and n:
            i = rnd.randrange(n)
            ch = chr(rnd.choice((0, 1, 0x7F, 0x85, 0x2028, rnd.randrange(32, 0x2FFF))))
            text = text[:i] + ch + text[i + 1 :]
        elif op == "nasty":
            i = rnd.randrange(n + 1)
            text = text[:i] + rnd.choice(NASTY) + text[i:]
        elif op == "number":
            found = list(_NUMBER.finditer(text))
            if found:
                m = found[rnd.randrange(len(found))]
                text = text[: m.start()] + rnd.choice(EDGE_NUMBERS) + text[m.end() :]
        elif op == "dup" and n:
            a = rnd.randrange(n)
            b = min(n, a + rnd.randrange(1, 400))
            text = text[:b] + text[a:b] * rnd.choice((1, 2, 50)) + text[b:]
        elif op == "swap":
            lines = text.split("\n")
            if len(lines) > 1:
                i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                text = "\n".join(lines)
    return text


def case_text(target: Target, number: int) -> str:
    """Case ``number`` of ``target``: deterministic text."""
    rnd = random.Random(f"{target.name}:{number}")
    seeds = target.seeds()
    text = seeds[rnd.randrange(len(seeds))]
    if target.json_seeds and rnd.random() < 0.5:
        text = _mutate_json(text, rnd)
        if rnd.random() < 0.3:
            text = mutate_text(text, rnd)
        return text
    return mutate_text(text, rnd)


def run_case(target: Target, text: str) -> Outcome:
    try:
        target.run(text)
    except MoeStudioError as exc:
        message = str(exc)
        if not message.strip() or "Traceback" in message:
            return Outcome("crash", f"empty or traceback message: {message[:200]!r}")
        return Outcome("refused", message[:200])
    except Exception as exc:
        return Outcome("crash", f"{type(exc).__name__}: {str(exc)[:200]}")
    return Outcome("accepted")


# --- seeds ----------------------------------------------------------------------------------------


@cache
def _tiny() -> tuple[object, object]:
    """A tiny qwen3moe layout and a rig with one GPU (for command import)."""
    from moe_studio.core.gguf.model import open_model
    from moe_studio.core.hardware.rigs import parse_rig
    from tests.support.tiny_models import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        write_tiny_model(path, "qwen3moe", n_layer=4)
        layout = open_model(path)
    rig = parse_rig(
        '[host]\nram = "64 GiB"\n[[gpu]]\nname = "RTX 4090"\nvram = "24 GiB"\n',
        source="preset:fuzz",
        default_name="fuzz",
    )
    return layout, rig


@cache
def _profile_seeds() -> tuple[str, ...]:
    from moe_studio.core.plan.planning import Planner
    from moe_studio.core.plan.settings import Settings
    from moe_studio.core.profiles.plans import profile_from_plan
    from moe_studio.core.profiles.schema import to_json

    layout, rig = _tiny()
    planner = Planner(layout, rig, Settings(ctx=4096, extra_args=("--jinja",)))  # type: ignore[arg-type]
    profile = profile_from_plan(
        planner,
        planner.initial(),
        executable="/opt/ik/llama-server",
        name="fuzz",
        notes="a note",
        benchmarks=[{"kind": "sweep", "tokens_per_second": 12.5, "rows": [{"n_kv": 0}]}],
    )
    return (to_json(profile),)


@cache
def _rig_seeds() -> tuple[str, ...]:
    from moe_studio.core.hardware.rigs import presets_dir

    return tuple(p.read_text(encoding="utf-8") for p in sorted(presets_dir().glob("*.toml")))


def _calibration_line(**extra: object) -> str:
    record = {
        "v": 1,
        "time": "2026-01-01T00:00:00Z",
        "model": "tiny",
        "architecture": "qwen3moe",
        "dialect": "ik",
        "engine": "ik_llama.cpp 4000",
        "settings": {"ctx": 4096, "ubatch": 512},
        "devices": [
            {"name": "CUDA0", "predicted": {"weights": 100, "kv": 10}, "actual": {"weights": 90}}
        ],
        "model_size": 1000,
    }
    record.update(extra)
    return json.dumps(record)


@cache
def _calibration_seeds() -> tuple[str, ...]:
    from moe_studio.core.engine.calibration import FORMAT_VERSION

    line = _calibration_line(v=FORMAT_VERSION)
    return (line, "\n".join([line] * 3), line + "\n\nnot json\n" + line)


@cache
def _journal_seeds() -> tuple[str, ...]:
    from moe_studio.core.engine.tune_journal import JOURNAL_VERSION, Trial
    from moe_studio.core.engine.tune_space import Knobs

    knobs = Knobs.from_json({})
    trials = []
    if knobs is not None:
        trial = Trial(knobs, 0, (0,), "ok", pp=100.0, tg=10.0, seconds=3.0, load=1)
        trials.append(trial.to_json())
    trials.append(
        {
            "knobs": {"ub": 512, "b": 2048},
            "rung": 1,
            "depths": [0, 4096],
            "status": "ok",
            "pp": 120.5,
            "tg": 9.5,
            "points": [[0, 120.5, 9.5], [4096, 100.0, 8.0]],
            "seconds": 12.0,
            "load": 2,
            "error": "",
            "argv": ["llama-bench", "-m", "x.gguf"],
        }
    )
    return (json.dumps({"v": JOURNAL_VERSION, "fingerprint": "fp", "trials": trials}, indent=1),)


def _files(*names: str) -> tuple[str, ...]:
    return tuple((DATA / n).read_text(encoding="utf-8", errors="replace") for n in names)


@cache
def _sweep_seeds() -> tuple[str, ...]:
    return _files(
        "bench/ik_sweep_md.log", "bench/ik_sweep_jsonl.log", "bench/ref_sweep-bench_qwen3moe.log"
    )


@cache
def _llama_bench_seeds() -> tuple[str, ...]:
    return _files(
        "bench/ik_bench.md",
        "bench/ik_bench.json",
        "bench/ik_bench.csv",
        "bench/ml_bench.jsonl",
        "bench/ml_bench.csv",
    )


@cache
def _log_seeds() -> tuple[str, ...]:
    names = sorted(p.relative_to(DATA) for p in (DATA / "logs").glob("*/*.log"))
    # Every log is long; a window of each keeps a case cheap and still hits every pattern.
    return tuple(text[:20_000] for text in _files(*(str(n) for n in names)))


@cache
def _sse_seeds() -> tuple[str, ...]:
    return (
        *_files("logs/ik/chat_stream.sse"),
        'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
        'data: {"choices":[{"delta":{}}],"timings":{"prompt_n":5,"prompt_ms":10.0,'
        '"prompt_per_second":500.0,"predicted_n":3,"predicted_ms":30.0,'
        '"predicted_per_second":100.0}}\n\ndata: [DONE]\n',
        'data: {"error":{"message":"context full"}}\n',
    )


@cache
def _yaml_seeds() -> tuple[str, ...]:
    return (
        "healthCheckTimeout: 120\nmodels:\n  old:\n    cmd: llama-server -m a.gguf\n",
        "# my config\nmacros:\n  base: &base\n    ttl: 60\nmodels:\n  a:\n    <<: *base\n"
        "    cmd: |\n      llama-server\n      -m a.gguf\ngroups:\n  g:\n    members: [a]\n",
        "models: {a: {cmd: x}, b: {cmd: y}}\n",
    )


@cache
def _command_seeds() -> tuple[str, ...]:
    return (
        "./llama-server -m /m/tiny.gguf -ngl 99 -ot 'blk\\.[0-1]\\.ffn_.*_exps=CPU' -c 4096 "
        "-fa on -ctk q8_0 -ub 512 -b 2048 -t 16 --host 127.0.0.1 --port 8080",
        "CUDA_VISIBLE_DEVICES=0 numactl --interleave=all llama-server \\\n  -m tiny.gguf \\\n"
        "  -ngl 999 -ts 3,1 -dev CUDA0 --n-cpu-moe 2 -ot exps=CPU,blk\\.1\\.=CUDA0 -mla 3 -amb 512",
        "llama-server -m tiny.gguf -ngl all --rpc 10.0.0.2:50052 -ot "
        '"blk\\.(0|1)\\.ffn_(up|down|gate)_exps=RPC0[10.0.0.2:50052]" --jinja --unknown x',
        "$ llama-server --model=tiny.gguf --n-gpu-layers=auto -fit off -lm mmap -cmoe",
    )


# -ot regexes as people write them, and the shapes that backtrack without end.
REGEX_SEEDS = (
    r"blk\.[0-9]\.ffn_.*_exps",
    r"blk\.(1[0-9]|2[0-9])\.ffn_(up|down|gate)_exps\.weight",
    r"\.ffn_.*_exps\.",
    r"exps",
    r"^token_embd",
    r"blk\.([3-9]|[1-5][0-9])\.ffn.*",
    r"(a+)+$",
    r"(.*)*x",
    r"(.+)+z",
    r"(\w|\d)+!",
    r"(blk|.)*Q",
    r".*.*.*.*.*.*.*.*.*.*.*.*Q",
    r"(x+x+)+y",
    r"(?:[a-z_.0-9]*)*#",
    r"((a|b)*)*c",
    r"(.{1,40}){1,40}$X",
)


@cache
def _regex_seeds() -> tuple[str, ...]:
    return REGEX_SEEDS


@cache
def _listing_seeds() -> tuple[str, ...]:
    files = [
        ["Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00003.gguf", 1000, "a"],
        ["Q4_K_M/DeepSeek-V3-Q4_K_M-00002-of-00003.gguf", 1000, "b"],
        ["Q4_K_M/DeepSeek-V3-Q4_K_M-00003-of-00003.gguf", 1000, "c"],
        ["DeepSeek-V3-IQ2_KS-00001-of-00002.gguf", 500, "d"],
        ["DeepSeek-V3-IQ2_KS-00002-of-00002.gguf", 500, "e"],
        ["model-Q8_0.gguf", 3000, "f"],
        ["mmproj-F16.gguf", 10, "g"],
        ["README.md", 1, "h"],
    ]
    return (json.dumps(files),)


@cache
def _remote_name_seeds() -> tuple[str, ...]:
    return (
        "hf://unsloth/DeepSeek-V3-GGUF/Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00009.gguf",
        "hf://owner/repo@v1.0/model-Q8_0.gguf",
        "https://huggingface.co/owner/repo/resolve/main/sub/x-00002-of-00004.gguf",
        "https://huggingface.co/owner/repo/blob/main/x.gguf",
        "https://example.com/files/model-00001-of-00002.gguf",
    )


# --- runners --------------------------------------------------------------------------------------


def _run_profile(text: str) -> object:
    from moe_studio.core.profiles.schema import from_json

    return from_json(text, source="fuzz.json")


def _run_rig(text: str) -> object:
    from moe_studio.core.hardware.rigs import parse_rig

    return parse_rig(text, source="file:fuzz.toml", default_name="fuzz")


def _in_file(text: str, read: Callable[[Path], object], name: str) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return read(path)


def _run_calibration(text: str) -> object:
    from moe_studio.core.engine.calibration import learned_for, read_records

    records = _in_file(text, read_records, "calibration.jsonl")
    layout, _ = _tiny()
    return learned_for(records, layout, "ik", "ik_llama.cpp 4000")  # type: ignore[arg-type]


def _run_journal(text: str) -> object:
    from moe_studio.core.engine.tune_journal import Journal

    def read(path: Path) -> object:
        journal = Journal(path, "fp", resume=True)
        for trial in journal.trials.values():
            trial.score("pp")
            trial.score("both")  # type: ignore[arg-type]
        return journal

    return _in_file(text, read, "x.tune.json")


def _run_sweep(text: str) -> object:
    from moe_studio.core.engine.bench_results import parse_sweep_bench

    return parse_sweep_bench(text)


def _run_llama_bench(text: str) -> object:
    from moe_studio.core.engine.bench_results import parse_llama_bench

    return parse_llama_bench(text)


def _run_log(text: str) -> object:
    from moe_studio.core.engine.log_parser import parse_log

    lines = text.splitlines()
    parse_log(lines, "ik")
    return parse_log(lines, "mainline")


def _run_sse(text: str) -> object:
    from moe_studio.core.engine.chat import collect_reply, sse_events

    lines = [line.encode("utf-8", "surrogatepass") + b"\n" for line in text.split("\n")]
    return collect_reply(sse_events(lines))


def _run_yaml(text: str) -> object:
    from moe_studio.core.profiles.exports import merge_llama_swap_config

    return merge_llama_swap_config(
        text, "tiny", {"cmd": "llama-server -m tiny.gguf", "ttl": 0}, health_check_timeout=300
    )


def _run_command(text: str) -> object:
    from moe_studio.core.plan.cmdline import import_command, parse_command

    parse_command(text)
    layout, rig = _tiny()
    return import_command(text, layout, rig)  # type: ignore[arg-type]


def _run_regex(text: str) -> object:
    from moe_studio.core.plan.cmdline import import_command

    layout, rig = _tiny()
    argv = ["llama-server", "-m", "tiny.gguf", "-ngl", "99", "-ot", f"{text}=CPU"]
    return import_command(argv, layout, rig)  # type: ignore[arg-type]


def _run_listing(text: str) -> object:
    from moe_studio.core.remote.hub import RepoFile, RepoListing
    from moe_studio.core.remote.quants import download_command, group_quants, local_path
    from moe_studio.core.remote.urls import RemoteError

    try:
        rows = json.loads(text)
    except ValueError:
        rows = [[line, 1, ""] for line in text.splitlines()]
    if not isinstance(rows, list):
        raise RemoteError("fuzz", "The listing is not a list.")
    files = []
    for row in rows:
        if isinstance(row, list) and len(row) == 3:
            path, size, version = row
            if isinstance(path, str) and isinstance(size, int) and isinstance(version, str):
                files.append(RepoFile(path, size, version))
    listing = RepoListing("owner/repo", "main", "abc", tuple(files))
    quants = group_quants(listing.gguf_files())
    for q in quants:
        download_command("owner/repo", q, quants, "main")
        local_path("owner/repo", q)
        _ = q.complete, q.size
    return quants


def _run_remote_name(text: str) -> object:
    from moe_studio.core.remote.quants import download_hint
    from moe_studio.core.remote.urls import parse_remote

    ref = parse_remote(text)
    _ = ref.display
    return download_hint(text)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("command", _command_seeds, _run_command),
        Target("ot_regex", _regex_seeds, _run_regex),
        Target("profile", _profile_seeds, _run_profile, json_seeds=True),
        Target("rig", _rig_seeds, _run_rig),
        Target("calibration", _calibration_seeds, _run_calibration),
        Target("tune_journal", _journal_seeds, _run_journal, json_seeds=True),
        Target("sweep_bench", _sweep_seeds, _run_sweep),
        Target("llama_bench", _llama_bench_seeds, _run_llama_bench),
        Target("log", _log_seeds, _run_log),
        Target("sse", _sse_seeds, _run_sse),
        Target("llama_swap_yaml", _yaml_seeds, _run_yaml),
        Target("quant_listing", _listing_seeds, _run_listing, json_seeds=True),
        Target("remote_name", _remote_name_seeds, _run_remote_name),
    )
}
