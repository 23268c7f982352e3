"""Helpers to write small definition sets to a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
entities:
  - name: user
    join_keys: {user_id: int64}
  - name: video
    join_keys: {video_id: int64}
sources:
  - name: events
    schema: {user_id: int64, video_id: int64, event_type: string, watch_ms: int64, completion: float64,
             liked: bool, ts: timestamp}
    timestamp_field: ts
    kafka: {topic: events}
"""


def write_defs(folder: Path, views_yaml: str, base: str = BASE, name: str = "views.yaml") -> Path:
    """Write the shared base (entities.yaml) and ``views_yaml`` (views.yaml) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(base)
    (folder / name).write_text(textwrap.dedent(views_yaml))
    return folder
