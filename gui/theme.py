"""Colours and palettes. Device colours come from the Okabe–Ito set, which stays
distinguishable for red/green colour blindness; "over budget" is signalled by text and a hatch,
never by colour alone."""

from __future__ import annotations

from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from moe_studio.core.hardware.devices import CPU_NAME

CPU_COLOR = QColor("#9a9a9a")
# Okabe–Ito, reordered so neighbouring devices contrast in luminance as well as hue. Vermillion is
# left out: it means "over budget".
GPU_COLORS = [
    QColor("#0072B2"),  # blue
    QColor("#E69F00"),  # orange
    QColor("#56B4E9"),  # sky blue
    QColor("#009E73"),  # bluish green
    QColor("#F0E442"),  # yellow
    QColor("#CC79A7"),  # reddish purple
    QColor("#000000"),  # black
]
OVER_COLOR = QColor("#D55E00")
MIXED_COLOR = QColor("#c8c8c8")

# What fills a budget bar: a brown ramp, dark to light, a hue family no device uses, so a bar's
# "weights" never reads as "CUDA0" (each is >= 29 CIELAB ΔE from every device colour, and the
# four differ in lightness, which colour-blind readers see too).
SEGMENT_COLORS = {
    "weights": QColor("#5B3A1F"),
    "kv": QColor("#94673C"),
    "compute": QColor("#C9A67A"),
    "overhead": QColor("#EFE3CF"),
}


def device_color(name: str, order: list[str]) -> QColor:
    """The colour of a device: grey for the CPU, the palette by position for the others."""
    if name == CPU_NAME or not name:
        return CPU_COLOR
    try:
        index = order.index(name)
    except ValueError:
        index = len(order)
    return GPU_COLORS[index % len(GPU_COLORS)]


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background.redF(), background.greenF(), background.blueF()
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return QColor("#000000") if luminance > 0.45 else QColor("#ffffff")


def apply_palette(app: QApplication, mode: str) -> None:
    """``mode``: ``light``, ``dark`` or ``system``."""
    app.setStyle("Fusion")
    if mode == "system":
        app.setPalette(app.style().standardPalette())
        return
    if mode == "light":
        app.setPalette(app.style().standardPalette())
        return
    dark = QPalette()
    base = QColor("#1f2124")
    window = QColor("#2a2d31")
    text = QColor("#e6e6e6")
    dark.setColor(QPalette.ColorRole.Window, window)
    dark.setColor(QPalette.ColorRole.WindowText, text)
    dark.setColor(QPalette.ColorRole.Base, base)
    dark.setColor(QPalette.ColorRole.AlternateBase, window)
    dark.setColor(QPalette.ColorRole.ToolTipBase, window)
    dark.setColor(QPalette.ColorRole.ToolTipText, text)
    dark.setColor(QPalette.ColorRole.Text, text)
    dark.setColor(QPalette.ColorRole.Button, window)
    dark.setColor(QPalette.ColorRole.ButtonText, text)
    dark.setColor(QPalette.ColorRole.Highlight, QColor("#3d7fbf"))
    dark.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    dark.setColor(QPalette.ColorRole.PlaceholderText, QColor("#8a8a8a"))
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.WindowText,
        QPalette.ColorRole.ButtonText,
    ):
        dark.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7a7a7a"))
    app.setPalette(dark)


def is_dark() -> bool:
    palette = QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128
