"""A Parity project on disk: its feature_store.yaml, definitions folder and registry store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from parity.errors import ParityError
from parity.registry.config import CONFIG_FILE, FeatureStoreConfig, load_config
from parity.registry.loader import LoadedDefinitions, load_definitions
from parity.registry.store import RegistryStore, open_store

EXAMPLE_ROOT = Path(__file__).resolve().parent.parent  # the package root ships the example project


@dataclass
class Project:
    config: FeatureStoreConfig

    @classmethod
    def load(cls, config_path: str | Path = CONFIG_FILE) -> "Project":
        return cls(load_config(config_path))

    @property
    def defs_path(self) -> Path:
        return self.config.path(self.config.feature_defs)

    def definitions(self, defs_path: str | Path | None = None) -> LoadedDefinitions:
        return load_definitions(defs_path or self.defs_path)

    def store(self) -> RegistryStore:
        return open_store(self.config.registry_location, base_dir=self.config.root)


def init_project(target: str | Path) -> Path:
    """Scaffold a working project (the short-video example) into ``target``."""
    target = Path(target)
    if (target / CONFIG_FILE).exists():
        raise ParityError(f"{target / CONFIG_FILE} already exists", hint="pick an empty folder")
    (target / "feature_defs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLE_ROOT / CONFIG_FILE, target / CONFIG_FILE)
    for path in sorted((EXAMPLE_ROOT / "feature_defs").glob("*.yaml")):
        shutil.copyfile(path, target / "feature_defs" / path.name)
    return target
