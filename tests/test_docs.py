"""Every example in README.md and docs/*.md runs here (docs/semantics.md has its own test).

- ```python blocks run with exec(), in a fresh namespace, from a temporary folder.
- ```sh blocks run with bash, in order, in one temporary folder, with the venv's bin on PATH.
- ```yaml blocks whose first line is `# file: PATH` are written into a fresh example project
  (scaffolded by `parity init`) and the project must load and validate.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity.registry.config import load_config
from parity.registry.loader import load_definitions
from defs_fixtures import ROOT

DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "semantics.md")]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[tuple[int, str]]:
    text = path.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def _ids(items):
    return [f"{p.relative_to(ROOT)}:{line}" for p, line, _ in items]


PYTHON = [(p, line, code) for p in DOCS for line, code in blocks(p, "python")]
YAML = [(p, line, code) for p in DOCS for line, code in blocks(p, "yaml") if code.startswith("# file: ")]
SHELL_DOCS = [p for p in DOCS if blocks(p, "sh")]


def test_docs_have_examples():
    assert YAML and SHELL_DOCS


@pytest.mark.parametrize("path, line, code", PYTHON, ids=_ids(PYTHON))
def test_python_examples_run(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path}:{line}", "exec"), {"__name__": "__doc_example__"})


def _init(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    subprocess.run([sys.executable, "-m", "parity.cli", "init", str(project)], check=True, capture_output=True)
    return project


@pytest.mark.parametrize("path, line, code", YAML, ids=_ids(YAML))
def test_yaml_examples_load(path, line, code, tmp_path):
    project = _init(tmp_path)
    target = code.splitlines()[0].removeprefix("# file: ").strip()
    (project / target).write_text(code)
    if target == "feature_store.yaml":
        load_config(project / target)
    else:
        load_definitions(project / "feature_defs")


@pytest.mark.parametrize("path", SHELL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_examples_run(path, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PARITY_CONFIG", None)
    for line, code in blocks(path, "sh"):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{path.name}:{line} failed:\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, f"{path.name}:{line}:\n{result.stderr}"
