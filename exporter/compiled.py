"""The kernels compiled ahead of time: find them, check they match the source, load them.

numba compiling on first use costs the daemon ~130 MB for as long as it runs (numba's typing
and lowering registries, LLVM's code mapped in) and ~10 s of CPU per fresh process. Compiled
once ahead of time (``python -m exporter.precompile``), the same kernels are one ~1 MB
extension module that needs numpy alone. It is used only when built from this very
``kernels.py`` (its SHA-256 is in the spec written beside the module, as is the module's own),
so an edited kernel never runs stale code; otherwise, or with ``FAILURE_PREDICTOR_KERNELS=jit``,
kernels.py compiles with numba on first use, as it always could.

Compiled code trusts its arguments' types blindly (an int64 array read as float64 is garbage,
not an error), so every kernel loaded here converts its arrays to the dtype and layout its
signature was built for, which costs nothing when they already are.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODULE = "_kernels"  # the extension module's name: exporter/_kernels<EXT_SUFFIX>
SPEC = f"{MODULE}.json"  # beside it: digests and each kernel's argument types
KERNELS_SOURCE = Path(__file__).with_name("kernels.py")
SELECT = "FAILURE_PREDICTOR_KERNELS"  # "jit": compile on first use; a directory: load from there


def source_digest(source: Path = KERNELS_SOURCE) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def module_file(directory: Path) -> Path:
    return directory / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"


def load(directory: Path, digest: str) -> tuple[dict[str, Callable] | None, str]:
    """The kernels built in ``directory`` from the source with ``digest``, by name, and ``""``;
    or ``None`` and why they cannot be used (absent, built from other source, altered)."""
    spec_path, path = directory / SPEC, module_file(directory)
    if not spec_path.is_file() or not path.is_file():
        return None, f"no ahead-of-time kernels in {directory} (python -m exporter.precompile builds them)"
    try:
        spec = json.loads(spec_path.read_text())
        if spec["source"] != digest:
            return (
                None,
                f"{path.name} was built from another kernels.py (python -m exporter.precompile rebuilds it)",
            )
        if hashlib.sha256(path.read_bytes()).hexdigest() != spec["module"]:
            return None, f"{path.name} does not match its spec {spec_path.name}: rebuild it"
        module = _import(path)
        return {
            name: _converting(getattr(module, name), name, args) for name, args in spec["kernels"].items()
        }, ""
    except (OSError, ImportError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"ahead-of-time kernels in {directory} unusable: {exc}"


def selected() -> tuple[dict[str, Callable] | None, str]:
    """What kernels.py should use: the ahead-of-time kernels unless ``FAILURE_PREDICTOR_KERNELS``
    says ``jit``; they are looked for in the directory it names, else beside this file."""
    choice = os.environ.get(SELECT, "")
    if choice == "jit":
        return None, f"{SELECT}=jit"
    return load(Path(choice) if choice else KERNELS_SOURCE.parent, source_digest())


def _import(path: Path) -> object:
    loader = importlib.machinery.ExtensionFileLoader(f"exporter.{MODULE}", str(path))
    spec = importlib.util.spec_from_file_location(f"exporter.{MODULE}", path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _converting(kernel: Callable, name: str, args: list[dict | None]) -> Callable:
    """``kernel`` with each array argument made the dtype (and, where the signature says so,
    C-contiguous) it was compiled for; scalars are converted by the module itself."""
    arrays = [(i, np.dtype(a["dtype"]), a["ndim"], a["contiguous"]) for i, a in enumerate(args) if a]

    def call(*values: object) -> object:
        values = list(values)
        for i, dtype, ndim, contiguous in arrays:
            array = np.ascontiguousarray(values[i], dtype) if contiguous else np.asarray(values[i], dtype)
            if array.ndim != ndim:
                raise TypeError(f"{name}: argument {i} has {array.ndim} dimensions, the kernel takes {ndim}")
            values[i] = array
        return kernel(*values)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = kernel.__doc__
    return call
