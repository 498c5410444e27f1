"""The Dockerfile, checked for what can be checked without a Docker engine: what it copies
exists and is sent to the build, what it runs is the installed console script, and it agrees
with the package and the Helm chart on port, user, config and model paths."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
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


def test_multi_stage_slim_python_311_with_compilers_only_in_the_build_stage():
    froms = [stage[0] for stage in STAGES[1:]]
    assert len(froms) >= 2
    assert froms[0].arguments.endswith(" AS build")
    args = {i.arguments.split("=")[0]: i.arguments.split("=", 1)[1] for i in STAGES[0] if i.keyword == "ARG"}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert all(f.arguments.startswith("${PYTHON_IMAGE}") for f in froms)
    final_runs = " ".join(i.arguments for i in FINAL if i.keyword == "RUN")
    assert not re.search(r"apt-get install|build-essential|\bgcc\b", final_runs)
    assert "--no-index" in final_runs and "from=build" in final_runs, "install from the build stage's wheels"
    assert "pip wheel" in " ".join(i.arguments for i in STAGES[1] if i.keyword == "RUN")


@pytest.mark.parametrize(
    "copy", [i for stage in STAGES for i in stage if i.keyword == "COPY"], ids=lambda i: i.arguments
)
def test_every_copied_path_exists_and_is_sent_to_the_build(copy):
    words = [w for w in shlex.split(copy.arguments) if not w.startswith("--")]
    assert not copy.arguments.startswith("--from"), "copies between stages are not checked here"
    for source in words[:-1]:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert dockerignore_sends(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_tests_and_caches_out():
    for path in ("tests/test_helm.py", ".git", "benchmarks", "exporter/__pycache__", "models/other"):
        assert not dockerignore_sends(path), path


def test_entrypoint_is_the_installed_console_script_and_cmd_runs_the_charts_config():
    (script,) = last("ENTRYPOINT").exec_form()
    assert PYPROJECT["project"]["scripts"][script] == "exporter.cli:main"
    cmd = last("CMD").exec_form()
    assert cmd == ["run", "--config", "/etc/failure-predictor/config.yaml"]
    chart = (REPO / "helm" / "failure-predictor" / "templates" / "workload.yaml").read_text()
    assert "args: [run, --config, /etc/failure-predictor/config.yaml]" in chart
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
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["exporter"] == ["bootstrap_model/*"]
    assert (REPO / "exporter" / "bootstrap_model" / "manifest.json").is_file()
    assert CHART_VALUES["model"]["bundledPath"] == "", "the chart serves the package's bundle by default"


def test_oci_labels_name_the_image_and_its_version():
    labels = " ".join(i.arguments for i in FINAL if i.keyword == "LABEL")
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    version = next(i.arguments for i in FINAL if i.keyword == "ARG" and i.arguments.startswith("VERSION="))
    assert version == f"VERSION={__version__}"
