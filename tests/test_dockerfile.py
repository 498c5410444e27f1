"""The Dockerfile, checked for what can be checked without a Docker engine: what it copies
exists and is sent to the build, what it runs is the installed console script, and it agrees
with the package and the Helm chart on port, user, config and model paths."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import yaml

from exporter import __version__
from exporter.config import ListenSettings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
CHART_VALUES = yaml.safe_load((REPO / "helm" / "failure-predictor" / "values.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form"
        return value


def parse(text: str) -> list[list[Instruction]]:
    """Instructions per build stage (line continuations joined, comments dropped)."""
    logical = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    stages: list[list[Instruction]] = [[]]
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


STAGES = parse(DOCKERFILE.read_text())
VENV = "/opt/failure-predictor"
FINAL = STAGES[-1]


def last(keyword: str) -> Instruction:
    found = [i for i in FINAL if i.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def dockerignore_sends(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (last matching rule wins)."""
    sent = True
    for rule in (REPO / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch(path, pattern) or path.startswith(pattern + "/"):
            sent = negated
    return sent


def test_multi_stage_on_a_base_image_argument_with_the_venv_copied_from_the_build_stage():
    froms = [stage[0] for stage in STAGES[1:]]
    assert len(froms) >= 2
    assert froms[0].arguments.endswith(" AS build")
    args = {i.arguments.split("=")[0]: i.arguments.split("=", 1)[1] for i in STAGES[0] if i.keyword == "ARG"}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert all(f.arguments.startswith("${PYTHON_IMAGE}") for f in froms)
    build_runs = " ".join(i.arguments for i in STAGES[1] if i.keyword == "RUN")
    assert "-c constraints.txt" in build_runs, "the image gets the libraries the bundle was made with"
    final_runs = " ".join(i.arguments for i in FINAL if i.keyword == "RUN")
    assert not re.search(r"apt-get|pip |build-essential|\bgcc\b", final_runs)
    copies = [shlex.split(i.arguments) for i in FINAL if i.keyword == "COPY"]
    assert ["--from=build", VENV, VENV] in copies
    env = " ".join(i.arguments for i in FINAL if i.keyword == "ENV")
    assert f"PATH={VENV}/bin:$PATH" in env


def test_needs_no_buildkit_frontend_or_buildkit_only_instructions():
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.IGNORECASE | re.MULTILINE)
    assert "--mount" not in text and "<<" not in text


