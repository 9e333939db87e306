"""Plans to profiles and back: :func:`profile_from_plan`, :func:`update_profile`,
:func:`plan_from_profile`, :func:`planner_from_profile`, and the check that a profile's model is
the file it was made for (:func:`check_model`, :func:`require_model`)."""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from moe_studio.core.errors import ProfileError
from moe_studio.core.gguf.model import ModelLayout
from moe_studio.core.gguf.tensors import GLOBAL_LAYER
from moe_studio.core.plan.placement import Plan, as_mapping, plan_from_mapping
from moe_studio.core.profiles.migrations import Json
from moe_studio.core.profiles.schema import (
    PROFILE_SUFFIX,
    ModelRef,
    Profile,
    now_utc,
    save_profile,
)
from moe_studio.core.units import format_bytes

if typing.TYPE_CHECKING:
    from moe_studio.core.plan.planning import Planner

log = logging.getLogger(__name__)


# --- to and from plans ---------------------------------------------------------------------------


def profile_from_plan(
    planner: Planner,
    plan: Plan,
    *,
    executable: str = "llama-server",
    name: str = "",
    notes: str = "",
    benchmarks: Sequence[Mapping[str, Json]] = (),
    now: datetime | None = None,
) -> Profile:
    """A new profile of ``plan`` as ``planner`` sees it (model, rig, settings, estimate)."""
    moment = now or now_utc()
    _, estimate = planner.estimate(plan)
    return Profile(
        model=ModelRef.of(planner.layout),
        placement=as_mapping(planner.layout, plan),
        settings=planner.settings,
        rig=planner.rig,
        pinned=plan.pinned,
        engine=executable,
        name=name,
        notes=notes,
        benchmarks=tuple(benchmarks),
        fits=estimate.fits,
        created=moment,
        modified=moment,
    )


def update_profile(
    profile: Profile, planner: Planner, plan: Plan, *, executable: str | None = None
) -> Profile:
    """``profile`` with the model, plan, settings, rig and verdict of ``planner`` and ``plan``.

    Name, notes, benchmark results, the creation time and keys this version does not know are
    kept (saving an opened profile); ``executable`` replaces the engine when given.
    """
    fresh = profile_from_plan(
        planner, plan, executable=executable or profile.engine, now=profile.modified
    )
    model = fresh.model
    if not model.url and profile.model.url and model.identity == profile.model.identity:
        # Bound to a download of the remote model it was planned from: remember where from.
        model = replace(model, url=profile.model.url)
    return replace(
        profile,
        model=model,
        placement=fresh.placement,
        settings=fresh.settings,
        rig=fresh.rig,
        pinned=fresh.pinned,
        engine=fresh.engine,
        fits=fresh.fits,
    )


def check_model(profile: Profile, layout: ModelLayout) -> str | None:
    """``None`` when ``layout`` is the model the profile was made for, else a sentence saying
    what differs (architecture, tensor count, bytes, tensor table)."""
    want = profile.model
    have = ModelRef.of(layout)
    differences: list[str] = []
    if have.architecture != want.architecture:
        differences.append(f"its architecture is {have.architecture}, not {want.architecture}")
    if have.tensor_count != want.tensor_count:
        differences.append(f"it has {have.tensor_count} tensors, not {want.tensor_count}")
    if have.total_bytes != want.total_bytes:
        now_text, then_text = format_bytes(have.total_bytes), format_bytes(want.total_bytes)
        if now_text == then_text:
            now_text, then_text = f"{have.total_bytes:,} bytes", f"{want.total_bytes:,} bytes"
        differences.append(f"its tensors take {now_text}, not {then_text}")
    if have.identity != want.identity and not differences:
        differences.append(
            "the type or shape of some tensors changed (it was re-quantized or converted again)"
        )
    elif have.identity != want.identity:
        differences.append("its tensor table differs")
    if not differences:
        return None
    return (
        f"The model {layout.source} is not the one this profile was made for: "
        f"{'; '.join(differences)}. Plan it again, or point the profile at the original file."
    )


