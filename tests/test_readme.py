"""The README's examples work: every ``sh`` block runs against a real ``failure-predictor demo``;
a block marked ``<!-- not run: why -->`` (it needs a cluster or a Prometheus) is syntax-checked and
its failure-predictor and helm commands are parsed by the real CLI and chart. Pods named in the
README are pods the demo has, and no link leaves the repository."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import free_port

from exporter.cli import build_parser
from exporter.sources.simulate import SimulatedCluster

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CHART = REPO / "helm" / "failure-predictor"
DOCUMENTS = [
    README,
    *(
        REPO / name
        for name in ("CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md", "rules/README.md", "grafana/README.md")
    ),
    CHART / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
NOT_RUN = re.compile(r"^<!-- not run: (?P<why>.+?) -->$")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    text: str
    not_run: str | None

    def commands(self) -> list[list[str]]:
        """Each command of the block as words (line continuations joined, comments dropped)."""
        joined = re.sub(r"\\\n", " ", self.text)
        return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\S*)", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = NOT_RUN.match(lines[index - 1]) if index else None
        blocks.append(
            Block(index + 1, fence.group(1), "\n".join(lines[index + 1 : end]), marker and marker["why"])
        )
        index = end + 1
    return blocks


SHELL = [b for b in fenced_blocks(README) if b.language == "sh"]
RUNNABLE = [b for b in SHELL if b.not_run is None]
NOT_RUNNABLE = [b for b in SHELL if b.not_run is not None]
DEMO_SEED, DEMO_TARGETS = 1, 40  # `failure-predictor demo` defaults


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running ``failure-predictor demo``, ready (a model loaded and a cycle done); yields host:port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--port", str(port), "--interval", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{address}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("the demo did not become ready in 60 s")
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_readme_has_runnable_and_marked_blocks():
    assert len(RUNNABLE) >= 3
    assert all(b.not_run.strip() for b in NOT_RUNNABLE)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"README.md:{b.line}")
def test_readme_command_runs_against_the_demo(block: Block, demo: str, tmp_path: Path):
    script = block.text.replace("localhost:9847", demo).replace("127.0.0.1:9847", demo)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"README.md:{block.line}\n{script}\n{result.stderr}{result.stdout}"
    assert result.stdout.strip(), f"README.md:{block.line} printed nothing"


def set_values(words: list[str]) -> dict[str, Any]:
    """``--set a.b=c`` pairs as nested values, scalars typed the way Helm types them."""
    values: dict[str, Any] = {}
    for flag, pair in itertools.pairwise(words):
        if flag != "--set":
            continue
        key, _, raw = pair.partition("=")
        typed: Any = {"true": True, "false": False}.get(raw, int(raw) if raw.isdigit() else raw)
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = typed
    return values


@pytest.mark.parametrize("block", NOT_RUNNABLE, ids=lambda b: f"README.md:{b.line}")
def test_readme_commands_that_need_a_cluster_parse(block: Block):
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    for words in block.commands():
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words[:1] == ["failure-predictor"]:
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as exc:
                pytest.fail(f"README.md:{block.line}: {shlex.join(words)} is refused by the CLI ({exc})")
        elif words[:2] == ["helm", "install"]:
            helm_python = pytest.importorskip("helm_python")
            assert Path(REPO, words[3]).resolve() == CHART
            values = set_values(words)
            with helm_python.Chart.load(str(CHART)) as chart:
                chart.validate_schema(values)
                assert chart.render(values, name=words[2], namespace="monitoring")


def test_pods_named_in_the_readme_are_pods_the_demo_has():
    demo_pods = {f"{t['namespace']}/{t['pod']}" for t in SimulatedCluster(DEMO_TARGETS, DEMO_SEED).labels}
    text = README.read_text() + (REPO / "docs" / "api.md").read_text()
    named = set(re.findall(r'namespace="([\w-]+)",pod="([\w-]+)"', text))
    named |= set(re.findall(r'"namespace": "([\w-]+)", "pod": "([\w-]+)"', text))
    named |= set(re.findall(r"/api/v1/targets/([\w-]+)/([\w-]+)", text))
    named |= set(re.findall(r"^([\w-]+),([\w-]+-[a-z0-9]{4}-[a-z0-9]{5}),", text, re.MULTILINE))
    assert named, "the README names no pod: this test lost its patterns"
    assert {f"{n}/{p}" for n, p in named} <= demo_pods


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_stay_inside_the_repository_and_exist(document: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if re.match(r"[a-z]+:|#", target):
            continue
        resolved = (document.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
        assert resolved.exists(), f"{document.name}: {target} does not exist"
    assert "../shared" not in document.read_text()
