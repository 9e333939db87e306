"""Fixtures for core.hardware tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private cpuinfo cache folder (tests never touch the user's cache)."""
    return tmp_path / "cache"
