"""Every text parser but the GGUF reader survives seeded hostile input (support/fuzz_parsers).

Each case must end accepted or refused with one of our sentences, never another exception. The
work is bounded by structure, not by a clock: a regex that could backtrack is refused before it
runs, YAML outside a config's shape before it is parsed. benchmarks/fuzz_parsers.py runs many
more cases with timings and memory.
"""

from __future__ import annotations

import pytest

from moe_studio.core.errors import CommandError, MoeStudioError, RemoteError
from moe_studio.core.plan.overrides import compile_override
from moe_studio.core.profiles.exports import merge_llama_swap_config
from moe_studio.core.remote.hub import RepoFile
from moe_studio.core.remote.quants import download_hint, group_quants
from moe_studio.core.remote.urls import parse_remote, split_siblings
from tests.support.fuzz_parsers import TARGETS, case_text, run_case

CASES = 150


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_refuses_or_accepts_every_mutation(name: str) -> None:
    target = TARGETS[name]
    crashes = []
    for number in range(CASES):
        outcome = run_case(target, case_text(target, number))
        if outcome.kind == "crash":
            crashes.append(f"case {number}: {outcome.detail}")
    assert not crashes, "\n".join(crashes[:10])


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+$",
        "(.*)*x",
        "(.+)+z",
        "(x+x+)+y",
        "((a|b)*)*c",
        "(blk|.)*Q",
        "(.{1,40}){1,40}$X",
        ".*.*.*.*.*.*.*.*Q",
        "a{4294967295}",
        "(" * 2000 + ")" * 2000,
        "x" * 3000,
    ],
)
def test_override_regex_that_could_backtrack_is_refused_before_it_runs(pattern: str) -> None:
    with pytest.raises(CommandError, match="override regex"):
        compile_override(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"blk\.(1[0-9]|2[0-9])\.ffn_(up|down|gate)_exps\.weight",
        r"\.ffn_.*_exps\.",
        r".*ffn_.*_exps.*",
        r"(?:up|down|gate)+_exps",
        r"blk\.[0-9]+\.ffn",
        r".*blk\..*\.ffn.*exps.*",  # four repeats, literal text between each
        r"blk\.([0-9]|[1-5][0-9])\.ffn_.*_exps\..*=",
    ],
)
def test_override_regexes_people_write_still_compile(pattern: str) -> None:
    assert compile_override(pattern).pattern == pattern


def test_split_name_with_count_zero_is_not_a_split() -> None:
    assert split_siblings("x-00001-of-00000.gguf") is None
    assert split_siblings("x-00003-of-00002.gguf") is None
    _, path = download_hint("hf://a/b/x-00001-of-00000.gguf")
    assert path == "b/x-00001-of-00000.gguf"


def test_path_traversal_in_a_hub_name_is_refused() -> None:
    with pytest.raises(RemoteError, match=r"'\.\.'"):
        parse_remote("hf://owner/repo/../../etc/x.gguf")


def test_listing_drops_unsafe_paths_and_groups_many_files_in_linear_work() -> None:
    files = [RepoFile("../../etc/Q4_K_M.gguf", 1, ""), RepoFile("/abs/Q8_0.gguf", 1, "")]
    # 20,000 quants sharing one label: counting labels per quant would be 4·10^8 comparisons.
    files += [RepoFile(f"d{i}/m-Q4_K_M.gguf", i, "") for i in range(20_000)]
    quants = group_quants(files)
    assert len(quants) == 20_000
    assert all(".." not in q.first and not q.first.startswith("/") for q in quants)


@pytest.mark.parametrize(
    "text",
    [
        "models:\n  a: " + "[" * 5000 + "]" * 5000 + "\n",
        "x: " + "{" * 100 + "\n",
        "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 1200)),
        "models:\n  a:\n    cmd: x\n" + "#" * (5 * 2**20),
    ],
)
def test_hostile_llama_swap_config_is_refused_before_parsing(text: str) -> None:
    with pytest.raises(MoeStudioError, match="left unchanged"):
        merge_llama_swap_config(text, "tiny", {"cmd": "llama-server"})
