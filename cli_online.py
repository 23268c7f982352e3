"""CLI commands of the online side: ``materialize``, ``get`` and ``dev up|down|status``.

Argument parsing only; the work is done by :class:`parity.feature_store.FeatureStore` and
:mod:`parity.embedded`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any


def _store(args):
    from parity.feature_store import FeatureStore

    return FeatureStore(args.config)


def cmd_materialize(args: argparse.Namespace) -> int:
    summary = _store(args).materialize(views=args.views, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary.views, indent=2))
        return 0
    for name, info in summary.views.items():
        print(f"{name}: {info['tiles']} tiles loaded ({info['skipped_beyond_retention']} beyond retention "
              f"skipped), complete up to {info['watermark']}")
    return 0


def _entity_arg(text: str) -> tuple[str, list[Any]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... got {text!r}")
    key, raw = text.split("=", 1)
    values: list[Any] = []
    for item in raw.split(","):
        try:
            values.append(json.loads(item))
        except ValueError:
            values.append(item)
    return key, values


def cmd_get(args: argparse.Namespace) -> int:
    from parity.errors import ParityError

    if (args.service is None) == (args.features is None):
        raise ParityError("pass exactly one of --service or --features")
    entities = dict(args.entity)
    result = _store(args).get_online_features(entities, service=args.service, features=args.features)
    if args.json:
        out = {"now": datetime.fromtimestamp(result.now_us / 1e6).isoformat(), "rows": result.rows,
               "features": {n: {"values": result.values[n], "status": result.status[n],
                                "age_ms": result.age_ms[n]} for n in result.names}}
        print(json.dumps(out, indent=2, default=str))
        return 0
    width = max(len(n) for n in result.names)
    for name in result.names:
        cells = ", ".join(f"{v!r} ({s})" for v, s in zip(result.values[name], result.status[name]))
        print(f"{name.ljust(width)}  {cells}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from parity.embedded import running_redis, start_detached_redis, stop_embedded
    from parity.registry.config import load_config

    config = load_config(args.config)
    if args.action == "up":
        entry = running_redis(config.root) or start_detached_redis(config.root)
        print(f"redis: {entry['url']} (pid {entry['pid']})")
    elif args.action == "down":
        stopped = stop_embedded(config.root)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        entry = running_redis(config.root)
        print(f"redis: {entry['url']} (pid {entry['pid']})" if entry else "redis: not running")
    return 0


def register(sub, common) -> None:
    p = sub.add_parser("materialize", parents=[common], help="load backfilled tiles into the online store "
                       "(bootstrap) and record the watermark it is complete up to")
    p.add_argument("--views", nargs="+", metavar="VIEW", help="only these views (default: every online view)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("get", parents=[common], help="look up online feature values now, with statuses",
                       description="Look up online feature values at the current time. Example: "
                                   "parity get --service home_feed_ranking --entity user_id=1 --entity video_id=10,11")
    p.add_argument("--service", help="feature service name")
    p.add_argument("--features", nargs="+", metavar="REF", help="feature references (view:feature, view@2:f, view:*)")
    p.add_argument("--entity", type=_entity_arg, action="append", required=True, metavar="KEY=V1,V2",
                   help="join key values (repeat per key; a single value is broadcast)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("dev", parents=[common], help="start/stop the project's embedded servers (Redis)",
                       description="Start (up), stop (down) or show (status) the embedded Redis the project "
                                   "uses when online_store.connection_string is not set. Its address is recorded "
                                   "in data/.parity/dev.json, where the other commands find it.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.set_defaults(func=cmd_dev)
