"""Desktop integration files and packaging: the icon renders, the .desktop entry and AppStream
metainfo are well formed and agree with each other and with pyproject, every resource ships.

The PyInstaller bundle itself is built by an opt-in test (``MOE_STUDIO_BUILD_BUNDLE=1``, about
20 s plus a few hundred MB in the temporary folder), which runs packaging/build.sh and its checks.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from moe_studio.core import __version__

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
APP_ID = "io.github.moe_studio.MoeStudio"
METAINFO = RESOURCES / f"{APP_ID}.metainfo.xml"
DESKTOP = RESOURCES / "moe-studio.desktop"
ICON = RESOURCES / "icons" / "moe-studio.svg"
SVG_NS = "{http://www.w3.org/2000/svg}"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


class _DesktopParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # .desktop keys are case-sensitive


def _desktop() -> configparser.SectionProxy:
    parser = _DesktopParser(interpolation=None, strict=True)
    parser.read_string(DESKTOP.read_text(encoding="utf-8"))
    return parser["Desktop Entry"]


def test_metainfo_has_the_required_appstream_elements() -> None:
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    for tag in ("id", "metadata_license", "project_license", "name", "summary"):
        element = root.find(tag)
        assert element is not None and (element.text or "").strip(), tag
    assert root.findtext("id") == APP_ID == METAINFO.name.removesuffix(".metainfo.xml")
    assert root.findtext("metadata_license") in ("CC0-1.0", "FSFAP", "MIT")
    summary = root.findtext("summary") or ""
    assert len(summary) < 80 and not summary.endswith(".")
    paragraphs = root.findall("description/p")
    assert paragraphs and all((p.text or "").strip() for p in paragraphs)
    launchable = root.find("launchable")
    assert launchable is not None and launchable.get("type") == "desktop-id"
    assert (RESOURCES / (launchable.text or "")).is_file()
    assert root.findtext("provides/binary") in _pyproject()["project"]["scripts"]
    assert root.find("content_rating") is not None
    releases = root.findall("releases/release")
    assert releases and releases[0].get("version") == __version__


def test_desktop_entry_launches_the_app_with_its_icon() -> None:
    entry = _desktop()
    assert entry["Type"] == "Application"
    assert entry["Name"] == "MoE Studio" and entry["Comment"]
    program, *arguments = entry["Exec"].split()
    assert program in _pyproject()["project"]["scripts"]
    assert arguments in ([], ["%f"], ["%F"])
    assert (RESOURCES / "icons" / f"{entry['Icon']}.svg").is_file()
    assert entry["Terminal"] == "false"
    categories = entry["Categories"]
    assert categories.endswith(";") and "ArtificialIntelligence" in categories.split(";")
    # ArtificialIntelligence is an additional category that needs Science or Education beside it.
    assert "Science" in categories.split(";")


def test_icon_is_a_square_svg() -> None:
    root = ET.parse(ICON).getroot()
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("viewBox") == "0 0 256 256"
    assert root.findtext(f"{SVG_NS}title") == "MoE Studio"


_RENDER = """
import sys
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer
app = QGuiApplication([])
renderer = QSvgRenderer(sys.argv[1])
assert renderer.isValid(), "QSvgRenderer cannot read the icon"
for size in (16, 48, 256):
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    colours = {image.pixelColor(x, y).name() for x in range(size) for y in range(size)}
    assert image.pixelColor(0, 0).alpha() == 0, "the corners should be transparent"
    assert image.pixelColor(size // 2, size // 2).alpha() == 255
    assert len(colours) > 3, f"{size} px: only {colours}"
print("rendered")
"""


def test_icon_renders_with_qsvgrenderer() -> None:
    """In a child process: tests/core runs without Qt."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [sys.executable, "-c", _RENDER, str(ICON)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rendered"


def test_every_resource_file_is_in_the_package_data() -> None:
    """A resource that no [tool.setuptools.package-data] pattern matches is missing from wheels."""
    patterns: list[str] = _pyproject()["tool"]["setuptools"]["package-data"]["moe_studio.resources"]
    shipped = {".svg", ".qss", ".desktop", ".xml", ".toml", ".json", ".png"}
    files = [
        p.relative_to(RESOURCES).as_posix()
        for p in RESOURCES.rglob("*")
        if p.is_file() and p.suffix in shipped and "__pycache__" not in p.parts
    ]
    assert "icons/moe-studio.svg" in files and f"{APP_ID}.metainfo.xml" in files
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
    assert missing == [], f"add patterns for {missing} to [tool.setuptools.package-data]"


def test_pyinstaller_spec_and_build_script_are_well_formed() -> None:
    spec = ROOT / "packaging" / "moe-studio.spec"
    text = spec.read_text(encoding="utf-8")
    compile(text, str(spec), "exec")
    assert '"gui" / "entry.py"' in text
    assert _pyproject()["project"]["scripts"] == {"moe-studio": "moe_studio.gui.entry:main"}
    script = ROOT / "packaging" / "build.sh"
    assert os.access(script, os.X_OK)
    if sys.platform != "win32":
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MOE_STUDIO_BUILD_BUNDLE") != "1",
    reason="set MOE_STUDIO_BUILD_BUNDLE=1 to build the PyInstaller bundle (about 20 s)",
)
def test_the_bundle_builds_and_passes_its_self_test(tmp_path: Path) -> None:
    pytest.importorskip("PyInstaller")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DIST": str(tmp_path / "dist"),
        "WORK": str(tmp_path / "work"),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "packaging" / "build.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "self-test passed" in result.stdout
    assert f"moe-studio {__version__}" in result.stdout


def test_every_package_folder_is_installed_under_moe_studio() -> None:
    """A folder with an __init__.py that [tool.setuptools] packages misses is absent from wheels."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = {
        "moe_studio." + ".".join(init.parent.relative_to(ROOT).parts)
        for part in ("core", "gui", "resources")
        for init in (ROOT / part).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert folders - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - folders == set(), "these listed packages have no folder"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    """`pip install .` must put only `moe_studio` (and the dist-info) into site-packages."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    import zipfile

    (wheel,) = tmp_path.glob("moe_studio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"moe_studio"}
    assert "moe_studio/core/__init__.py" in names
    assert "moe_studio/gui/entry.py" in names
    assert "moe_studio/resources/rigs/demo-24g-256g.toml" in names
