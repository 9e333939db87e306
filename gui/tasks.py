"""One background task at a time: a new task cancels the previous one; progress and results come
back on the GUI thread. The worker runs a pure core function taking ``progress``/``cancelled``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from moe_studio.core.errors import Cancelled

log = logging.getLogger(__name__)

Work = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


class _Relay(QObject):
    progressed = Signal(int, float, str)
    finished = Signal(int, object)
    failed = Signal(int, object)


class _Job(QRunnable):
    def __init__(self, job_id: int, work: Work, relay: _Relay, cancel: threading.Event) -> None:
        super().__init__()
        self._id = job_id
        self._work = work
        self._relay = relay
        self._cancel = cancel

    def run(self) -> None:
        try:
            result = self._work(
                lambda fraction, text: self._relay.progressed.emit(self._id, fraction, text),
                self._cancel.is_set,
            )
        except Cancelled:
            return
        except Exception as exc:
            self._relay.failed.emit(self._id, exc)
            return
        self._relay.finished.emit(self._id, result)


class TaskRunner(QObject):
    """Signals:
    progressed(fraction, text), finished(result), failed(exception), running_changed(bool).
    """

    progressed = Signal(float, str)
    finished = Signal(object)
    failed = Signal(object)
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_relay_progressed)
        self._relay.finished.connect(self._on_relay_finished)
        self._relay.failed.connect(self._on_relay_failed)
        self._current = 0  # id of the job whose results we want; 0 = none
        self._counter = 0
        self._cancel = threading.Event()
        self._on_finished: Callable[[Any], None] | None = None

    @property
    def running(self) -> bool:
        return self._current != 0

    def start(self, work: Work, on_finished: Callable[[Any], None] | None = None) -> None:
        """Run ``work(progress, cancelled)`` in the background, cancelling any previous task.

        ``on_finished(result)`` runs on the GUI thread when this task (not a later one) is done.
        """
        self.cancel()
        self._on_finished = on_finished
        self._counter += 1
        self._current = self._counter
        self._cancel = threading.Event()
        self._pool.start(_Job(self._current, work, self._relay, self._cancel))
        self.running_changed.emit(True)

    def cancel(self) -> None:
        if self._current:
            self._cancel.set()
            self._current = 0  # results of the cancelled job are ignored
            self.running_changed.emit(False)

    def wait(self, msecs: int = -1) -> bool:
        """Block until the pool is idle (tests and shutdown only, never on a user action)."""
        return self._pool.waitForDone(msecs)

    def _on_relay_progressed(self, job: int, fraction: float, text: str) -> None:
        if job == self._current:
            self.progressed.emit(fraction, text)

    def _on_relay_finished(self, job: int, result: object) -> None:
        if job == self._current:
            self._current = 0
            callback, self._on_finished = self._on_finished, None
            self.running_changed.emit(False)
            if callback is not None:
                callback(result)
            self.finished.emit(result)

    def _on_relay_failed(self, job: int, error: object) -> None:
        if job == self._current:
            self._current = 0
            self.running_changed.emit(False)
            self.failed.emit(error)


class _CallRelay(QObject):
    done = Signal(object, object)  # (callback, result)
    failed = Signal(object, object)  # (callback, exception)


class _Call(QRunnable):
    def __init__(
        self,
        fn: Callable[[], Any],
        relay: _CallRelay,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        super().__init__()
        self._fn, self._relay, self._on_done, self._on_error = fn, relay, on_done, on_error

    def run(self) -> None:
        try:
            result = self._fn()
        except Exception as exc:
            if self._on_error is not None:
                self._relay.failed.emit(self._on_error, exc)
            return
        self._relay.done.emit(self._on_done, result)


class Background(QObject):
    """Short blocking calls (a health poll, a test prompt, an engine probe) off the GUI thread;
    results come back on the GUI thread."""

    def __init__(self, parent: QObject | None = None, threads: int = 2) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._relay = _CallRelay()
        self._relay.done.connect(lambda cb, result: cb(result))
        self._relay.failed.connect(lambda cb, exc: cb(exc))

    def call(
        self,
        fn: Callable[[], Any],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.pool.start(_Call(fn, self._relay, on_done, on_error))

    def wait(self, msecs: int = -1) -> bool:
        return self.pool.waitForDone(msecs)
