"""Tuning from the GUI: :class:`TuneDialog` (budget, objective, depths), its live PP-vs-TG plot,
its table of trials, and "Apply best" as one undoable step."""

from moe_studio.gui.tune.tune_dialog import TuneDialog

__all__ = ["TuneDialog"]
