"""Progress for long work: a live line on a terminal, a line per tenth otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def reporter(label: str, stream: TextIO = sys.stderr) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that prints rate and percentage."""
    started = time.monotonic()
    last_tenth = -1
    live = stream.isatty()

    def report(done: int, total: int) -> None:
        nonlocal last_tenth
        fraction = done / total if total else 1.0
        tenth = int(fraction * 10)
        if not live and tenth == last_tenth and done < total:
            return
        last_tenth = tenth
        elapsed = time.monotonic() - started
        line = f"{label}: {done:,}/{total:,} ({fraction:.0%}, {elapsed:.1f}s)"
        stream.write(("\r" + line + ("\n" if done >= total else "")) if live else line + "\n")
        stream.flush()

    return report
