"""The installed versions of Python distributions (no import of the packages themselves)."""

from __future__ import annotations

import importlib.metadata


def installed_versions(names: list[str]) -> dict[str, str | None]:
    """The installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
