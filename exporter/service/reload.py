"""Notice a newly activated model bundle and load it between cycles.

The watcher compares the bundle directory ``model.path`` resolves to (through
a models directory's ``active`` link) and its manifest's modification time with
what is serving. A bundle that fails to load is refused once per change, so a
bad bundle is counted and logged once, not every cycle, and the previous model
keeps serving.
"""

from __future__ import annotations

from pathlib import Path

from exporter.models.bundle import MANIFEST, BundleError, ModelBundle, load_bundle
from exporter.models.registry import resolve


def _identity(bundle_dir: Path) -> tuple[str, int]:
    manifest = bundle_dir / MANIFEST
    return str(bundle_dir.resolve()), manifest.stat().st_mtime_ns if manifest.exists() else 0


class ModelWatcher:
    def __init__(self, path: Path, serving: Path) -> None:
        self.path = path
        self._serving = _identity(serving)
        self._refused: tuple[str, int] | None = None

    def poll(self) -> ModelBundle | None:
        """The new bundle if the active one changed and loads; None if nothing changed.

        Raises BundleError (once per change) when the new bundle is refused.
        """
        try:
            candidate = resolve(self.path)
            identity = _identity(candidate)
        except (BundleError, OSError) as exc:
            identity = (f"unresolvable: {exc}", 0)
            if identity == self._refused:
                return None
            self._refused = identity
            raise BundleError(f"{self.path}: {exc}") from None
        if identity in (self._serving, self._refused):
            return None
        try:
            bundle = load_bundle(candidate)
        except BundleError:
            self._refused = identity
            raise
        self._serving = identity
        return bundle
