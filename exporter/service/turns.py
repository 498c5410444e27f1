"""The scoring cycle and background replays take turns, the cycle first.

A warm-up replays history chunk by chunk in its own thread (service/warmup.py) so /metrics and
/readyz answer meanwhile. Run at the same moment as a cycle, the two working sets add up: at
10,000 targets a chunk's answers, array and scores (~60 MB) on top of a cycle's (~60 MB) set
the daemon's peak RSS (360 MB measured, against 300 MB for either alone). Taking turns, a cycle
waits at most for the chunk under way (a few seconds at 10,000 targets), and a replay never
starts a chunk while a cycle waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """``first()`` for the cycle, ``after()`` for each piece of background work."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False
        self._waiting = 0  # cycles waiting for their turn

    @contextmanager
    def first(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: not self._busy)
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def after(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._busy and not self._waiting)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()
