"""Kernels built ahead of time serve the daemon without numba, and agree with numba's.

Real builds and real processes: ``python -m exporter.precompile DIR`` compiles the module
(numba.pycc, the C compiler), then the daemon's work runs once on it and once compiled by numba
on first use (``FAILURE_PREDICTOR_KERNELS`` selects), each in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import compiled

WORK = """
import json, sys
import numpy as np
from exporter import kernels
from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.sources.simulate import SimulatedCluster, SimulateSource

bundle = load_bundle(BOOTSTRAP_MODEL)
settings = Settings(step=60, lookback=3600)
cluster = SimulatedCluster(targets=30, seed=3, incident_rate=10.0)
daemon = Daemon(settings, SimulateSource(cluster, window=60), bundle)
for _ in range(3):
    daemon.run_cycle()
snapshot = daemon.state.snapshot
x = np.random.default_rng(0).random((7, 60, 4), dtype=np.float32).transpose(0, 2, 1)  # float32, strided
print(json.dumps({
    "mode": kernels.MODE,
    "numba": sorted(name for name in ("numba", "llvmlite") if name in sys.modules),
    "probability": snapshot.probability.tolist(),
    "anomaly": snapshot.anomaly.tolist(),
    "contribution": np.nan_to_num(snapshot.contribution, nan=-1.0).ravel().tolist(),
    "stats": np.nan_to_num(kernels.series_stats(x, 10, 5), nan=-1.0).ravel().tolist(),
}))
"""


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != compiled.SELECT}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kernels")
    done = run(["-m", "exporter.precompile", str(directory)], cwd=directory)
    assert done.returncode == 0, done.stderr
    return directory


def test_ahead_of_time_kernels_serve_the_daemon_without_numba_as_numba_would(built: Path) -> None:
    ahead = run(["-c", WORK], cwd=built, **{compiled.SELECT: str(built)})
    jit = run(["-c", WORK], cwd=built, **{compiled.SELECT: "jit"})
    assert ahead.returncode == 0, ahead.stderr
    assert jit.returncode == 0, jit.stderr
    a, j = (json.loads(done.stdout.splitlines()[-1]) for done in (ahead, jit))

    assert a["mode"] == "ahead-of-time"
    assert a["numba"] == [], "serving imported numba although its kernels were built ahead of time"
    assert j["mode"].startswith("numba JIT") and j["numba"]
    for key in ("probability", "anomaly", "contribution", "stats"):
        assert len(a[key]) == len(j[key]) > 0
        assert a[key] == pytest.approx(j[key], rel=1e-9, abs=1e-12), key


def test_a_second_build_from_the_same_source_is_skipped(built: Path) -> None:
    before = compiled.module_file(built).stat().st_mtime_ns
    done = run(["-m", "exporter.precompile", str(built)], cwd=built)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert compiled.module_file(built).stat().st_mtime_ns == before


def stale_copy(built: Path, directory: Path) -> Path:
    """A copy of the build whose spec names another kernels.py."""
    shutil.copytree(built, directory)
    spec = json.loads((directory / compiled.SPEC).read_text())
    (directory / compiled.SPEC).write_text(json.dumps(spec | {"source": "0" * 64}))
    return directory


def test_kernels_built_from_other_source_or_altered_are_refused(built: Path, tmp_path: Path) -> None:
    digest = compiled.source_digest()
    stale, altered = stale_copy(built, tmp_path / "stale"), tmp_path / "altered"
    shutil.copytree(built, altered)
    with compiled.module_file(altered).open("r+b") as module:
        module.seek(4096)
        module.write(b"\x90" * 16)

    kernels, why = compiled.load(stale, digest)
    assert kernels is None and "built from another kernels.py" in why
    kernels, why = compiled.load(altered, digest)
    assert kernels is None and "does not match its spec" in why
    kernels, why = compiled.load(tmp_path / "empty", digest)
    assert kernels is None and "python -m exporter.precompile builds them" in why


def test_a_refused_build_falls_back_to_numba_and_says_why(built: Path, tmp_path: Path) -> None:
    stale = stale_copy(built, tmp_path / "stale")
    probe = "from exporter import kernels; print(kernels.MODE)"
    done = run(["-c", probe], cwd=tmp_path, **{compiled.SELECT: str(stale)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("numba JIT (") and "another kernels.py" in done.stdout


def test_precompile_refuses_extra_arguments(tmp_path: Path) -> None:
    result = run(["-m", "exporter.precompile", "a", "b"], cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python -m exporter.precompile [DIR]" in result.stderr
