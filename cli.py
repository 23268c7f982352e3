"""The ``parity`` command line. It parses arguments and calls library functions, nothing more.

Errors print as one readable line (``error: ...``) plus a hint, and exit with status 1;
usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from parity import __version__
from parity.errors import ParityError

EPILOG = """\
examples:
  parity init my_project          scaffold the short-video example project
  parity plan                     show what apply would add, change and remove
  parity apply                    record the definitions in the registry
  parity list --json              live entities, sources, views and services
  parity describe user_engagement features, windows, hops, tiles, retention, filters
  parity land video_events events.jsonl
  parity training-set --spine spine.parquet --service home_feed_ranking --out train.parquet
  parity backfill --start 2026-01-01 --end 2026-01-31
  parity serve --port 8666        serve online features over HTTP
  parity dev up                   start the project's embedded Redis and Kafka broker
  parity materialize              load backfilled tiles into the online store
  parity get --service safety_screen --entity video_id=10,11
  parity produce --rate 2000 --duration 60   synthetic events into the sources' Kafka topics

The project is the folder holding feature_store.yaml: the current one, or --config
(or the PARITY_CONFIG environment variable)."""


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _project(args: argparse.Namespace):
    from parity.registry.project import Project

    return Project.load(args.config)


def _retire(values: Sequence[str]) -> list[tuple[str, int]]:
    parsed = []
    for value in values or ():
        name, _, version = value.partition("@")
        if not version.lstrip("v").isdigit():
            raise ParityError(f"--retire {value!r}: expected VIEW@VERSION", hint="e.g. --retire user_engagement@1")
        parsed.append((name, int(version.lstrip("v"))))
    return parsed


def cmd_init(args: argparse.Namespace) -> int:
    from parity.registry.project import init_project

    path = init_project(args.directory)
    print(f"created a Parity project in {path}/ (feature_store.yaml, feature_defs/)")
    print(f"next: cd {path} && parity plan && parity apply")
    return 0


def cmd_plan(args: argparse.Namespace, *, commit: bool = False) -> int:
    from parity.registry import plan as planning

    project = _project(args)
    loaded = project.definitions(args.defs)
    with project.store() as store:
        if commit:
            result, revision = planning.apply(loaded, store, _retire(args.retire))
        else:
            result, revision = planning.plan(loaded, store, _retire(args.retire)), None
    if args.json:
        _print_json({**result.to_json(), "applied_revision": revision})
        return 0
    print(result.render())
    if commit:
        print(f"applied: registry is at revision {revision}" if result.has_changes else "nothing to apply")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from parity.registry.describe import list_objects
    from parity.registry.plan import registry_definitions

    project = _project(args)
    with project.store() as store:
        snapshot = store.snapshot()
    listing = list_objects(registry_definitions(snapshot))
    if args.json:
        _print_json({"revision": snapshot.revision, **listing})
        return 0
    print(f"registry revision {snapshot.revision}")
    print("feature views:")
    for v in listing["feature_views"]:
        print(f"  {v['name']:<20} v{v['version']:<3} {v['status']:<18} entity={v['entity']:<8} "
              f"source={v['source']:<14} features={v['features']:<3} owner={v['owner']}")
    print("feature services: " + ", ".join(f"{s['name']} ({s['features']} refs)" for s in listing["feature_services"]))
    print("entities: " + ", ".join(e["name"] for e in listing["entities"]))
    print("sources: " + ", ".join(f"{s['name']} ({s['kind']})" for s in listing["sources"]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from parity.registry.describe import describe_view, render_view
    from parity.registry.plan import registry_definitions

    name, _, version = args.view.partition("@")
    project = _project(args)
    with project.store() as store:
        defs = registry_definitions(store.snapshot())
    view = defs.view(name, int(version.lstrip("v")) if version else None)
    if view is None:
        known = ", ".join(sorted({v.name for v in defs.feature_views})) or "none applied yet"
        raise ParityError(f"no live view {args.view!r} in the registry", hint=f"live views: {known}")
    info = describe_view(defs, view)
    if args.json:
        _print_json(info)
    else:
        print(render_view(info))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    project = _project(args)
    with project.store() as store:
        entries = store.history(args.limit)
    if args.json:
        _print_json([{"revision": e.revision, "applied_at": e.applied_at.isoformat(), "applied_by": e.applied_by,
                      "summary": e.summary, "state_hash": e.state_hash} for e in entries])
        return 0
    for e in entries:
        print(f"r{e.revision:<4} {e.applied_at:%Y-%m-%d %H:%M:%S}Z  {e.applied_by:<30} {e.summary}")
    return 0


def _store(args: argparse.Namespace):
    from parity.feature_store import FeatureStore

    return FeatureStore(args.config)


def _time(text: str):
    from datetime import datetime, timezone

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time such as 2026-01-10 or 2026-01-10T10:00:00Z")
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def cmd_land(args: argparse.Namespace) -> int:
    summary = _store(args).land(args.source, args.files, progress=not args.quiet)
    if args.json:
        _print_json({k: (str(v) if k.endswith("path") else v) for k, v in vars(summary).items()})
        return 0
    print(f"landed {summary.landed_rows} rows of {args.source} from {summary.files} file(s); "
          f"{summary.skipped_files} already landed (skipped); {summary.rejected_rows} rejected")
    for reason, count in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  rejected {count}: {reason}")
    if summary.rejected_rows:
        print(f"  rejects with reasons: {summary.rejects_path}")
    return 0


def cmd_training_set(args: argparse.Namespace) -> int:
    import time

    from parity.batch.engine import Phases

    phases = Phases()
    started = time.perf_counter()
    features = args.features.split(",") if args.features else None
    out = _store(args).get_training_set(args.spine, service=args.service, features=features,
                                        mode="as_served" if args.as_served else "event_time",
                                        timestamp_column=args.timestamp_column, out=args.out,
                                        progress=not args.quiet, phases=phases)
    took = time.perf_counter() - started
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(out).metadata.num_rows
    report = {"out": str(out), "rows": rows, "seconds": round(took, 3), "rows_per_second": round(rows / took),
              "phases": {k: round(v, 3) for k, v in phases.seconds.items()}}
    if args.json:
        _print_json(report)
    else:
        print(f"wrote {rows} rows to {out} in {took:.2f}s ({report['rows_per_second']} rows/s)")
        for name, seconds in report["phases"].items():
            print(f"  {seconds:8.3f}s  {name}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    summary = _store(args).backfill(args.start, args.end, views=args.views, progress=not args.quiet,
                                    handoff=args.handoff)
    if args.json:
        _print_json({"start": summary.start.isoformat(), "end": summary.end.isoformat(), "views": summary.views,
                     "files": summary.files, "tiles": summary.tiles, "seconds": summary.seconds,
                     "handoff": summary.handoff})
        return 0
    print(f"backfilled {summary.tiles} tiles in {summary.files} files for {', '.join(summary.views)} "
          f"over [{summary.start}, {summary.end})")
    for topic, cut in summary.handoff.items():
        parts = ", ".join(f"{p}: <= {o}" for p, o in cut["applied"].items()) or "no Kafka rows in the log"
        print(f"handoff {topic}: tiles hold offsets {parts}; `parity materialize` stores them for `parity stream`")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from parity.registry.config import load_config
    from parity.serving.server import run_server

    run_server(load_config(args.config), host=args.host, port=args.port, workers=args.workers,
               log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parity", description="Parity: define features once; serve them online and offline, equal.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"parity {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("PARITY_CONFIG", "feature_store.yaml"),
                        help="feature_store.yaml or the folder holding it (default: ./feature_store.yaml, "
                             "or $PARITY_CONFIG)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="scaffold a working example project in DIR")
    p.add_argument("directory", metavar="DIR", help="folder to create (must not hold a feature_store.yaml)")
    p.set_defaults(func=cmd_init)

    for name, commit, text in (("plan", False, "show what apply would add, change and remove (no writes)"),
                               ("apply", True, "record the definitions in the registry atomically")):
        p = sub.add_parser(name, parents=[common], help=text, description=text + ". A change to what a feature "
                           "means (agg, column, window, where, k, ttl, source, entity) on a live view version is "
                           "refused unless the view's version is bumped; the exit status is then 1.")
        p.add_argument("--defs", help="definitions folder or file (default: feature_defs from the config)")
        p.add_argument("--retire", action="append", metavar="VIEW@N",
                       help="also remove a superseded live version, e.g. user_engagement@1 (repeatable)")
        p.set_defaults(func=(lambda a, c=commit: cmd_plan(a, commit=c)))

    p = sub.add_parser("list", parents=[common], help="list live entities, sources, views and services")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("describe", parents=[common], help="describe a live view: features, windows, hops, tile "
                       "resolutions, retention, owner and the DuckDB SQL of its filters")
    p.add_argument("view", metavar="VIEW[@N]", help="view name, optionally with a version (default: newest)")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("land", parents=[common], help="land Parquet, JSON-lines or CSV files into a source's "
                       "offline log (validated; bad rows go to a rejects file with reasons; idempotent)")
    p.add_argument("source", metavar="SOURCE", help="source name, e.g. video_events")
    p.add_argument("files", metavar="FILE", nargs="+", help=".parquet, .jsonl/.ndjson/.json or .csv files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_land)

    p = sub.add_parser("training-set", parents=[common], help="point-in-time training set: spine in, Parquet out",
                       description="Compute every requested feature's value at each spine row's time and write "
                       "Parquet. The spine holds the entities' join keys, a timestamp column and any labels.")
    p.add_argument("--spine", required=True, help="spine file (.parquet, .csv, .jsonl)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--service", help="feature service name, e.g. home_feed_ranking")
    group.add_argument("--features", help="comma-separated references, e.g. user_engagement:plays_1h,video_safety:*")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--as-served", action="store_true",
                   help="count only events applied online by each row's time (default: event time)")
    p.add_argument("--timestamp-column", default="ts", help="spine column holding each row's time (default ts)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_training_set)

    p = sub.add_parser("backfill", parents=[common], help="compute tiles of every resolution from the offline log "
                       "for [--start, --end), replacing what an earlier run wrote for those dates")
    p.add_argument("--start", required=True, type=_time, help="UTC start, e.g. 2026-01-01")
    p.add_argument("--end", required=True, type=_time, help="UTC end (exclusive), e.g. 2026-01-31T00:00:00Z")
    p.add_argument("--views", nargs="+", metavar="VIEW", help="only these views (default: all)")
    p.add_argument("--handoff", action="store_true",
                   help="cut stream sources at Kafka offsets (the log's _partition/_offset) instead of at --end "
                        "alone, so that `parity materialize` + `parity stream` continue exactly after the tiles: "
                        "no event dropped or counted twice at the seam")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backfill)

    from parity.cli_online import register as register_online

    register_online(sub, common)

    p = sub.add_parser("serve", help="serve online features over HTTP (POST /v1/features, GET /v1/health, "
                       "GET /metrics, GET /openapi.json)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve the project's online features over HTTP until interrupted (Ctrl-C).\n"
                       "Reads the registry's definitions and the online store (online_store.connection_string, or "
                       "the Redis `parity dev up` started).\nA host other than loopback requires a bearer token "
                       "(serving.auth_tokens or PARITY_AUTH_TOKENS, comma-separated) unless serving.require_auth is "
                       "false.",
                       epilog="examples:\n  parity serve\n  PARITY_AUTH_TOKENS=s3cret parity serve --host 0.0.0.0 "
                              "--workers 4\n  curl -s localhost:8666/v1/features -H 'content-type: application/json' -d '{\"service\": "
                              "\"home_feed_ranking\", \"entities\": {\"user_id\": [1], \"video_id\": [10, 11]}}'")
    p.add_argument("--config", default=os.environ.get("PARITY_CONFIG", "feature_store.yaml"),
                   help="feature_store.yaml or the folder holding it (default: ./feature_store.yaml, or $PARITY_CONFIG)")
    p.add_argument("--host", help="address to bind (default: serving.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: serving.port, 8666)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each with its own serving cache (default: one per core)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default warning)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("history", parents=[common], help="registry revisions, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many revisions (default 20)")
    p.set_defaults(func=cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("PARITY_DEBUG"):
            raise
        print(f"error: internal error {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        print("hint: this is a bug in Parity; rerun with PARITY_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
