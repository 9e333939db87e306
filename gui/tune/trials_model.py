"""The table of a tuning run's trials, adapting :class:`moe_studio.core.engine.tune.Trial` values
directly (``TRIAL_ROLE`` returns the trial)."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from moe_studio.core.engine.tune import Objective, Trial

TRIAL_ROLE = Qt.ItemDataRole.UserRole + 1
COLUMNS = ("#", "Rung", "Configuration", "PP t/s", "TG t/s", "Score", "Status")
_NUMERIC = (0, 3, 4, 5)

Index = QModelIndex | QPersistentModelIndex


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


class TrialsModel(QAbstractTableModel):
    """Trials in the order they finished; the score follows the objective."""

    def __init__(self, objective: Objective = "balanced") -> None:
        super().__init__()
        self._trials: list[Trial] = []
        self._objective: Objective = objective

    @property
    def trials(self) -> tuple[Trial, ...]:
        return tuple(self._trials)

    def set_objective(self, objective: Objective) -> None:
        self._objective = objective
        if self._trials:
            self.dataChanged.emit(self.index(0, 5), self.index(len(self._trials) - 1, 5))

    def clear(self) -> None:
        self.beginResetModel()
        self._trials = []
        self.endResetModel()

    def append(self, trials: Sequence[Trial]) -> None:
        if not trials:
            return
        first = len(self._trials)
        self.beginInsertRows(QModelIndex(), first, first + len(trials) - 1)
        self._trials.extend(trials)
        self.endInsertRows()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._trials)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if (
            role == Qt.ItemDataRole.DisplayRole
            and orientation == Qt.Orientation.Horizontal
            and 0 <= section < len(COLUMNS)
        ):
            return COLUMNS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or not 0 <= index.row() < len(self._trials):
            return None
        trial = self._trials[index.row()]
        column = index.column()
        if role == TRIAL_ROLE:
            return trial
        if role == Qt.ItemDataRole.TextAlignmentRole and column in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return trial.error or " ".join(trial.argv) or None
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if column == 0:
            return str(index.row() + 1)
        if column == 1:
            return "final" if trial.rung else "screening"
        if column == 2:
            return trial.knobs.label()
        if column == 3:
            return _speed(trial.pp)
        if column == 4:
            return _speed(trial.tg)
        if column == 5:
            return _speed(trial.score(self._objective))
        status = trial.status if not trial.reused else f"{trial.status} (journal)"
        return status if trial.status == "ok" else f"{status}: {trial.error}"
