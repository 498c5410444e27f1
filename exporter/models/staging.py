"""Staging directories for atomic bundle writes, and the removal of ones a killed writer left.

A bundle is written into a hidden sibling directory and renamed into place. A writer
killed in between (SIGKILL, OOM, a node going away) leaves that directory behind, and a
models directory written every few hours would slowly fill the volume. Each staging
directory's name says which host and process made it, so the next save can tell a
leftover from a write in progress: one of ours whose process is gone is removed at once;
one from another host (a trainer pod sharing the volume) only once it is ``STALE_AFTER``
old, since a save takes seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER = 3600.0  # seconds
# ".<name>.staging-<host>-<pid>-<random>", and what earlier versions left: "<name>.old-<pid>"
# from a swap, "<name>.<8 random characters>" from tempfile.mkdtemp.
_LEFTOVER = re.compile(r"^\..+\.(staging-.+-(\d+)-[^-]+|old-\d+|[a-z0-9_]{8})$")
_in_use: set[Path] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def make_staging(target: Path) -> Path:
    """A fresh staging directory beside ``target``, after removing leftovers found there."""
    remove_leftovers(target.parent)
    prefix = f".{target.name}.staging-{_host()}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent)).resolve()
    _in_use.add(staging)
    return staging


def done_with(staging: Path) -> None:
    """The staging directory was renamed into place or removed."""
    _in_use.discard(staging.resolve())


def discard_staging(target: Path) -> None:
    """Remove every staging directory this process made for ``target``: its save failed or was
    interrupted, possibly between creating the directory and knowing its name."""
    prefix = f".{target.name}.staging-{_host()}-{os.getpid()}-"
    with contextlib.suppress(OSError):
        for child in target.parent.iterdir():
            if child.name.startswith(prefix):
                shutil.rmtree(child, ignore_errors=True)
                _in_use.discard(child.resolve())


def remove_leftovers(parent: Path) -> list[Path]:
    """Remove staging directories in ``parent`` that no live write owns; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            if child.is_dir() and not child.is_symlink() and _is_leftover(child):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    if removed:
        log.info(
            "removed staging directories left by interrupted writes",
            extra={"paths": [str(p) for p in removed]},
        )
    return removed


def _is_leftover(path: Path) -> bool:
    match = _LEFTOVER.match(path.name)
    if match is None or path.resolve() in _in_use:
        return False
    mine = f".staging-{_host()}-"
    if match.group(2) is not None and mine in path.name:
        pid = int(match.group(2))
        return pid == os.getpid() or not _alive(pid)
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
