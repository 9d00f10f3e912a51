"""Installed package versions, recorded in manifests so a result can be traced to its software."""

from __future__ import annotations

import platform
from importlib import metadata


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" when absent)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
