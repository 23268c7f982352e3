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
