"""Upgrades of profile files written by older MoE Studio versions: :data:`MIGRATIONS` converts a
document of schema ``n`` to ``n + 1``, :func:`migrate` runs the steps up to
:data:`SCHEMA_VERSION`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from moe_studio.core import __version__
from moe_studio.core.errors import ProfileError

SCHEMA_VERSION = 1

Json = Any
Migration = Callable[[dict[str, Json]], dict[str, Json]]

# Schema n → n + 1. Each function takes the whole document of schema n (a fresh copy it may
# change) and returns the document of schema n + 1; ``migrate`` updates "schema" itself.
# Schema 1 is the first; there is nothing to migrate yet.
MIGRATIONS: dict[int, Migration] = {}


def migrate(
    document: dict[str, Json],
    *,
    target: int | None = None,
    migrations: Mapping[int, Migration] | None = None,
) -> tuple[dict[str, Json], list[str]]:
    """Convert a profile document of an older schema to ``target`` (default: the current one).

    Args:
        document: A parsed profile whose ``schema`` is a whole number no greater than ``target``.
        target: The schema to reach; :data:`SCHEMA_VERSION` by default.
        migrations: Schema ``n`` → ``n + 1`` steps; :data:`MIGRATIONS` by default.

    Returns:
        The converted document (``document`` itself when it needed nothing) and notes saying
        what was converted.

    Raises:
        ProfileError: a step is missing or fails.
    """
    goal = SCHEMA_VERSION if target is None else target
    steps = MIGRATIONS if migrations is None else migrations
    start = document["schema"]
    version = start
    notes: list[str] = []
    while version < goal:
        step = steps.get(version)
        if step is None:
            raise ProfileError(
                f"Profiles of format {version} can no longer be read by this MoE Studio "
                f"({__version__}); open and save it with an earlier version first."
            )
        try:
            document = step(json.loads(json.dumps(document)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(
                f"The profile could not be converted from format {version} to {version + 1} "
                f"({type(exc).__name__}: {exc}); the file was not changed."
            ) from exc
        version += 1
        document["schema"] = version
    if version != start:
        notes.append(
            f"The profile was converted from format {start} to format {version}; saving it "
            f"writes format {version}, which MoE Studio before this version cannot read."
        )
    return document, notes
