"""The rig dialogs: OK builds the changed rig; a bad entry is shown and the dialog stays open."""

from __future__ import annotations

from moe_studio.core.hardware.devices import DeviceKind
from moe_studio.core.units import GiB
from moe_studio.gui.dialogs import MachineDialog, RpcDialog

from .conftest import rig_of


def test_machine_dialog_builds_the_declared_gpus(qtbot: object) -> None:
    dialog = MachineDialog(rig_of(24))
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    dialog.gpus.setText("24, 16")
    dialog.ram.setValue(512)
    dialog._on_accepted()
    assert dialog.result() == MachineDialog.DialogCode.Accepted
    assert dialog.result_rig is not None
    assert [d.memory_total for d in dialog.result_rig.gpus] == [24 * GiB, 16 * GiB]
    assert dialog.result_rig.host.ram_total == 512 * GiB


def test_machine_dialog_keeps_a_bad_size_open_with_the_reason(qtbot: object) -> None:
    dialog = MachineDialog(rig_of(24))
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    dialog.gpus.setText("24, lots")
    dialog._on_accepted()
    assert dialog.result_rig is None
    assert dialog.result() != MachineDialog.DialogCode.Accepted
    assert "'lots' is not a size" in dialog.error.text()


def test_rpc_dialog_adds_the_endpoint_before_the_gpus(qtbot: object) -> None:
    dialog = RpcDialog(rig_of(24))
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    dialog.endpoint.setText("10.0.0.2:50052")
    dialog.memory.setText("48GiB")
    dialog._on_accepted()
    rig = dialog.result_rig
    assert rig is not None
    assert [d.kind for d in rig.devices] == [DeviceKind.RPC, DeviceKind.CUDA]
    assert rig.devices[0].memory_total == 48 * GiB


def test_rpc_dialog_refuses_an_endpoint_without_a_port(qtbot: object) -> None:
    dialog = RpcDialog(rig_of(24))
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    dialog.endpoint.setText("10.0.0.2")
    dialog._on_accepted()
    assert dialog.result_rig is None
    assert "is not an RPC endpoint" in dialog.error.text()
