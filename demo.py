"""The main job on embedded defaults (``make demo``).

It applies the example definitions of the short-video app, generates the last week of
synthetic events into the offline log, computes a point-in-time training set for the
``home_feed_ranking`` service in both modes, backfills the tiles, starts the project's own
Redis and Kafka broker, loads the tiles into Redis (``materialize``), looks features up
online with statuses, then streams live synthetic events through the embedded engine and
looks them up again.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from parity.cli import main as cli

ROOT = Path(__file__).resolve().parent
SCALE = 300_000
DAYS = 7
SEED = 7  # generate.py's default seed: the live stream's catalogue and popularity are the history's
WATCHED = (["video_engagement:plays_1h", "video_engagement:plays_24h", "video_safety:reports_1h"],
           ["user_engagement:plays_1h", "user_engagement:plays_24h"])
START = (datetime.now(timezone.utc).date() - timedelta(days=DAYS)).isoformat()  # the last week, up to today


def _run(title: str, argv: list[str]) -> None:
    print(f"\n== {title}: parity {' '.join(argv)}", flush=True)
    code = cli(argv)
    if code:
        raise SystemExit(code)


def run(config: str = "feature_store.yaml") -> int:
    from parity.feature_store import FeatureStore

    _run("Plan the example definitions against the registry", ["plan", "--config", config])
    _run("Apply them (atomic, with content hashes and history)", ["apply", "--config", config])
    _run("What the registry holds", ["list", "--config", config])
    _run("One view in detail", ["describe", "video_safety", "--config", config])

    store = FeatureStore(config)
    log = store.config.path(store.config.offline_log.path)
    print(f"\n== Generate {SCALE:,} synthetic events over {DAYS} days into {log}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--scale", str(SCALE), "--days",
                    str(DAYS), "--start", START, "--seed", str(SEED), "--out", str(log)], check=True)

    import duckdb

    spine_path = store.config.path("data/demo_spine.parquet")
    scan = store.scan_sql("video_events")
    duckdb.sql(f"COPY (SELECT user_id, video_id, creator_id, ts + INTERVAL 1 MINUTE AS ts, "
               f"(event_type = 'like')::INT AS label FROM {scan} USING SAMPLE 20000 ROWS (reservoir, 7)) "
               f"TO '{spine_path}' (FORMAT parquet)")
    for mode in ("event_time", "as_served"):
        out = store.config.path(f"data/demo_training_{mode}.parquet")
        flag = ["--as-served"] if mode == "as_served" else []
        _run(f"Training set ({mode})", ["training-set", "--config", config, "--spine", str(spine_path),
                                        "--service", "home_feed_ranking", "--out", str(out), *flag])
    table = duckdb.sql(f"SELECT user_id, video_id, ts, label, user_engagement__plays_1h, "
                       f"user_engagement__watch_ms_24h, video_engagement__plays_1h, user_profile__country "
                       f"FROM '{store.config.path('data/demo_training_event_time.parquet')}' "
                       f"ORDER BY user_engagement__plays_1h DESC LIMIT 5")
    print("\nthe five rows with the most plays in the hour before:")
    table.show()
    end = date.fromisoformat(START) + timedelta(days=DAYS)
    # from a month before the events: user_profile's snapshot rows count for 30 days (ttl 30d)
    since = (date.fromisoformat(START) - timedelta(days=30)).isoformat()
    _run("Backfill the tiles the online store loads", ["backfill", "--config", config, "--start", since,
                                                       "--end", end.isoformat()])
    _run("Start the project's own Redis (the embedded online store)", ["dev", "up", "--config", config])
    _run("Load the backfilled tiles into it", ["materialize", "--config", config])
    users = duckdb.sql(f"SELECT user_id FROM {scan} GROUP BY ALL ORDER BY count(*) DESC LIMIT 2").fetchall()
    videos = duckdb.sql(f"SELECT video_id FROM {scan} GROUP BY ALL ORDER BY count(*) DESC LIMIT 3").fetchall()
    _run("Online lookup: the safety screen for the three most-watched videos",
         ["get", "--config", config, "--service", "safety_screen",
          "--entity", "video_id=" + ",".join(str(v[0]) for v in videos)])
    _run("Online lookup: user features of the two heaviest users (a user never seen is `missing`)",
         ["get", "--config", config, "--features", "user_engagement:plays_24h", "user_engagement:watch_ms_7d",
          "user_profile:country", "--entity", "user_id=" + ",".join(str(u[0]) for u in users) + ",-1"])
    watched = {"video_id": [v[0] for v in videos]}, {"user_id": [u[0] for u in users]}
    before = [_values(store, entities, names) for entities, names in zip(watched, WATCHED)]
    _run("Stream live events: produce 10 s of synthetic events into the embedded broker",
         ["produce", "--config", config, "--rate", "2000", "--duration", "10", "--quiet",
          "--seed", str(SEED), "--scale", str(SCALE)])
    _run("... and run the stream engine until it has drained them (Kafka -> Redis tiles + offline log)",
         ["stream", "--config", config, "--idle-exit", "3"])
    _run("The same lookup now sees the live events (10m and 1h windows filled)",
         ["get", "--config", config, "--service", "safety_screen",
          "--entity", "video_id=" + ",".join(str(v[0]) for v in videos)])
    after = [_values(store, entities, names) for entities, names in zip(watched, WATCHED)]
    print("\n== What the live events changed (online values before -> after streaming):")
    changed = 0
    for entities, was, now in zip(watched, before, after):
        (key, ids), = entities.items()
        for name in was:
            for i, entity in enumerate(ids):
                old, new = was[name][i], now[name][i]
                changed += old != new
                print(f"{name:<30} {key}={entity:<8} {old[0]!r:>12} ({old[1]}) -> {new[0]!r} ({new[1]})")
    print(f"{changed} values changed")
    print("\nthe embedded Redis and broker keep running for `parity get` / `parity serve` / `parity stream`; "
          "stop them with `parity dev down`")
    return 0 if changed else 1


def _values(store, entities: dict, names: list[str]) -> dict[str, list[tuple]]:
    """``{feature: [(value, status), ...]}`` of an online lookup, in entity order."""
    result = store.get_online_features(entities, features=names).to_dict()
    columns = [name.replace(":", "__") for name in names]
    return {column: list(zip(result[column], result[column + "__status"])) for column in columns}


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:]))
