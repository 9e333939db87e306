"""`moe-studio compare`: a repository's quants, grouped, read remotely and placed on a rig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.cli.main import main
from moe_studio.core.errors import Cancelled
from moe_studio.core.remote.cache import HeaderCache
from moe_studio.core.remote.http import RangeClient
from moe_studio.core.remote.hub import RepoFile, list_repo
from moe_studio.core.remote.quants import download_command, group_quants, read_quants
from tests.support.hf_server import COMMIT, HubServer

REPO = "org/DeepSeek-V3-GGUF"


def _files(*names: str) -> list[RepoFile]:
    return [RepoFile(n, 10, "v") for n in names]


def test_grouping_by_folder_and_by_file_name() -> None:
    quants = group_quants(
        _files(
            "Q4_K_M/DeepSeek-V3-Q4_K_M-00001-of-00003.gguf",
            "Q4_K_M/DeepSeek-V3-Q4_K_M-00003-of-00003.gguf",
            "Q4_K_M/DeepSeek-V3-Q4_K_M-00002-of-00003.gguf",
            "DeepSeek-V3-IQ2_KS-00001-of-00002.gguf",
            "DeepSeek-V3-IQ2_KS-00002-of-00002.gguf",
            "UD-IQ1_S/DeepSeek-V3-UD-IQ1_S-00001-of-00001.gguf",
            "model-Q8_0.gguf",
            "BF16/part-00001-of-00002.gguf",
            "mmproj-F16.gguf",
            "imatrix.gguf",
            "README.md",
        )
    )
    by_label = {q.label: q for q in quants}
    assert set(by_label) == {"Q4_K_M", "IQ2_KS", "UD-IQ1_S", "Q8_0", "BF16"}
    q4 = by_label["Q4_K_M"]
    assert [f.path[-19:] for f in q4.files] == [f"-0000{i}-of-00003.gguf"[-19:] for i in (1, 2, 3)]
    assert q4.complete and q4.size == 30
    assert not by_label["BF16"].complete  # one of its two shards is missing
    assert q4.include_pattern(quants) == "Q4_K_M/*"
    assert by_label["IQ2_KS"].include_pattern(quants) == "DeepSeek-V3-IQ2_KS-*-of-00002.gguf"
    assert by_label["Q8_0"].include_pattern(quants) == "model-Q8_0.gguf"
    assert (
        download_command("o/r", q4, quants, "main")
        == "hf download o/r --include 'Q4_K_M/*' --local-dir r"
    )


def test_two_quants_in_one_folder_are_not_downloaded_together() -> None:
    quants = group_quants(_files("quants/m-Q4_K_M.gguf", "quants/m-Q5_K_M.gguf"))
    assert sorted(q.include_pattern(quants) for q in quants) == [
        "quants/m-Q4_K_M.gguf",
        "quants/m-Q5_K_M.gguf",
    ]


def test_listing_goes_through_huggingface_hub(hub: HubServer, quant_files: dict[str, Path]) -> None:
    listing = list_repo(REPO)
    assert listing.commit == COMMIT
    assert {f.path for f in listing.gguf_files()} == set(quant_files)
    assert all(f.size == quant_files[f.path].stat().st_size for f in listing.files)
    api = [r for r in hub.log if r.path.startswith("/api/models/")]
    assert [r.path for r in api] == [f"/api/models/{REPO}"]
    assert api[0].authorization == "Bearer hf_test_token"
    assert hub.file_requests() == []


def test_quants_are_read_in_parallel_with_progress(
    hub: HubServer, quant_files: dict[str, Path], tmp_path: Path
) -> None:
    listing = list_repo(REPO)
    quants = group_quants(listing.gguf_files())
    seen: list[float] = []
    results = read_quants(
        listing,
        quants,
        client=RangeClient(),
        cache=HeaderCache(tmp_path),
        progress=lambda fraction, name: seen.append(fraction),
    )
    assert [r.quant.label for r in results] == ["Q4_K_M", "IQ4_KS", "IQ2_KS", "IQ2_KT"]
    assert all(r.layout is not None for r in results)
    assert len(seen) == len(quant_files) and seen[-1] == 1.0
    # Headers only: every request asks for a range, every file at most twice.
    reads = hub.file_requests()
    assert all(r.range.startswith("bytes=") for r in reads)
    assert max(sum(name in r.path for r in reads) for name in quant_files) <= 2


def test_reading_quants_stops_when_cancelled(hub: HubServer, tmp_path: Path) -> None:
    listing = list_repo(REPO)
    with pytest.raises(Cancelled):
        read_quants(
            listing,
            group_quants(listing.gguf_files()),
            client=RangeClient(),
            cache=HeaderCache(tmp_path),
            cancelled=lambda: True,
        )
    assert hub.file_requests() == []


def _compare(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    code = main(["compare", REPO, "--gpu", "24GiB", "--ram", "512GiB", "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    doc: dict[str, object] = json.loads(out)
    return doc


def test_compare_table_on_ik(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _compare(capsys)
    rows = {r["quant"]: r for r in doc["quants"]}  # type: ignore[union-attr, index]
    assert list(rows) == ["Q4_K_M", "IQ4_KS", "IQ2_KS", "IQ2_KT"]
    for row in rows.values():
        assert row["fits"] is True
        assert row["engine_loads"] is True
        assert row["gpu_bytes"] <= row["gpu_capacity"]
        assert 0 <= row["expert_gpu_share"] < 1
    assert rows["Q4_K_M"]["size"] > rows["IQ2_KS"]["size"]
    assert doc["best"] == "Q4_K_M"
    assert rows["Q4_K_M"]["download"] == (
        "hf download org/DeepSeek-V3-GGUF --include 'Q4_K_M/*' --local-dir DeepSeek-V3-GGUF"
    )


def test_compare_on_mainline_names_the_ik_only_types(
    hub: HubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _compare(capsys, "--dialect", "mainline")
    rows = {r["quant"]: r for r in doc["quants"]}  # type: ignore[union-attr, index]
    assert rows["Q4_K_M"]["engine_loads"] is True
    assert rows["IQ2_KS"]["engine_loads"] is False
    assert rows["IQ2_KS"]["engine_problem"].startswith("IQ2_KS is ik-only")


def test_compare_prints_a_table(hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", REPO, "--gpu", "24GiB", "--ram", "256GiB", "--dialect", "mainline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].split()[:5] == ["quant", "size", "GPU", "RAM", "fits"]
    iq2 = next(line for line in lines if line.startswith("IQ2_KS "))
    assert "no: IQ2_KS is ik-only" in iq2
    q4 = next(line for line in lines if line.startswith("Q4_K_M "))
    assert " no " in q4  # 377 GiB of Q4_K_M does not fit 256 GiB of RAM and a 24 GiB GPU