def require_model(profile: Profile, layout: ModelLayout) -> None:
    """Raise :class:`ProfileError` with :func:`check_model`'s sentence when the model changed."""
    problem = check_model(profile, layout)
    if problem:
        raise ProfileError(problem)


def plan_from_profile(profile: Profile, layout: ModelLayout) -> Plan:
    """The profile's placement and pins as a :class:`Plan` of ``layout``.

    Raises:
        ProfileError: the profile names tensors or cells the model lacks, or leaves loaded
            tensors of the model without a device.
    """
    loaded = {t.name for t in layout.tensors if t.loaded}
    known = {t.name for t in layout.tensors}
    unknown = sorted(set(profile.placement) - known)
    if unknown:
        raise ProfileError(
            f"The profile places {len(unknown)} tensor(s) that {layout.name} does not have "
            f"({_some(unknown)}); it was made for another model.",
            details="\n".join(unknown),
        )
    missing = sorted(loaded - set(profile.placement))
    if missing:
        raise ProfileError(
            f"The profile gives no device to {len(missing)} tensor(s) of {layout.name} "
            f"({_some(missing)}); it was made for another model.",
            details="\n".join(missing),
        )
    bad_cells = sorted(c for c in profile.pinned if c not in layout.cells)
    if bad_cells:
        layer, group = bad_cells[0]
        where = "the global row" if layer == GLOBAL_LAYER else f"layer {layer}"
        raise ProfileError(
            f"The profile pins a {group.label} cell in {where}, which {layout.name} does not "
            "have; it was made for another model."
        )
    return plan_from_mapping(layout, dict(profile.placement), profile.pinned)


def planner_from_profile(profile: Profile, layout: ModelLayout) -> tuple[Planner, Plan]:
    """A :class:`~moe_studio.core.plan.planning.Planner` (profile's rig and settings) and the
    profile's plan.

    Raises:
        ProfileError: see :func:`plan_from_profile`.
    """
    from moe_studio.core.plan.planning import Planner

    return Planner(layout, profile.rig, profile.settings), plan_from_profile(profile, layout)


def _some(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def save_profile_from_plan(
    path: str | os.PathLike[str], planner: Planner, plan: Plan, *, executable: str
) -> Profile:
    """Write ``plan`` as a new profile named after the file (``plan --save FILE``).

    Raises:
        ProfileError: the file cannot be written.
    """
    name = Path(path).name.removesuffix(PROFILE_SUFFIX)
    return save_profile(path, profile_from_plan(planner, plan, executable=executable, name=name))


def bind_model(profile: Profile, layout: ModelLayout) -> Profile:
    """The profile pointed at ``layout``, a local copy of the model it was planned for (a
    download of the remote model it was made from, or the file moved); placement, pins and
    settings are kept, and so is the URL it was planned from.

    Raises:
        ProfileError: ``layout`` is another model (:func:`check_model`'s sentence).
    """
    require_model(profile, layout)
    url = profile.model.url or (profile.model.source if profile.model.is_remote else "")
    model = replace(ModelRef.of(layout), url=url, name=profile.model.name or layout.name)
    return replace(profile, model=model)


def require_local(profile: Profile, where: str = "the profile") -> None:
    """Refuse a profile that still names a remote model, saying how to get the file.

    Raises:
        ProfileError: the profile's model is remote.
    """
    if not profile.model.is_remote:
        return
    from moe_studio.core.remote.quants import download_hint

    command, path = download_hint(profile.model.source)
    raise ProfileError(
        f"{where} was planned from the remote model {profile.model.source}; running it needs the "
        f"files on disk. Download them ({command}), then name the local file: "
        f"moe-studio launch {where} --gguf {path} (the profile is bound to it, keeping its plan)."
    )
