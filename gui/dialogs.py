"""Small dialogs: import a command, plan for another machine, add an RPC endpoint."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from moe_studio.core.errors import HardwareError, MoeStudioError
from moe_studio.core.hardware.devices import Device, DeviceKind, HostInfo, Rig
from moe_studio.core.hardware.rpc import parse_endpoint, rpc_device
from moe_studio.core.units import GiB, parse_size


class ImportCommandDialog(QDialog):
    """Paste a llama-server command; the main window turns it into a pinned plan."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Import a llama-server command")
        layout = QVBoxLayout(self)
        layout.addWidget(
            QLabel(
                "Paste a command line (quotes, \\ line continuations, several -ot, --n-cpu-moe, "
                "-ts, --rpc … are understood). Every cell it decides is pinned."
            )
        )
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText(
            './llama-server -m model.gguf -ngl 999 -ot "exps=CPU" -c 32768'
        )
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(720, 260)

    def command(self) -> str:
        return self.text.toPlainText()


class _RigDialog(QDialog):
    """OK builds a changed :class:`Rig`; a bad entry is shown and the dialog stays open."""

    def __init__(self, rig: Rig, title: str, parent: QWidget | None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self._rig = rig
        self.result_rig: Rig | None = None
        self.error = QLabel()

    def build(self) -> Rig:
        raise NotImplementedError

    def _add_buttons(self, form: QFormLayout) -> None:
        form.addRow(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._on_accepted)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _on_accepted(self) -> None:
        try:
            self.result_rig = self.build()
        except MoeStudioError as exc:
            self.error.setText(f"<span style='color:#D55E00'>{exc}</span>")
            return
        self.accept()


class MachineDialog(_RigDialog):
    """ "Plan for another machine": GPU sizes, PCIe, RAM, cores."""

    def __init__(self, rig: Rig, parent: QWidget | None = None) -> None:
        super().__init__(rig, "Plan for another machine", parent)
        form = QFormLayout(self)
        gpus = ", ".join(f"{d.memory_total / GiB:g}" for d in rig.gpus) or "24"
        self.gpus = QLineEdit(gpus)
        self.gpus.setToolTip("Memory of each GPU in GiB, comma separated (empty for CPU only)")
        self.pcie_gen = QSpinBox()
        self.pcie_gen.setRange(1, 6)
        self.pcie_gen.setValue(next((d.pcie_gen for d in rig.gpus if d.pcie_gen), 4))
        self.pcie_width = QSpinBox()
        self.pcie_width.setRange(1, 16)
        self.pcie_width.setValue(next((d.pcie_width for d in rig.gpus if d.pcie_width), 16))
        self.ram = QDoubleSpinBox()
        self.ram.setRange(1, 65536)
        self.ram.setDecimals(0)
        self.ram.setSuffix(" GiB")
        self.ram.setValue(rig.host.ram_total / GiB)
        self.cores = QSpinBox()
        self.cores.setRange(1, 1024)
        self.cores.setValue(rig.host.cores_physical or 16)
        form.addRow("GPU memory (GiB each)", self.gpus)
        form.addRow("PCIe generation", self.pcie_gen)
        form.addRow("PCIe lanes", self.pcie_width)
        form.addRow("RAM", self.ram)
        form.addRow("Physical cores", self.cores)
        self._add_buttons(form)

    def build(self) -> Rig:
        sizes = [s.strip() for s in self.gpus.text().replace(";", ",").split(",") if s.strip()]
        devices = [d for d in self._rig.devices if d.kind is DeviceKind.RPC]
        for i, size in enumerate(sizes):
            memory = parse_size(size, default_unit="GiB")
            if memory <= 0:
                raise HardwareError(f"GPU {i} needs a positive memory size, not {size!r}.")
            devices.append(
                Device(
                    f"CUDA{i}",
                    DeviceKind.CUDA,
                    memory,
                    label=f"GPU {memory / GiB:g} GiB",
                    index=i,
                    pcie_gen=self.pcie_gen.value(),
                    pcie_width=self.pcie_width.value(),
                )
            )
        host = (
            replace(
                self._rig.host,
                ram_total=round(self.ram.value() * GiB),
                cores_physical=self.cores.value(),
            )
            if self._rig.host
            else HostInfo(round(self.ram.value() * GiB))
        )
        return Rig("another machine", host, tuple(devices), source="declared in MoE Studio")


class RpcDialog(_RigDialog):
    """Add an rpc-server endpoint with its memory."""

    def __init__(self, rig: Rig, parent: QWidget | None = None) -> None:
        super().__init__(rig, "Add an RPC device", parent)
        form = QFormLayout(self)
        self.endpoint = QLineEdit("192.168.1.20:50052")
        self.memory = QLineEdit("24GiB")
        form.addRow("rpc-server HOST:PORT", self.endpoint)
        form.addRow("Memory", self.memory)
        form.addRow(
            QLabel(
                "ik_llama.cpp and mainline RPC servers cannot talk to each other:\n"
                "use an rpc-server built from the same engine."
            )
        )
        self._add_buttons(form)

    def build(self) -> Rig:
        host, port = parse_endpoint(self.endpoint.text().strip())
        endpoint = f"{host}:{port}"
        device = rpc_device(
            endpoint, parse_size(self.memory.text(), default_unit="GiB"), label="RPC"
        )
        if self._rig.device(device.name) is not None:
            raise HardwareError(f"{device.name} is already in the rig.")
        rpc = [d for d in self._rig.devices if d.kind is DeviceKind.RPC] + [device]
        gpus = [d for d in self._rig.devices if d.kind is not DeviceKind.RPC]
        return self._rig.with_devices((*rpc, *gpus))
