"""Hardware: GPUs (NVML), host RAM/CPU/NUMA, declared rigs, RPC devices, live sampling.

Detection (:func:`detect_rig`) and declaration (:func:`load_preset`, :func:`load_rig_file`) give
the same :class:`core.devices.Rig`. Probing degrades instead of raising: what could not be read is
``None`` or a note on the rig. Modules: ``nvml`` (GPUs), ``host`` (RAM, cores, process trees),
``cpu`` (brand and flags), ``numa``, ``rigs`` (TOML rig files and presets), ``rpc``, ``sampler``
(live readings), ``detect`` (all of it together), ``cli`` (``moe-studio hw``).
"""

from moe_studio.core.hardware.detect import HardwareReport, detect_rig, probe_hardware
from moe_studio.core.hardware.host import ProcessSample
from moe_studio.core.hardware.rigs import list_presets, load_preset, load_rig_file, parse_rig
from moe_studio.core.hardware.rpc import RpcCheck, RpcStatus, check_endpoint, rpc_device
from moe_studio.core.hardware.sampler import GpuSample, Sample, Sampler

__all__ = [
    "GpuSample",
    "HardwareReport",
    "ProcessSample",
    "RpcCheck",
    "RpcStatus",
    "Sample",
    "Sampler",
    "check_endpoint",
    "detect_rig",
    "list_presets",
    "load_preset",
    "load_rig_file",
    "parse_rig",
    "probe_hardware",
    "rpc_device",
]
