"""Installing as a new user does: the README's demo command from a fresh copy of the checkout with
Debian's own externally managed (PEP 668) ``python3`` first on PATH, and the built wheel run from
outside the checkout. Both install the real dependencies (from the configured package index), so
this module takes about a minute."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import free_port

from exporter import __version__

REPO = Path(__file__).resolve().parent.parent


def externally_managed_python() -> Path:
    """Debian's /usr/bin/python3, which refuses ``pip install`` outside a virtualenv (PEP 668)."""
    python = Path("/usr/bin/python3")
    if python.exists():
        stdlib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if (Path(stdlib) / "EXTERNALLY-MANAGED").exists():
            return python
    reason = "no externally managed /usr/bin/python3 (Debian 12 or Ubuntu 24.04 has one)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def fresh_copy(destination: Path) -> Path:
    """The files a clone of this checkout would have (tracked and not ignored), without any .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@dataclass(frozen=True)
class Clone:
    root: Path
    env: dict[str, str]
    first_run: subprocess.CompletedProcess[str]
    system_python: Path


def run_demo_script(clone: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./scripts/demo", "--cycles", "2", "--interval", "0.1", "--port", str(free_port()), *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    """A fresh copy on which ``scripts/demo`` ran once with Debian's python3 first on PATH."""
    system_python = externally_managed_python()
    root = fresh_copy(tmp_path_factory.mktemp("clone"))
    shims = tmp_path_factory.mktemp("shims")
    (shims / "python3").symlink_to(system_python)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "VENV", "PYTHON"}
    }
    env["PATH"] = f"{shims}{os.pathsep}/usr/bin{os.pathsep}/bin"
    yield Clone(root, env, run_demo_script(root, env), system_python)


def test_demo_script_installs_into_a_project_venv_with_an_externally_managed_python(clone: Clone) -> None:
    result = clone.first_run
    assert result.returncode == 0, result.stderr + result.stdout
    venv_python = clone.root / ".venv" / "bin" / "python"
    assert venv_python.exists()
    base = subprocess.run(
        [venv_python, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert base == "/usr", "the venv must be made by the python3 first on PATH (Debian's)"
    assert "creating virtualenv .venv" in result.stderr
    assert "installing failure-predictor into .venv" in result.stderr
    assert "riskiest of 40 simulated targets" in result.stdout
    untouched = subprocess.run(
        [clone.system_python, "-c", "import exporter"], capture_output=True, cwd="/", env=clone.env
    )
    assert untouched.returncode != 0, "the package must not be installed into the system Python"


def test_demo_script_reuses_the_venv_and_takes_options(clone: Clone) -> None:
    assert clone.first_run.returncode == 0, clone.first_run.stderr
    again = run_demo_script(clone.root, clone.env, "--targets", "12")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "reusing virtualenv .venv" in again.stderr
    assert "already installed" in again.stderr
    assert "riskiest of 12 simulated targets" in again.stdout


def test_built_wheel_holds_the_bootstrap_model_and_its_demo_runs_from_the_root_directory(
    clone: Clone, tmp_path: Path
) -> None:
    assert clone.first_run.returncode == 0, clone.first_run.stderr
    venv_python = str(clone.root / ".venv" / "bin" / "python")
    subprocess.run(
        [venv_python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path, clone.root],
        env=clone.env,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob(f"failure_predictor-{__version__}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "exporter/bootstrap_model/manifest.json",
        "exporter/bootstrap_model/classifier.ubj",
        "exporter/bootstrap_model/detector.npz",
    } <= names
    subprocess.run(
        [venv_python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", wheel],
        env=clone.env,
        check=True,
        timeout=300,
    )
    # The checkout goes away, so nothing can come from it: the wheel alone must be enough.
    shutil.move(clone.root / "exporter", tmp_path / "moved-away")
    try:
        demo = subprocess.run(
            [
                clone.root / ".venv" / "bin" / "failure-predictor",
                "demo",
                "--cycles",
                "2",
                "--port",
                str(free_port()),
            ],
            cwd="/",
            env=clone.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.move(tmp_path / "moved-away", clone.root / "exporter")
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert "riskiest of 40 simulated targets" in demo.stdout
    version = subprocess.run(
        [clone.root / ".venv" / "bin" / "failure-predictor", "--version"],
        cwd="/",
        env=clone.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"failure-predictor {__version__}"
