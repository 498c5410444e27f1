"""Kernels compiled once (as the image build does) load in a fresh process instead of compiling.

Two real processes: one runs ``python -m exporter.precompile`` into a directory, the other
starts with an empty ``NUMBA_CACHE_DIR`` seeded from it (``FAILURE_PREDICTOR_KERNEL_CACHE``,
as the image sets it) and does the daemon's work: every kernel comes from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LOADED = """
import json
from numba.core.registry import CPUDispatcher
from exporter import kernels
from exporter.precompile import compile_kernels
missing = compile_kernels()
public = [k for n, k in vars(kernels).items() if isinstance(k, CPUDispatcher) and not n.startswith("_")]
print(json.dumps({
    "missing": missing,
    "kernels": len(public),
    "hits": sum(sum(k.stats.cache_hits.values()) for k in public),
    "misses": sum(sum(k.stats.cache_misses.values()) for k in public),
}))
"""


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FAILURE_PREDICTOR_KERNEL_CACHE")
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=600
    )


def test_a_process_seeded_from_precompiled_kernels_compiles_none(tmp_path: Path) -> None:
    shipped, writable = tmp_path / "shipped", tmp_path / "numba"
    built = run(["-m", "exporter.precompile", str(shipped)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert any(shipped.rglob("*.nbi")), "precompile wrote no cache index"

    started = run(
        ["-c", LOADED],
        cwd=tmp_path,
        NUMBA_CACHE_DIR=str(writable),
        FAILURE_PREDICTOR_KERNEL_CACHE=str(shipped),
    )
    assert started.returncode == 0, started.stderr
    report = json.loads(started.stdout.splitlines()[-1])
    assert report["missing"] == []
    assert report["misses"] == 0, "a kernel compiled although the image shipped it"
    assert report["hits"] >= report["kernels"] > 0
    assert sorted(p.name for p in writable.rglob("*") if p.is_file()) == sorted(
        p.name for p in shipped.rglob("*") if p.is_file()
    ), "the seed was copied whole, no partial file left"


def test_precompile_refuses_a_call_without_its_directory(tmp_path: Path) -> None:
    result = run(["-m", "exporter.precompile"], cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python -m exporter.precompile DIR" in result.stderr
