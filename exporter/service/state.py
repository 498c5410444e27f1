"""What the scoring cycle publishes and the readers (collector, HTTP API) read.

Each attribute is replaced whole, never mutated, so readers need no locks.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.models.bundle import ModelBundle
from exporter.snapshot import Snapshot


@dataclass
class State:
    bundle: ModelBundle | None = None
    snapshot: Snapshot | None = None
    last_success: float | None = None
    last_error: str | None = None
