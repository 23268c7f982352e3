"""The main job on embedded defaults (``make demo``).

For now it plans and applies the example definitions of the short-video app and shows
what the registry holds. Later stages (batch, online serving, streaming) extend it.
"""

from __future__ import annotations

import sys

from parity.cli import main as cli


def run(config: str = "feature_store.yaml") -> int:
    steps = [
        ("Plan the example definitions against the registry", ["plan", "--config", config]),
        ("Apply them (atomic, with content hashes and history)", ["apply", "--config", config]),
        ("What the registry holds", ["list", "--config", config]),
        ("One view in detail", ["describe", "user_engagement", "--config", config]),
        ("The safety view", ["describe", "video_safety", "--config", config]),
    ]
    for title, argv in steps:
        print(f"\n== {title}: parity {' '.join(argv)}")
        code = cli(argv)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:]))
