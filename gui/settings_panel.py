"""Run settings: every field feeds the estimate, the advice and the command at once.

Edits become one ``SettingsCommand`` each (undoable); the panel refreshes itself from the document
when settings change elsewhere (undo, import, opening a profile).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.errors import CommandError
from moe_studio.core.gguf.ggml_types import CACHE_TYPES_IK, CACHE_TYPES_MAINLINE
from moe_studio.core.plan import engine_builds as builds
from moe_studio.core.plan.settings import (
    DIALECTS,
    INT32_MAX,
    Dialect,
    Settings,
    check_api_key,
    check_host,
    check_number,
    exposure_warning,
    generate_api_key,
)
from moe_studio.core.units import MiB
from moe_studio.gui.document import Document
from moe_studio.gui.wheel import guard_wheel

BATCH_CHOICES = ["128", "256", "512", "1024", "2048", "4096", "8192"]


def _combo(items: list[str], editable: bool = False) -> QComboBox:
    box = QComboBox()
    box.addItems(items)
    box.setEditable(editable)
    return box


def _spin(step: int = 1, special: str = "") -> QSpinBox:
    """A number field that takes any whole number: its range is checked in core (LIMITS), so an
    out-of-range value gets the engine's reason instead of keystrokes silently dropped. With
    ``special`` text, 0 means "the engine's default" and is the minimum."""
    box = QSpinBox()
    box.setRange(0 if special else -INT32_MAX, INT32_MAX)
    box.setSingleStep(step)
    box.setKeyboardTracking(False)
    if special:
        box.setSpecialValueText(special)
    return box


def planned_for(settings: Settings) -> str:
    """The line saying which engine build the plan is for."""
    name = "ik_llama.cpp" if settings.is_ik else "llama.cpp"
    if settings.engine_build is None:
        return f"Planned for the newest {name} build"
    return f"Planned for {name} build {settings.engine_build}"


def flash_flag(settings: Settings) -> str:
    """How the command turns flash attention on for the planned build."""
    if not settings.is_ik or settings.has(builds.FA_TAKES_VALUE):
        return "-fa on"
    if settings.has(builds.FA_FMOE_DEFAULT):
        return "on by default; off: -no-fa"
    return "-fa"


class SettingsPanel(QWidget):
    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._document = document
        self._updating = False
        layout = QVBoxLayout(self)

        run = QGroupBox("Context and batches")
        form = QFormLayout(run)
        self.ctx = _spin(1024)
        self.ctx.setToolTip("-c: context size in tokens (always written explicitly)")
        self.cache_k = _combo(list(CACHE_TYPES_IK))
        self.cache_v = _combo(list(CACHE_TYPES_IK))
        self.batch = _combo(BATCH_CHOICES, editable=True)
        self.ubatch = _combo(BATCH_CHOICES, editable=True)
        self.ubatch.setToolTip(
            "-ub: physical batch. Large values let the GPU take over RAM-resident experts during "
            "prompt processing but need a larger compute buffer (see the advice)."
        )
        self.parallel = _spin()
        self.flash = QCheckBox("Flash attention (-fa on)")
        form.addRow("Context (-c)", self.ctx)
        form.addRow("K cache (-ctk)", self.cache_k)
        form.addRow("V cache (-ctv)", self.cache_v)
        form.addRow("Batch (-b)", self.batch)
        form.addRow("Micro-batch (-ub)", self.ubatch)
        form.addRow("Slots (-np)", self.parallel)
        form.addRow("", self.flash)
        layout.addWidget(run)

        engine = QGroupBox("Engine")
        form = QFormLayout(engine)
        self.dialect = _combo(["ik", "mainline"])
        self.dialect.setToolTip("ik_llama.cpp or mainline llama.cpp: flags and buffer names differ")
        self.mla = _combo(["default (3)", "0", "1", "2", "3"])
        self.amb = _spin(64, "default (256)")
        self.rtr = QCheckBox("Run-time repack (-rtr)")
        self.graph = QCheckBox("Graph split mode (-sm graph)")
        self.graph.setToolTip(
            "ik_llama.cpp, two or more CUDA GPUs: every offloaded layer is split across the GPUs "
            "by -ts (tensor parallel) instead of whole layers per GPU. The budget bars then show "
            "each GPU's share, derived from ik's source (not measured on CUDA here)."
        )
        self.merge_qkv = QCheckBox("Merge Q/K/V (--merge-qkv)")
        self.no_mmap = QCheckBox("Load into RAM, not mmap (--no-mmap)")
        self.no_mmap.setToolTip("--no-mmap (mainline: -lm none): read the model into RAM")
        self.planned_build = QLabel()
        self.planned_build.setObjectName("plannedBuild")
        self.planned_build.setToolTip(
            "The engine build the command and the estimate are written for: the Server tab's "
            "engine (its --version), or the profile's. Older ik builds have other flags "
            "(a bare -fa, -fmoe) and defaults (-mla 0, -amb 0)."
        )
        form.addRow("Dialect", self.dialect)
        form.addRow("", self.planned_build)
        form.addRow("MLA mode (-mla)", self.mla)
        form.addRow("Attention max batch (-amb MiB)", self.amb)
        form.addRow("", self.rtr)
        form.addRow("", self.graph)
        form.addRow("", self.merge_qkv)
        form.addRow("", self.no_mmap)
        layout.addWidget(engine)

        host = QGroupBox("Threads, NUMA and server")
        form = QFormLayout(host)
        self.threads = _spin(1, "default")
        self.threads_batch = _spin(1, "default")
        self.numa = _combo(["", "distribute", "isolate", "numactl"])
        self.host = QLineEdit()
        self.port = _spin()
        self.exposure = QLabel()
        self.exposure.setWordWrap(True)
        self.exposure.setObjectName("exposureWarning")
        self.exposure.setStyleSheet("color: #8a4b00;")
        self.api_key = QLineEdit()
        self.api_key.setPlaceholderText("none")
        self.api_key.setToolTip(
            "--api-key: clients must send Authorization: Bearer KEY (/health stays public)"
        )
        self.generate_key = QPushButton("Generate API key")
        self.generate_key.clicked.connect(self._generate_api_key)
        key_row = QHBoxLayout()
        key_row.setContentsMargins(0, 0, 0, 0)
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(self.generate_key)
        self.metrics = QCheckBox("Enable /metrics (--metrics)")
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("extra llama-server arguments, passed verbatim")
        form.addRow("Threads (-t)", self.threads)
        form.addRow("Batch threads (-tb)", self.threads_batch)
        form.addRow("NUMA (--numa)", self.numa)
        form.addRow("Host", self.host)
        form.addRow("Port", self.port)
        form.addRow("", self.exposure)
        form.addRow("API key", key_row)
        form.addRow("", self.metrics)
        form.addRow("Extra arguments", self.extra)
        layout.addWidget(host)

        budget = QGroupBox("Estimator")
        form = QFormLayout(budget)
        self.reserve = _spin(64)
        self.reserve.setSuffix(" MiB")
        self.reserve.setToolTip("Memory kept free on every GPU and RPC device")
        self.overhead = _spin(50)
        self.overhead.setSuffix(" MiB")
        self.overhead.setToolTip("CUDA context, cuBLAS workspace and pool slack per GPU")
        form.addRow("Reserve per device", self.reserve)
        form.addRow("CUDA overhead per GPU", self.overhead)
        layout.addWidget(budget)
        # Why the last typed value was refused (it never reaches the plan or the undo stack).
        self.error = QLabel()
        self.error.setObjectName("settingsError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020;")
        self.error.hide()
        layout.addWidget(self.error)
        layout.addStretch(1)
        # Fit the Settings tab at 1280 px without a horizontal scroll bar: a field that does not
        # fit beside its label goes below it, and combos do not widen to their longest item.
        for form_layout in self.findChildren(QFormLayout):
            form_layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
            form_layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for combo in self.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(8)
        # Each number field, the LIMITS entry core checks it against, and its unit.
        self._limits: dict[QSpinBox, tuple[str, int]] = {
            self.ctx: ("ctx", 1),
            self.parallel: ("parallel", 1),
            self.amb: ("amb", 1),
            self.threads: ("threads", 1),
            self.threads_batch: ("threads_batch", 1),
            self.port: ("port", 1),
            self.reserve: ("reserve", MiB),
            self.overhead: ("gpu_overhead", MiB),
        }
        self.invalid_field: QWidget | None = None

        for spin in (
            self.ctx,
            self.parallel,
            self.amb,
            self.threads,
            self.threads_batch,
            self.port,
            self.reserve,
            self.overhead,
        ):
            spin.valueChanged.connect(self._on_field_changed)
        for combo in (self.cache_k, self.cache_v, self.mla, self.numa):
            combo.currentIndexChanged.connect(self._on_field_changed)
        self.dialect.currentIndexChanged.connect(self._on_dialect_changed)
        for combo in (self.batch, self.ubatch):
            # One change per choice or finished edit, not one undo step per keystroke.
            combo.activated.connect(self._on_field_changed)
            line = combo.lineEdit()
            if line is not None:
                line.editingFinished.connect(self._on_field_changed)
        for check in (self.flash, self.rtr, self.graph, self.merge_qkv, self.no_mmap, self.metrics):
            check.toggled.connect(self._on_field_changed)
        for line in (self.host, self.extra, self.api_key):
            line.editingFinished.connect(self._on_field_changed)
        # Fields take focus by click or Tab only (not by the wheel), and ignore the wheel until
        # focused, so wheeling over the panel scrolls it and never adds an undo step.
        self._wheel_guard = guard_wheel(
            self, self.findChildren(QComboBox) + self.findChildren(QAbstractSpinBox)
        )
        document.settings_changed.connect(self.load)
        document.model_changed.connect(self.load)
        self.load()

    def load(self) -> None:
        """Show the document's settings (without echoing changes back)."""
        s = self._document.settings
        self._updating = True
        try:
            self.ctx.setValue(s.ctx)
            self._set_combo(self.cache_k, s.cache_type_k)
            self._set_combo(self.cache_v, s.cache_type_v)
            self.batch.setCurrentText(str(s.batch))
            self.ubatch.setCurrentText(str(s.ubatch))
            self.parallel.setValue(s.parallel)
            self.flash.setChecked(s.flash_attn)
            self._set_combo(self.dialect, s.dialect)
            self.planned_build.setText(planned_for(s))
            self.flash.setText(f"Flash attention ({flash_flag(s)})")
            default_mla = s.with_(mla=None).effective_mla
            self.mla.setItemText(0, f"default ({default_mla})")
            self.amb.setSpecialValueText(f"default ({s.with_(amb=None).effective_amb})")
            self.mla.setCurrentIndex(0 if s.mla is None else s.mla + 1)
            self.amb.setValue(s.amb or 0)
            self.rtr.setChecked(s.rtr)
            self.graph.setChecked(s.split_mode_graph)
            self.merge_qkv.setChecked(s.merge_qkv)
            self.no_mmap.setChecked(s.no_mmap)
            self.threads.setValue(s.threads or 0)
            self.threads_batch.setValue(s.threads_batch or 0)
            self._set_combo(self.numa, s.numa)
            self.host.setText(s.host)
            self.port.setValue(s.port)
            self.api_key.setText(s.api_key)
            warning = exposure_warning(s.host, s.api_key)
            self.exposure.setText(
                "No authentication: anyone who can reach this machine can use the model. "
                "Use 127.0.0.1, or set an API key."
                if warning
                else ""
            )
            self.exposure.setToolTip(warning or "")
            self.exposure.setVisible(warning is not None)
            self.generate_key.setVisible(warning is not None or bool(s.api_key))
            self.metrics.setChecked(s.metrics)
            self.extra.setText(shlex.join(s.extra_args))
            self.reserve.setValue(s.reserve // MiB)
            self.overhead.setValue(s.gpu_overhead // MiB)
            ik = s.is_ik
            mla_model = self._document.layout.hparams.is_mla
            self.mla.setEnabled(ik and mla_model)
            for w in (self.amb, self.rtr, self.graph, self.merge_qkv):
                w.setEnabled(ik)
            allowed = CACHE_TYPES_IK if ik else CACHE_TYPES_MAINLINE
            for combo in (self.cache_k, self.cache_v):
                model = combo.model()
                for i in range(combo.count()):
                    item = model.item(i) if hasattr(model, "item") else None
                    if item is not None:
                        item.setEnabled(combo.itemText(i) in allowed)
        finally:
            self._updating = False

    def _set_combo(self, combo: QComboBox, text: str) -> None:
        i = combo.findText(text, Qt.MatchFlag.MatchFixedString)
        if i < 0:
            combo.addItem(text)
            i = combo.count() - 1
        combo.setCurrentIndex(i)

    def current(self) -> Settings:
        """The settings the fields show.

        Raises:
            CommandError: a field holds a value the engine refuses (checked by core, the flag and
                range in the message); :attr:`invalid_field` is that field.
        """
        s = self._document.settings

        def checked(field: QWidget, check: Callable[[], None]) -> None:
            try:
                check()
            except CommandError:
                self.invalid_field = field
                raise

        def as_int(combo: QComboBox, name: str) -> int:
            text = combo.currentText().strip()
            value: object = int(text) if text.lstrip("-").isdigit() else text
            checked(combo, lambda: check_number(name, value))
            assert isinstance(value, int)
            return value

        for spin, (name, unit) in self._limits.items():
            number = spin.value()
            if spin.specialValueText() and number == 0:
                continue  # "default": not on the command line
            checked(spin, functools.partial(check_number, name, number * unit))
        host = self.host.text().strip() or "127.0.0.1"
        checked(self.host, lambda: check_host(host))
        key = self.api_key.text().strip()
        checked(self.api_key, lambda: check_api_key(key))
        try:
            extra = tuple(shlex.split(self.extra.text()))
        except ValueError as exc:
            self.invalid_field = self.extra
            raise CommandError(f"Extra arguments: {exc} (unbalanced quotes?).") from None
        batch = as_int(self.batch, "batch")
        ubatch = as_int(self.ubatch, "ubatch")
        mla_index = self.mla.currentIndex()
        return s.with_(
            ctx=self.ctx.value(),
            cache_type_k=self.cache_k.currentText(),
            cache_type_v=self.cache_v.currentText(),
            batch=batch,
            ubatch=ubatch,
            parallel=self.parallel.value(),
            flash_attn=self.flash.isChecked(),
            dialect=self.dialect.currentText(),
            mla=None if mla_index <= 0 else mla_index - 1,
            amb=self.amb.value() or None,
            rtr=self.rtr.isChecked(),
            split_mode_graph=self.graph.isChecked(),
            merge_qkv=self.merge_qkv.isChecked(),
            no_mmap=self.no_mmap.isChecked(),
            threads=self.threads.value() or None,
            threads_batch=self.threads_batch.value() or None,
            numa=self.numa.currentText(),
            host=host,
            port=self.port.value(),
            api_key=key,
            metrics=self.metrics.isChecked(),
            extra_args=extra,
            reserve=self.reserve.value() * MiB,
            gpu_overhead=self.overhead.value() * MiB,
        )

    def _on_field_changed(self, *_: object) -> None:
        if self._updating:
            return
        try:
            settings = self.current()
        except CommandError as exc:
            # Say why next to the fields, mark the field, show the document's settings again:
            # the refused value never reaches the plan or the undo stack.
            field = self.invalid_field
            self.load()
            self._show_error(str(exc), field)
            return
        if settings == self._document.settings:
            return  # nothing changed (an editable combo reports one edit twice): keep any message
        self.invalid_field = None
        self._show_error("")
        self._document.set_settings(settings)

    def _show_error(self, message: str, field: QWidget | None = None) -> None:
        fields = (*self._limits, self.batch, self.ubatch, self.host, self.api_key, self.extra)
        for widget in fields:
            widget.setStyleSheet("border: 1px solid #b00020;" if widget is field else "")
        self.error.setText(message)
        self.error.setVisible(bool(message))

    def _generate_api_key(self) -> None:
        self.api_key.setText(generate_api_key())
        self._on_field_changed()

    def _on_dialect_changed(self, *_: object) -> None:
        if self._updating:
            return
        dialect = self.dialect.currentText()
        settings = self._document.settings
        if dialect != settings.dialect and dialect in DIALECTS:
            chosen: Dialect = "ik" if dialect == "ik" else "mainline"
            self._document.set_settings(settings.for_dialect(chosen), f"Switch to {dialect}")
