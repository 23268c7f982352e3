"""feature_store.yaml: Feast's keys keep Feast's meaning, Parity's sections are strict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity.errors import ConfigError
from parity.registry.config import load_config
from defs_fixtures import ROOT


def test_example_config_parses():
    config = load_config(ROOT)
    assert config.project == "short_video"
    assert config.registry_location == "data/registry.db"
    assert config.online_store.type == "redis" and config.online_store.connection_string is None
    assert config.offline_store.type == "duckdb"
    assert config.entity_key_serialization_version == 3
    assert config.path(config.offline_log.path) == ROOT / "data" / "offline_log"


def test_feast_cli_still_reads_the_example_config(tmp_path):
    shutil.copy(ROOT / "feature_store.yaml", tmp_path / "feature_store.yaml")
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run([str(feast), "-c", str(tmp_path), "configuration"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "project: short_video" in result.stdout
    assert "type: redis" in result.stdout and "type: duckdb" in result.stdout
    assert "entity_key_serialization_version: 3" in result.stdout


def test_feast_long_form_registry_and_postgres_url(tmp_path):
    (tmp_path / "feature_store.yaml").write_text(
        "project: p\nregistry:\n  registry_type: sql\n  path: postgresql://u@h/db\n")
    assert load_config(tmp_path).registry_location == "postgresql://u@h/db"


@pytest.mark.parametrize("text, message", [
    ("project: p\nstreaming:\n  max_batchx: 3\n",
     "{f}: streaming.max_batchx: unknown key (fix: remove it or check its spelling; see docs/configuration.md)"),
    ("project: p\nonline_store:\n  type: dynamodb\n",
     "{f}: online_store: type 'dynamodb' is not supported (fix: use 'redis')"),
    ("project: p\nstreaming:\n  flush_interval: soon\n",
     "{f}: streaming.flush_interval: Value error, bad duration 'soon': use a number and a unit "
     "(us, ms, s, m, h, d), e.g. '10m', '1h30m', '7d'"),
    ("provider: local\n", "{f}: project: required key is missing"),
    ("project: p\nserving:\n  port: 99999\n", "{f}: serving.port: Input should be less than or equal to 65535"),
])
def test_bad_config_is_a_typed_error_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "feature_store.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == message.format(f=path)
