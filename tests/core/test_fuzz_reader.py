"""A seeded fuzz of the GGUF reader (issue 12): only MoeStudioError escapes, and work is bounded.

Each case is derived from ``(category, number)`` alone (tests/support/fuzz_gguf.py), so a failure
names a case that replays on any machine. Work is bounded without a clock: the reader may not read
more bytes than the file holds, and a sample of cases runs under ``tracemalloc`` with a cap on the
peak. ``benchmarks/fuzz_reader.py`` runs the same generator for 100,000 cases.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from tests.support.fuzz_gguf import CATEGORIES, Seed, make_seeds, mutate, run_case

CASES_PER_CATEGORY = 400
MEMORY_SAMPLE_EVERY = 25
PEAK_LIMIT = 64 * 1024 * 1024  # a seed is 2.3 MB; nothing should need 30 copies of it


@pytest.fixture(scope="module")
def seeds() -> tuple[Seed, ...]:
    return make_seeds()


@pytest.mark.parametrize("category", CATEGORIES)
def test_mutated_headers_only_raise_moe_studio_errors(
    seeds: tuple[Seed, ...], category: str, tmp_path: Path
) -> None:
    crashes = []
    for number in range(CASES_PER_CATEGORY):
        case = mutate(seeds, category, number)
        sample = number % MEMORY_SAMPLE_EVERY == 0
        if sample:
            tracemalloc.start()
        try:
            outcome, bytes_read = run_case(case, tmp_path)
            peak = tracemalloc.get_traced_memory()[1] if sample else 0
        finally:
            if sample:
                tracemalloc.stop()
        if outcome.startswith("crash"):
            crashes.append((number, outcome))
        assert bytes_read <= len(case.data), (category, number, bytes_read)
        assert peak <= PEAK_LIMIT, (category, number, peak)
    assert crashes == []


def test_the_generator_is_deterministic(seeds: tuple[Seed, ...]) -> None:
    for category in CATEGORIES:
        assert mutate(seeds, category, 7) == mutate(seeds, category, 7)
