"""Icons, style sheets, desktop integration files, rig presets and calibration data."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """Absolute path of a resource file, e.g. ``path("icons/app.svg")``."""
    return ROOT / name
