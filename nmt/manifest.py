"""The ``manifest.json`` that every prepared dataset and every bundle carries, one way.

A manifest says what the directory holds and how it was made, so a result can be traced to its
data and software. Every one starts with the same keys: ``task`` (``translation``, ``char_lm``,
``classify``), ``created`` (UTC, ISO 8601) and ``packages`` (Python's version and each named
distribution's); the writer adds its own fields after them.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"


def new_manifest(task: str, packages: tuple[str, ...], **fields: Any) -> dict[str, Any]:
    """The common keys, then ``fields`` in the order given."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"task": task, "created": created, "packages": package_versions(packages), **fields}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """``directory/manifest.json``, indented, UTF-8 kept readable."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" when absent)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
