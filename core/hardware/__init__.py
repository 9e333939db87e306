"""Hardware: GPUs (NVML), host RAM/CPU/NUMA, declared rigs, RPC devices, live sampling."""
