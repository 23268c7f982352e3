"""Golden files for every compiled artifact of the example views.

Regenerate after a reviewed change with `make golden` (PARITY_UPDATE_GOLDEN=1), then read
the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from parity.registry.describe import describe_view, render_view
from parity.registry.loader import load_definitions
from parity.registry.plan import spec_of
from defs_fixtures import ROOT

GOLDEN = Path(__file__).parent / "golden"
DEFS = load_definitions(ROOT / "feature_defs").definitions
UPDATE = os.environ.get("PARITY_UPDATE_GOLDEN") == "1"


def artifacts(view) -> dict[str, str]:
    return {
        "describe.txt": render_view(describe_view(DEFS, view)) + "\n",
        "spec.json": json.dumps(spec_of(view), indent=2, sort_keys=True) + "\n",
    }


@pytest.mark.parametrize("view", DEFS.feature_views, ids=lambda v: f"{v.name}_v{v.version}")
def test_compiled_artifacts_match_golden_files(view):
    folder = GOLDEN / view.name
    for name, text in artifacts(view).items():
        path = folder / name
        if UPDATE:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            continue
        assert path.exists(), f"{path} is missing: run `make golden` and review the new file"
        assert text == path.read_text(), f"{path} differs: review the change, then run `make golden`"
