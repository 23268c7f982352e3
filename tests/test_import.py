"""`import parity` is cheap: no JVM, no socket, no config read, no engine imports."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["pyflink", "confluent_kafka", "feast", "redis", "duckdb", "pyarrow", "pandas", "psycopg", "py4j"]

PROBE = f"""
import socket, subprocess, sys, builtins
opened = []
real_socket, real_popen, real_open = socket.socket, subprocess.Popen, builtins.open
class Spy(real_socket):
    def __init__(self, *a, **k):
        opened.append('socket'); super().__init__(*a, **k)
socket.socket = Spy
def popen(*a, **k):
    opened.append('process'); return real_popen(*a, **k)
subprocess.Popen = popen
def spy_open(file, *a, **k):
    if str(file).endswith('.yaml'): opened.append('config:' + str(file))
    return real_open(file, *a, **k)
builtins.open = spy_open
import parity, parity.registry, parity.batch, parity.streaming, parity.serving
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(repr((heavy, opened)))
"""


def test_import_parity_starts_nothing_and_imports_no_engine():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    heavy, opened = eval(out.stdout.strip())
    assert heavy == []
    assert opened == []


def test_acceptance_one_liner():
    code = "import parity, sys; assert 'pyflink' not in sys.modules and 'confluent_kafka' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parity_imports_as_one_package_and_installs_no_top_level_engine_modules():
    code = ("import importlib.util as u, parity; "
            "print(u.find_spec('batch') is None, u.find_spec('serving') is None, u.find_spec('registry') is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["True", "True", "True"]


def test_layers_import_only_in_the_design_direction():
    """DESIGN.md: registry imports no layer; batch, streaming and serving import only
    registry (and the shared top-level modules), never each other."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    layers = {"registry", "batch", "streaming", "serving"}
    found = []
    for layer in sorted(layers):
        for path in (root / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "parity" and len(parts) > 1 and parts[1] in layers - {"registry", layer}:
                        found.append(f"{path.relative_to(root)} imports {name}")
    assert found == []
