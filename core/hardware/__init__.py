"""Hardware: GPUs (NVML), host RAM/CPU/NUMA, declared rigs, RPC devices, live sampling.

The values every plan is made for live in ``devices`` (:class:`Device`, :class:`Rig`). Detection
(``detect.detect_rig``) and declaration (``rigs.load_preset``, ``rigs.load_rig_file``) give the
same :class:`~moe_studio.core.hardware.devices.Rig`. Probing degrades instead of raising: what
could not be read is ``None`` or a note on the rig. Modules: ``nvml`` (GPUs), ``host`` (RAM,
cores, process trees), ``cpu`` (brand and flags), ``numa``, ``rigs`` (TOML rig files and
presets), ``rpc``, ``sampler`` (live readings), ``detect`` (all of it together). The ``hw``
subcommand is ``moe_studio.core.cli.hw``.
"""
