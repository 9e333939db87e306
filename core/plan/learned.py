"""Learning from measurements: compute buffers this machine's engine printed, applied to estimates.

Every probe and every launch that got as far as its buffers leaves a calibration record
(:mod:`moe_studio.core.engine.calibration`): per device, our compute estimate then and the
engine's figure. For the same model and engine (the caller filters by those), this module
corrects a new estimate device by device:

* the **same configuration** (every memory-shaping setting equal, and our estimate for the device
  unchanged, so the placement is the same): the compute buffer *is* the measured figure, marked
  :attr:`~moe_studio.core.plan.memory.ComputeSource.MEASURED`, with no error band;
* **nearby settings** — only ``-c``, ``-ub``, ``-b`` and the cache types differ (flash attention,
  ``-mla``, ``-amb``, slots and ``-sm graph`` equal): the model's own estimate for the new
  settings times the measured/estimated ratio of that device's compute term, marked
  :attr:`~moe_studio.core.plan.memory.ComputeSource.SCALED`; it keeps the error band, since the
  terms that grow with those settings may not share the ratio.

The latest record wins among equals; an exact match wins over a nearby one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from moe_studio.core.plan.memory import ComputeSource, Estimate
from moe_studio.core.plan.settings import Settings

# Settings whose change reshapes the graph: a record with other values says nothing here.
SHAPE_KEYS = ("dialect", "flash_attn", "mla", "amb", "parallel", "split_mode_graph", "no_mmap")
# Settings the model's terms scale with: a record that differs only in these is "nearby".
SCALED_KEYS = ("ctx", "ubatch", "batch", "cache_type_k", "cache_type_v")


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    """One run's compute buffers: settings (``Settings.to_dict`` keys), then device → bytes."""

    settings: Mapping[str, object]
    predicted: Mapping[str, int]
    actual: Mapping[str, int]
    when: str = ""


def _same(a: Mapping[str, object], b: Mapping[str, object], keys: Sequence[str]) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


@dataclass(frozen=True, slots=True)
class Learned:
    """The measured runs of one model on one engine, oldest first."""

    runs: tuple[MeasuredRun, ...] = ()

    def pick(self, settings: Settings) -> tuple[MeasuredRun, bool] | None:
        """The run to learn from for ``settings`` and whether its settings are the same."""
        now = settings.to_dict()
        nearby = [r for r in self.runs if _same(r.settings, now, SHAPE_KEYS)]
        exact = [r for r in nearby if _same(r.settings, now, SCALED_KEYS)]
        if exact:
            return exact[-1], True
        if nearby:
            return nearby[-1], False
        return None

    def correct(self, est: Estimate, settings: Settings) -> Estimate:
        """``est`` with each measured device's compute buffer learned (see the module docstring)."""
        picked = self.pick(settings)
        if picked is None:
            return est
        run, same_settings = picked
        devices = []
        for d in est.devices:
            predicted, actual = run.predicted.get(d.name), run.actual.get(d.name)
            if not predicted or actual is None or not d.compute:
                devices.append(d)
                continue
            # The engine's figure lacks what it allocates only at run time (-sm graph's copied
            # inputs), and so does the estimate it was compared with: that part stays estimated.
            unprinted = d.unprinted_compute
            if same_settings and d.printed_compute == predicted:
                devices.append(
                    replace(
                        d,
                        compute=actual + unprinted,
                        margin=0,
                        compute_source=ComputeSource.MEASURED,
                    )
                )
                continue
            scaled = d.printed_compute * actual // predicted + unprinted
            margin = d.margin * actual // predicted
            devices.append(
                replace(d, compute=scaled, margin=margin, compute_source=ComputeSource.SCALED)
            )
        return replace(est, devices=tuple(devices))
