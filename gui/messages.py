"""The one error dialog: the message first, details folded away. Never a traceback in front."""

from __future__ import annotations

import logging
import traceback

from PySide6.QtWidgets import QMessageBox, QWidget

from moe_studio.core.errors import MoeStudioError

log = logging.getLogger(__name__)


def error_text(error: BaseException) -> tuple[str, str]:
    """(message, details) for any exception: ours carry both, others become an internal error."""
    if isinstance(error, MoeStudioError):
        return error.message, error.details
    log.error("unexpected error", exc_info=error)
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (
        f"Something went wrong inside MoE Studio ({type(error).__name__}: {error}). "
        "Your work is unchanged; please report this with the details below.",
        details,
    )


def show_error(parent: QWidget | None, title: str, error: BaseException | str) -> QMessageBox:
    """Show the error dialog without blocking (window-modal); returns it (tests inspect it)."""
    if isinstance(error, BaseException):
        message, details = error_text(error)
    else:
        message, details = error, ""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(message)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setObjectName("errorDialog")
    box.open()
    return box
