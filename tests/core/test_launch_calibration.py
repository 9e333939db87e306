"""The local calibration file: predicted-vs-actual pairs appended after each run, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe_studio.core.engine.calibration import (
    FORMAT_VERSION,
    SETTINGS_KEYS,
    CalibrationRecord,
    append_record,
    default_path,
    make_record,
    read_records,
)
from moe_studio.core.engine.diagnosis import CompareRow
from moe_studio.core.errors import EngineError
from moe_studio.core.gguf import catalog
from moe_studio.core.plan.settings import Settings

ROWS = [
    CompareRow("CUDA0", 100, 20, 30, 101, 20, None),
    CompareRow("CPU", 500, 0, 10, 512, 0, 12),
]


def test_round_trip_and_bad_lines(tmp_path: Path, tiny_qwen3moe: Path) -> None:
    layout = catalog.load(str(tiny_qwen3moe))
    settings = Settings(dialect="mainline", ctx=512, ubatch=256, port=1234, threads=3)
    record = make_record(layout, settings, ROWS, engine="version: 1 (abc)", when=0)
    assert record.time == "1970-01-01T00:00:00Z"
    assert set(record.settings) == set(SETTINGS_KEYS)  # no host, port or threads
    assert record.settings["ubatch"] == 256 and record.architecture == "qwen3moe"
    cuda = record.devices[0]
    assert dict(cuda.predicted) == {"weights": 100, "kv": 20, "compute": 30}
    assert dict(cuda.actual) == {"weights": 101, "kv": 20}  # no compute figure: left out

    path = tmp_path / "deep" / "calibration.jsonl"
    assert append_record(record, path) == path
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n")
        f.write(json.dumps({"v": FORMAT_VERSION + 1, "devices": []}) + "\n")
        f.write('{"v": 1, "devices": [{"name": "CPU", "predicted": 3}]}\n')
        f.write('{"v": 1, "model": "cut sh')  # a crash in the middle of a line
    append_record(record, path)
    assert path.read_text().count("\n") == 6
    records = read_records(path)
    assert records == [record, record]
    assert CalibrationRecord.from_json(record.to_json()) == record


def test_missing_file_and_unwritable_folder(tmp_path: Path) -> None:
    assert read_records(tmp_path / "none.jsonl") == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    record = CalibrationRecord("t", "m", "a", "ik", "", {}, ())
    with pytest.raises(EngineError, match="Cannot add to the calibration file"):
        append_record(record, blocker / "calibration.jsonl")


def test_default_path_is_in_the_user_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "moe-studio" / "calibration.jsonl"