def test_distributions_removed_from_the_image_are_never_imported():
    build_runs = " ".join(i.arguments for i in STAGES[1] if i.keyword == "RUN")
    removed = re.search(r"pip uninstall -y ([\w\- ]+?) &&", build_runs).group(1).split()
    assert "matplotlib" in removed
    modules = {"pillow": "PIL", "fonttools": "fontTools"}
    code = (
        "import sys, exporter.cli, exporter.service.api, exporter.models.anomaly, exporter.training.train, "
        "exporter.backtest, exporter.demo; print(' '.join(sys.modules))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {modules.get(name, name) for name in removed} & loaded


def build_command(**env: str) -> str:
    result = subprocess.run(
        [str(REPO / "scripts" / "build-image"), "fp:test"],
        env={**os.environ, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_build_image_script_passes_the_version_and_the_base_image():
    docker = build_command(BUILDER="docker", PYTHON_IMAGE="localhost/python:3.11-slim-bookworm")
    assert shlex.split(docker) == [
        "docker",
        "build",
        "--build-arg",
        f"VERSION={__version__}",
        "--build-arg",
        "PYTHON_IMAGE=localhost/python:3.11-slim-bookworm",
        "-t",
        "fp:test",
        ".",
    ]
    buildah = shlex.split(build_command(BUILDER="buildah"))
    assert buildah[:6] == ["buildah", "--storage-driver", "vfs", "bud", "--isolation", "chroot"]
    assert f"VERSION={__version__}" in buildah and not any("PYTHON_IMAGE" in w for w in buildah)


def test_dockerignore_keeps_tests_and_caches_out():
    for path in (
        "tests/test_helm.py",
        ".git",
        "benchmarks",
        "exporter/__pycache__",
        "models/other",
        "exporter/_kernels.cpython-311-x86_64-linux-gnu.so",
        "exporter/_kernels.json",
    ):
        assert not dockerignore_sends(path), path


def test_entrypoint_is_the_installed_console_script_and_cmd_runs_the_charts_config():
    (script,) = last("ENTRYPOINT").exec_form()
    assert PYPROJECT["project"]["scripts"][script] == "exporter.cli:main"
    cmd = last("CMD").exec_form()
    assert cmd == ["run", "--config", "/etc/failure-predictor/config.yaml"]
    chart = (REPO / "helm" / "failure-predictor" / "templates" / "workload.yaml").read_text()
    assert "args: [run, --config, /etc/failure-predictor/config.yaml{{ range .Values.extraArgs }}" in chart
    assert "mountPath: /etc/failure-predictor/config.yaml" in chart


def test_runs_as_a_numeric_non_root_user_matching_the_chart():
    user, _, group = last("USER").arguments.partition(":")
    assert user.isdigit() and int(user) > 0
    assert not group or (group.isdigit() and int(group) > 0)
    assert CHART_VALUES["podSecurityContext"]["runAsUser"] == int(user)


def test_exposes_the_daemons_default_port():
    assert last("EXPOSE").arguments.split() == [str(ListenSettings().port)]
    assert CHART_VALUES["containerPort"] == ListenSettings().port


def test_bootstrap_model_comes_with_the_installed_package_not_a_copy():
    copies = [shlex.split(i.arguments) for stage in STAGES for i in stage if i.keyword == "COPY"]
    assert all("bootstrap_model" not in " ".join(c) and "models" not in " ".join(c) for c in copies), copies
    shipped = PYPROJECT["tool"]["setuptools"]["package-data"]["exporter"]
    assert sorted(shipped) == ["bootstrap_model/*", "models/*.npz"], (
        "the bundle and the null forest ship in the wheel"
    )
    assert (REPO / "exporter" / "bootstrap_model" / "manifest.json").is_file()
    assert list((REPO / "exporter" / "models").glob("*.npz")), (
        "the null forest the normaliser loads is in the tree"
    )
    assert CHART_VALUES["model"]["bundledPath"] == "", "the chart serves the package's bundle by default"


def test_oci_labels_name_the_image_and_its_version():
    labels = " ".join(i.arguments for i in FINAL if i.keyword == "LABEL")
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    version = next(i.arguments for i in FINAL if i.keyword == "ARG" and i.arguments.startswith("VERSION="))
    assert version == f"VERSION={__version__}"


def test_the_image_builds_its_kernels_ahead_of_time_into_the_installed_package():
    build_runs = " ".join(i.arguments for i in STAGES[1] if i.keyword == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends gcc g\+\+ libc6-dev", build_runs), (
        "pycc compiles with gcc, numba's runtime with g++"
    )
    assert re.search(r"&& cd / && \S+/bin/python -m exporter\.precompile \\?\s*&&", build_runs), (
        "the build stage compiles into the installed package (from /, not /src), its default directory"
    )
    assert "assert kernels.AHEAD_OF_TIME" in build_runs, (
        "the build fails when the image would compile with numba"
    )
    env = " ".join(i.arguments for i in FINAL if i.keyword == "ENV")
    assert "FAILURE_PREDICTOR_KERNELS" not in env, "the image serves the kernels it built"


def test_build_image_script_uses_buildah_when_docker_has_no_daemon(tmp_path):
    """A docker client that cannot reach a daemon (docker info fails, as on CI runners and in
    containers) cannot build; buildah can."""
    for name, status in (("docker", 1), ("buildah", 0)):
        tool = tmp_path / name
        tool.write_text(f"#!/bin/sh\nexit {status}\n")
        tool.chmod(0o755)
    command = build_command(PATH=f"{tmp_path}:/usr/bin:/bin")
    assert shlex.split(command)[0] == "buildah"
