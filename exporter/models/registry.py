"""A models directory: one bundle per version, and an ``active`` link to the serving one.

    models/
      20261125T101500Z-3f2a9c/   a bundle (manifest.json, classifier.ubj, detector.npz)
      20261126T101500Z-81bd04/
      active -> 20261126T101500Z-81bd04

Bundles are written with ``save_bundle`` (temp dir + rename) and the link is
replaced with a rename too, so the daemon sees the old or the new version,
never a mix. ``model.path`` may name a models directory or a single bundle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from exporter.models.bundle import MANIFEST, BundleError, load_bundle

ACTIVE = "active"


@dataclass(frozen=True)
class Version:
    name: str
    path: Path
    active: bool
    kind: str
    trained_at: str
    metrics: dict


def resolve(path: Path) -> Path:
    """The bundle directory ``path`` stands for: the target of its ``active`` link, or itself."""
    link = path / ACTIVE
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if not target.is_dir():
            raise BundleError(f"{link} points at {target}, which is not a bundle directory")
        return target
    return path


def list_versions(directory: Path) -> list[Version]:
    """Every bundle in the directory, oldest first (version names sort by time)."""
    if not directory.is_dir():
        raise BundleError(f"{directory} is not a models directory")
    active = resolve(directory) if (directory / ACTIVE).is_symlink() else None
    versions = []
    for child in sorted(directory.iterdir()):
        manifest = child / MANIFEST
        if child.name.startswith(".") or child.name == ACTIVE or not manifest.is_file():
            continue
        try:
            raw = json.loads(manifest.read_text())
        except ValueError:
            raw = {}
        versions.append(
            Version(
                name=child.name,
                path=child,
                active=active is not None and child.resolve() == active,
                kind=str(raw.get("kind", "?")),
                trained_at=str(raw.get("trained_at", "?")),
                metrics=raw.get("metrics", {}) if isinstance(raw.get("metrics"), dict) else {},
            )
        )
    return versions


def activate(directory: Path, version: str) -> Path:
    """Point ``active`` at a version, atomically (a new link renamed over the old one).

    The bundle is loaded in full first (checksums, features, both models): a link to a
    bundle that cannot load would make the next start exit, a crash loop. On BundleError
    ``active`` still points where it did.
    """
    target = directory / version
    if not (target / MANIFEST).is_file():
        known = ", ".join(v.name for v in list_versions(directory)) or "none"
        raise BundleError(f"no bundle {version!r} in {directory} (versions: {known})")
    load_bundle(target)
    staging = directory / f".{ACTIVE}.{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(version)
    staging.rename(directory / ACTIVE)
    return target
