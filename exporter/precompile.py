"""Compile every kernel into a numba cache directory once, for an image to ship.

    python -m exporter.precompile DIR

A fresh process compiles exporter/kernels.py on first use: ~10 s on 2 cores and ~90 MB more
at the first cycle's peak while LLVM runs, paid again by every pod a rollout or a node drain
creates (its cache directory, an emptyDir, starts empty). The Dockerfile runs this at build
time; the image names DIR in ``FAILURE_PREDICTOR_KERNEL_CACHE`` and kernels.py copies the
entries into the writable ``NUMBA_CACHE_DIR`` at start. What compiles them is the daemon's own
work (two cycles over a simulated cluster, explanations included, a Prometheus range answer and
a prediction body decoded), so the cached signatures are the ones serving asks for. numba keys
an entry by the CPU it was compiled for: on another CPU model the kernels compile as without
the cache.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def compile_kernels() -> list[str]:
    """Run the work that calls every kernel; returns the public kernels it left without a
    compiled signature (loaded from the cache counts as compiled)."""
    from numba.core.registry import CPUDispatcher

    from exporter import kernels
    from exporter.config import BOOTSTRAP_MODEL, Settings
    from exporter.models.bundle import load_bundle
    from exporter.service.daemon import Daemon
    from exporter.service.predict import windows
    from exporter.sources.matrix import decode_matrix
    from exporter.sources.simulate import SimulatedCluster, SimulateSource

    bundle = load_bundle(BOOTSTRAP_MODEL)
    manifest = bundle.manifest
    settings = Settings.model_validate(
        {"step": manifest.step_seconds, "lookback": manifest.step_seconds * manifest.window_steps}
    )
    cluster = SimulatedCluster(targets=40, seed=1, step=settings.step, incident_rate=10.0)
    daemon = Daemon(settings, SimulateSource(cluster, window=manifest.window_steps), bundle)
    daemon.run_cycle()
    daemon.run_cycle()
    answer = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"pod": "a"}, "values": [[1700000000, "0.5"], [1700000060, "0.25"]]}],
        },
    }
    decode_matrix(json.dumps(answer, separators=(",", ":")).encode())
    observation = {"signals": {signal: [0.5] * manifest.window_steps for signal in manifest.signals}}
    windows(json.dumps([observation]).encode(), bundle, max_batch=1, default_step=settings.step)
    return sorted(  # the private helpers are compiled into their callers
        name
        for name, kernel in vars(kernels).items()
        if isinstance(kernel, CPUDispatcher) and not name.startswith("_") and not kernel.signatures
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m exporter.precompile DIR", file=sys.stderr)
        return 2
    if "numba" in sys.modules:
        print("error: numba was imported before the cache directory could be set", file=sys.stderr)
        return 1
    directory = Path(args[0]).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(directory)
    os.environ.pop("FAILURE_PREDICTOR_KERNEL_CACHE", None)  # compile, do not seed from elsewhere
    missing = compile_kernels()
    if missing:
        print(f"error: kernels not compiled by the daemon's work: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"kernels compiled into {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
