"""Build the kernels ahead of time: one extension module beside kernels.py for every process to load.

    python -m exporter.precompile [DIR]     # default: the package's own directory

Without it each process compiles exporter/kernels.py with numba on first use: ~10 s of CPU on
2 cores, and numba's runtime stays loaded, ~130 MB of the daemon's memory for as long as it runs.
Built here (numba.pycc), the kernels are an extension module that needs numpy alone and is used
whenever it matches the source (exporter/compiled.py). What compiles them is the daemon's own
work (two cycles over a simulated cluster, explanations included, a Prometheus range answer and
a prediction body decoded), so the signatures built are the ones serving calls; each public
kernel has exactly one. The code is generic for the machine's architecture (x86-64, arm64), so
an image built on one machine runs on any other of that architecture. Building needs C and C++
compilers (numba's runtime is C++) and Python's headers (gcc, g++, python3-dev); a module built
from the same source is left as it is. The image build, scripts/test and scripts/demo run this.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter import compiled


def compile_kernels() -> dict[str, Callable]:
    """Run the work that calls every kernel, compiled by numba on first use; returns the public
    kernels (numba dispatchers) by name."""
    from numba.core.registry import CPUDispatcher

    from exporter import kernels
    from exporter.config import BOOTSTRAP_MODEL, Settings
    from exporter.models.bundle import load_bundle
    from exporter.service.daemon import Daemon
    from exporter.service.predict import windows
    from exporter.sources.matrix import decode_matrix
    from exporter.sources.simulate import SimulatedCluster, SimulateSource

    if kernels.AHEAD_OF_TIME is not None:
        raise RuntimeError(f"kernels were loaded ahead of time, not compiled: set {compiled.SELECT}=jit")
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
    return {  # the private helpers are compiled into their callers
        name: kernel
        for name, kernel in vars(kernels).items()
        if isinstance(kernel, CPUDispatcher) and not name.startswith("_")
    }


def build(directory: Path) -> Path:
    """Compile every public kernel with the signature the daemon's work gave it into
    ``directory``'s extension module, and write its spec; returns the module's path."""
    with warnings.catch_warnings():  # numba.pycc is "pending deprecation", with no replacement yet
        warnings.simplefilter("ignore")
        from numba.pycc import CC

    digest = compiled.source_digest()
    kernels = compile_kernels()
    odd = sorted(name for name, kernel in kernels.items() if len(kernel.nopython_signatures) != 1)
    if odd:
        raise RuntimeError(f"kernels without exactly one signature from the daemon's work: {', '.join(odd)}")
    signatures = {name: kernel.nopython_signatures[0] for name, kernel in kernels.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".precompile-") as work:
        module = CC(compiled.MODULE)
        module.output_dir = work
        module.output_file = compiled.module_file(Path(work)).name
        for name, kernel in kernels.items():
            module.export(name, signatures[name])(kernel.py_func)
        with _kernel_options({kernel.py_func: kernel.targetoptions for kernel in kernels.values()}):
            module.compile()
        built, target = compiled.module_file(Path(work)), compiled.module_file(directory)
        spec = {
            "source": digest,
            "module": hashlib.sha256(built.read_bytes()).hexdigest(),
            "kernels": {name: [_argument(t) for t in signatures[name].args] for name in sorted(kernels)},
        }
        os.replace(
            built, target
        )  # the spec last: a reader in between sees a mismatch and compiles on first use
        (Path(work) / compiled.SPEC).write_text(json.dumps(spec, indent=1) + "\n")
        os.replace(Path(work) / compiled.SPEC, directory / compiled.SPEC)
    return target


@contextmanager
def _kernel_options(options: dict[Callable, dict]) -> Iterator[None]:
    """numba.pycc compiles every export with default flags: the GIL held, Python's error model.
    Give each kernel what kernels.py compiles it with on first use (nogil, error_model) by
    wrapping the one compile call pycc makes per export."""
    import numba.pycc.compiler as pycc_compiler

    original = pycc_compiler.compile_extra

    def compile_extra(typingctx, targetctx, func, args, return_type, flags, locals, library):
        flags.release_gil = True
        flags.error_model = options[func].get("error_model", "python")
        return original(typingctx, targetctx, func, args, return_type, flags, locals=locals, library=library)

    pycc_compiler.compile_extra = compile_extra
    try:
        yield
    finally:
        pycc_compiler.compile_extra = original


def _argument(numba_type: object) -> dict | None:
    """What exporter/compiled.py converts an argument to before the call: arrays only."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if not isinstance(numba_type, types.Array):
        return None
    return {
        "dtype": as_dtype(numba_type.dtype).str,
        "ndim": numba_type.ndim,
        "contiguous": numba_type.layout == "C",
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(arg.startswith("-") for arg in args):
        print("usage: python -m exporter.precompile [DIR]", file=sys.stderr)
        return 2
    directory = Path(args[0]).resolve() if args else compiled.KERNELS_SOURCE.parent
    loaded, _ = compiled.load(directory, compiled.source_digest())
    if loaded is not None:
        print(f"kernels in {compiled.module_file(directory)} are up to date")
        return 0
    os.environ[compiled.SELECT] = "jit"
    try:
        target = build(directory)
    except Exception as exc:  # a compiler, headers or permission missing: say so, in one line
        print(f"error: cannot build the kernels ahead of time: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    loaded, why = compiled.load(directory, compiled.source_digest())
    if loaded is None:
        print(f"error: the kernels built do not load: {why}", file=sys.stderr)
        return 1
    print(f"kernels compiled ahead of time into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
