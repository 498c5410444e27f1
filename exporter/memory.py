"""Give large transient buffers back to the operating system as soon as they are freed, and
keep the garbage collector off work that makes many short-lived objects without cycles.

A whole-window answer at 10,000 targets is a 15 MB body that decodes through ~3x that
in temporaries. glibc raises its mmap threshold after the first such buffer is freed,
so later ones come from per-thread heaps that keep the memory: +150 MB of RSS after
one full fetch at 10,000 targets, measured with benchmarks/cycle.py. Pinning the
threshold at glibc's initial 128 KiB keeps large buffers mmapped (freed = returned);
small objects are unaffected. And at most two heaps (arenas) for all threads: each thread
otherwise gets one of its own, which keeps what that thread freed for itself (the warm-up
thread's, the kernels' and the API's), 14 MB of peak RSS at 10,000 targets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_THRESHOLD_BYTES = 128 * 1024
_ARENAS = 2


def return_large_buffers() -> bool:
    """Pin glibc's mmap threshold and bound its arenas (threads started later share them);
    False where the C library is not glibc (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)) and bool(mallopt(_M_ARENA_MAX, _ARENAS))


@contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection in the block (off already: it stays off), for code that
    makes many objects holding no cycles: reference counting frees them, and the collector's
    passes over them (full ones over every object of the process) would only cost time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
