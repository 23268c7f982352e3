"""Batch (DuckDB) benchmark of Parity: training set, Feast baseline, backfill, in one run.

    python benchmarks/bench_batch.py                                   # full: 50M events, 10M spine, 1M Feast spine
    python benchmarks/bench_batch.py --scale 2000000 --spine-rows 500000 --feast-spine-rows 200000   # quick

One run does, in order:

1. **Project and data.** ``python -m parity.cli init DIR``, ``python -m parity.cli apply
   --config DIR``, then ``benchmarks/generate.py --scale N --days D --out DIR/data/offline_log``
   (which also writes the ``user_profile`` snapshot to ``DIR/data/user_profile/part-0.parquet``).
2. **Training set.** A deterministic spine of ``--spine-rows`` rows (user_id, video_id,
   creator_id = the creator of that video in the generator's catalogue, ts uniform over the
   last ``--spine-days`` days of the data, a 0/1 label) is written to Parquet, then
   ``FeatureStore(...).get_training_set(spine, service="home_feed_ranking", out=..., phases=...)``
   runs in this process (DuckDB is in-process, so its memory is this process's memory).
   Reported: wall seconds, rows/s, the engine's per-phase split, peak RSS and the peak size
   of DuckDB's spill folder. Peak RSS is measured three ways: VmHWM of /proc/self/status and
   ``getrusage(RUSAGE_SELF).ru_maxrss`` (Linux derives both from the same high-water mark,
   which the benchmark resets before each step with ``echo 5 > /proc/self/clear_refs``, so
   both are per step), and VmRSS sampled every 50 ms.
3. **Feast baseline.** The 4 latest-value features of ``user_profile`` (ttl 30d) on a
   ``--feast-spine-rows`` spine, through Feast's ``get_historical_features`` with the DuckDB
   offline store (a FileSource over a copy of the snapshot with microsecond UTC timestamps),
   and through Parity's ``get_training_set`` on the same spine. Both return Arrow tables in
   memory; both timings include reading the spine Parquet. Every value is compared
   (Feast's, Parity's and a NumPy oracle computed straight from the snapshot).
4. **Backfill.** ``FeatureStore(...).backfill(start, start + days)`` for every view.

The steps run in the order 3, 4, 2, so that a training set stopped from outside leaves the
other results saved; while a step runs, RESULTS.heartbeat.json says how far it got (completed
engine phases, RSS, spill size). A summary table is printed and everything is written as JSON to ``--results``, with the
exact command line, the date (UTC), the machine, package versions and the engine's source
state (git commit, uncommitted changes and a hash of ``batch/*.py``).
"""

from __future__ import annotations

import argparse
import warnings
import datetime as dt
import gc
import hashlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the shared harness, also when loaded by file path
    sys.path.insert(0, str(HERE))
from harness import machine, package_versions  # noqa: E402
GENERATOR = HERE / "generate.py"
US_PER_DAY = 86_400_000_000
SERVICE = "home_feed_ranking"
PROFILE_FEATURES = ("country", "language", "age_bucket", "signup_ts")
PROFILE_TTL_DAYS = 30
TARGETS = {"training_set_seconds": 120.0, "training_set_peak_rss_gib": 12.0, "feast_speedup": 5.0,
           "backfill_seconds": 60.0}
MARKER = ".parity-bench.json"
STEPS = ("training-set", "feast", "backfill")
GIB = 1024 ** 3
# with --profile: the statement DuckDB is running now and those done, for the heartbeat
_RUNNING: dict[str, Any] = {}
_DONE: list[dict[str, Any]] = []


# -- measuring ------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine from /proc/stat, CPU seconds of this process)."""
    busy = 0.0
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy, usage.ru_utime + usage.ru_stime


def _dir_bytes(path: Path) -> int:
    total = 0
    try:
        for entry in os.scandir(path):
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += _dir_bytes(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    except OSError:
        pass
    return total


class Probe:
    """Wall time and memory of one step: VmHWM (reset at start), sampled VmRSS, ru_maxrss, spill size."""

    def __init__(self, spill_dir: Path | None = None, interval: float = 0.05, *, label: str = "",
                 heartbeat: Path | None = None, phases: Any = None) -> None:
        self.spill_dir = spill_dir
        self.interval = interval
        self.label = label
        self.heartbeat = heartbeat
        self.phases = phases
        self.rss_peak_kib = 0
        self.spill_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            rss = _status_kib("VmRSS") or 0
            self.rss_peak_kib = max(self.rss_peak_kib, rss)
            if self.spill_dir is not None and ticks % 20 == 0:
                self.spill_peak = max(self.spill_peak, _dir_bytes(self.spill_dir))
            if self.heartbeat is not None and ticks % 40 == 0:
                self._beat(rss)
            ticks += 1
            self._stop.wait(self.interval)

    def _beat(self, rss_kib: int) -> None:
        """Write where the step is (so a run stopped from outside still says how far it got)."""
        done = dict(self.phases.seconds) if self.phases is not None else {}
        beat = {"step": self.label, "elapsed_seconds": round(time.perf_counter() - self.started, 1),
                "completed_phases": {k: round(v, 3) for k, v in done.items()},
                "rss_gib": round(rss_kib / 1024 ** 2, 3), "peak_rss_vmhwm_gib": round((_status_kib("VmHWM") or 0) / 1024 ** 2, 3),
                "peak_rss_sampled_gib": round(self.rss_peak_kib / 1024 ** 2, 3),
                "duckdb_spill_gib": round(_dir_bytes(self.spill_dir) / GIB, 3) if self.spill_dir is not None else None,
                "at_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}
        running = dict(_RUNNING)
        if running:
            beat["running_statement"] = {"seconds": round(time.perf_counter() - running["since"], 1),
                                         "sql": running["sql"]}
            beat["recent_statements"] = [{"seconds": r["seconds"], "sql": r["sql"][:160]} for r in _DONE[-5:]]
            done_so_far = summarize_profile(list(_DONE), top=3)
            beat["profile_so_far"] = {k: done_so_far[k] for k in ("statement_seconds", "by_statement_kind",
                                                                  "operator_seconds_by_type")}
        tmp = self.heartbeat.with_suffix(".tmp")
        tmp.write_text(json.dumps(beat, indent=2) + "\n")
        os.replace(tmp, self.heartbeat)

    def __enter__(self) -> "Probe":
        gc.collect()
        self.reset_ok = _reset_peak()
        self.rss_start_kib = _status_kib("VmRSS") or 0
        self.cpu_start = _cpu_seconds()
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        machine_busy, ours = (end - start for end, start in zip(_cpu_seconds(), self.cpu_start))
        self.cpu_self = ours
        self.cpu_others = max(0.0, machine_busy - ours)
        self._stop.set()
        self._thread.join()
        self.hwm_kib = _status_kib("VmHWM") or 0
        self.ru_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def report(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "rss_at_start_gib": round(self.rss_start_kib / 1024 ** 2, 3),
            "peak_rss_vmhwm_gib": round(self.hwm_kib / 1024 ** 2, 3) if self.reset_ok else None,
            "peak_rss_sampled_gib": round(self.rss_peak_kib / 1024 ** 2, 3),
            "ru_maxrss_process_gib": round(self.ru_maxrss_kib / 1024 ** 2, 3),
            "vmhwm_reset_before_step": self.reset_ok,
            "duckdb_spill_peak_gib": round(self.spill_peak / GIB, 3) if self.spill_dir is not None else None,
            # CPU seconds this process used, and what every other process of the machine used
            # meanwhile (a busy neighbour makes the wall time worse than the engine is)
            "cpu_seconds_self": round(self.cpu_self, 1),
            "cpu_seconds_other_processes": round(self.cpu_others, 1),
        }


def peak_gib(report: dict[str, Any]) -> float:
    """The step's peak RSS: VmHWM when it could be reset for the step, else the largest sample."""
    return report["peak_rss_vmhwm_gib"] if report["peak_rss_vmhwm_gib"] is not None else report["peak_rss_sampled_gib"]


# -- the machine and the software -------------------------------------------------------------


def versions() -> dict[str, str | None]:
    return package_versions(("parity", "duckdb", "pyarrow", "feast", "numpy", "pandas", "ibis-framework"))


def source_state() -> dict[str, Any]:
    """Which engine was measured: the commit, uncommitted files, and a hash of batch/*.py."""
    state: dict[str, Any] = {}

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  check=True).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return None

    state["commit"] = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "batch", "feature_store.py", "registry")
    state["uncommitted_engine_files"] = [line[3:] for line in changed.splitlines() if line.strip()] if changed else []
    digest = hashlib.sha256()
    for path in sorted((REPO / "batch").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    state["batch_sha256"] = digest.hexdigest()[:16]
    return state


# -- step 1: project and data ---------------------------------------------------------------


def run(cmd: list[str], what: str) -> float:
    """Run a command (its output goes to ours); return its wall seconds."""
    print(f"$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"error: {what} failed with exit status {done.returncode}")
    return time.perf_counter() - began


def prepare_project(args: argparse.Namespace) -> dict[str, Any]:
    """Scaffold, apply and generate (or reuse a matching earlier run's data)."""
    work: Path = args.workdir
    wanted = {"scale": args.scale, "days": args.days, "seed": args.seed, "start": args.start.isoformat()}
    marker = work / MARKER
    if args.reuse_data and marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("data") == wanted:
            print(f"reusing the project and data in {work} (same scale, days, seed, start)", file=sys.stderr)
            write_batch_settings(work / "feature_store.yaml", batch_settings(args))
            return {"reused": True, **recorded.get("timings", {})}
        print(f"{work} holds other data ({recorded.get('data')}); regenerating", file=sys.stderr)
    if work.exists() and any(work.iterdir()):
        if not marker.exists():
            raise SystemExit(f"error: {work} is not empty and was not made by this benchmark; pick another --workdir")
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    timings: dict[str, float] = {}
    timings["init_seconds"] = round(run([py, "-m", "parity.cli", "init", str(work)], "parity init"), 3)
    write_batch_settings(work / "feature_store.yaml", batch_settings(args))
    timings["apply_seconds"] = round(run([py, "-m", "parity.cli", "apply", "--config", str(work)], "parity apply"), 3)
    cmd = [py, str(GENERATOR), "--scale", str(args.scale), "--days", str(args.days), "--seed", str(args.seed),
           "--start", args.start.isoformat(), "--out", str(work / "data" / "offline_log"),
           "--defs", str(work / "feature_defs")]
    if args.no_progress:
        cmd.append("--no-progress")
    timings["generate_seconds"] = round(run(cmd, "the generator"), 3)
    marker.write_text(json.dumps({"data": wanted, "timings": timings}, indent=2))
    return {"reused": False, **timings}


def batch_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``batch:`` section appended to the project's feature_store.yaml."""
    settings: dict[str, Any] = {"temp_directory": "data/duckdb_tmp"}
    if args.memory_limit:
        settings["memory_limit"] = args.memory_limit
    if args.threads:
        settings["threads"] = args.threads
    return settings


def write_batch_settings(config: Path, settings: dict[str, Any]) -> None:
    """Replace the ``batch:`` section of the project's feature_store.yaml (the last section)."""
    text = config.read_text()
    head, found, _ = text.partition("\nbatch:\n")
    text = (head + "\n" if found else text)
    config.write_text(text + "batch:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items()))


def load_generator():
    spec = importlib.util.spec_from_file_location("parity_bench_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# -- step 2: the training set ---------------------------------------------------------------


def spine_window(args: argparse.Namespace, gen) -> tuple[int, int]:
    """[first, end) in microseconds: the last --spine-days days of the data."""
    world = gen.World(args.scale, args.days, args.seed, args.start)
    days = min(args.spine_days, args.days)
    return world.day_start_us(args.days - days), world.day_start_us(args.days)


def write_spine(args: argparse.Namespace, gen, path: Path, rows: int, tag: int, progress: bool) -> dict[str, Any]:
    """A deterministic impression spine: user, video, its creator, ts, label; written in 1M-row chunks."""
    from tqdm import tqdm

    world = gen.World(args.scale, args.days, args.seed, args.start)
    creator_of = world.catalogue["video_creator"]
    first, end = spine_window(args, gen)
    schema = pa.schema([("user_id", pa.int64()), ("video_id", pa.int64()), ("creator_id", pa.int64()),
                        ("ts", pa.timestamp("us")), ("label", pa.int8())])
    chunk = 1_000_000
    with pq.ParquetWriter(str(path), schema, compression="zstd", compression_level=1) as writer, \
            tqdm(total=rows, desc="spine", unit="row", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
        for part, begin in enumerate(range(0, rows, chunk)):
            n = min(chunk, rows - begin)
            rng = np.random.default_rng(np.random.SeedSequence([args.seed, tag, part]))
            user = world.sample(rng, "user", n)
            video = world.sample(rng, "video", n)
            ts = rng.integers(first, end, n)
            label = (rng.random(n) < 0.3).astype(np.int8)
            writer.write_table(pa.table({"user_id": user, "video_id": video, "creator_id": creator_of[video],
                                         "ts": pa.array(ts, pa.timestamp("us")), "label": label}, schema=schema))
            bar.update(n)
    return {"rows": rows, "path": str(path), "ts_from": _iso(first), "ts_to_exclusive": _iso(end),
            "bytes": path.stat().st_size}


def _iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(us))).isoformat() + "Z"


@contextmanager
def duckdb_profiler(enabled: bool) -> Iterator[list[dict[str, Any]]]:
    """With ``--profile``: time every statement the engine runs and keep DuckDB's operator profile.

    It wraps ``parity.batch.engine.connect`` (what ``FeatureStore`` opens its connection
    with), so it works whatever SQL the engine issues. Operator timings are DuckDB's own
    (CPU seconds summed over threads).
    """
    records = _DONE
    records.clear()
    if not enabled:
        yield records
        return
    import parity.batch.engine as engine

    original = engine.connect

    class Profiled:
        def __init__(self, con) -> None:
            self._con = con
            con.execute("PRAGMA enable_profiling = 'no_output'")
            con.execute("SET profiling_mode = 'detailed'")

        def __getattr__(self, name: str):
            return getattr(self._con, name)

        def _record(self, sql: str, began: float) -> None:
            seconds = time.perf_counter() - began
            entry: dict[str, Any] = {"sql": " ".join(sql.split())[:300], "seconds": round(seconds, 3)}
            if seconds >= 0.05:
                try:
                    entry["operators"] = operators(json.loads(self._con.get_profiling_information(format="json")))
                except Exception as exc:  # profiling is best effort
                    entry["operators_error"] = str(exc)
            records.append(entry)

        def execute(self, sql: str, *rest):
            began = time.perf_counter()
            _RUNNING.update(sql=" ".join(sql.split())[:600], since=began)
            try:
                result = self._con.execute(sql, *rest)
            finally:
                _RUNNING.clear()
            self._record(sql, began)
            return result

        def sql(self, sql: str, *rest):
            relation = self._con.sql(sql, *rest)
            outer = self

            class Rel:
                def __getattr__(self, name):
                    return getattr(relation, name)

                def to_arrow_table(self, *a, **k):
                    began = time.perf_counter()
                    table = relation.to_arrow_table(*a, **k)
                    outer._record(sql, began)
                    return table

            return Rel()

    def connect(*a, **k):
        return Profiled(original(*a, **k))

    engine.connect = connect
    try:
        yield records
    finally:
        engine.connect = original


def operators(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Every operator of a DuckDB JSON profile, slowest first."""
    found: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        name = node.get("name") or node.get("operator_name") or node.get("operator_type")
        if name and "timing" in node:
            extra = node.get("extra_info") or {}
            detail = {k: v for k, v in extra.items() if k in ("Join Type", "Conditions", "Groups", "Aggregates",
                                                                 "Function", "Table", "Estimated Cardinality")}
            found.append({"operator": name, "seconds": round(float(node.get("timing") or node.get("operator_timing")
                                                                   or 0.0), 3),
                          "rows_out": node.get("operator_cardinality", node.get("intermediate_rows")),
                          "detail": {k: (str(v)[:160]) for k, v in detail.items()}})
        for child in node.get("children", []):
            walk(child)

    for root in profile.get("operator", [profile]) if isinstance(profile.get("operator"), list) else [profile]:
        walk(root)
    found.sort(key=lambda o: -o["seconds"])
    return found


def statement_kind(sql: str) -> str:
    """A statement's shape with names' numbers folded: ``CREATE ... TABLE __gN_parts``, ``INSERT INTO __gN_tiles``."""
    import re

    head = re.split(r"\b(?:AS|SELECT)\b", sql, maxsplit=1)[0] if not sql.startswith("SELECT") else sql[:40]
    return re.sub(r"\d+", "N", head).strip()[:80]


def summarize_profile(records: list[dict[str, Any]], top: int = 20) -> dict[str, Any]:
    """Statements grouped by kind, operator time by operator type, and the slowest statements."""
    kinds: dict[str, dict[str, Any]] = {}
    by_operator: dict[str, float] = {}
    for r in records:
        k = kinds.setdefault(statement_kind(r["sql"]), {"statements": 0, "seconds": 0.0})
        k["statements"] += 1
        k["seconds"] += r["seconds"]
        for op in r.get("operators", []):
            by_operator[op["operator"]] = by_operator.get(op["operator"], 0.0) + op["seconds"]
    slowest = sorted(records, key=lambda r: -r["seconds"])[:top]
    return {
        "statements": len(records),
        "statement_seconds": round(sum(r["seconds"] for r in records), 3),
        "by_statement_kind": dict(sorted(((k, {"statements": v["statements"], "seconds": round(v["seconds"], 3)})
                                          for k, v in kinds.items()), key=lambda kv: -kv[1]["seconds"])),
        "operator_seconds_by_type": dict(sorted(((k, round(v, 3)) for k, v in by_operator.items()),
                                                key=lambda kv: -kv[1])),
        "slowest_statements": [{**r, "operators": r.get("operators", [])[:6]} for r in slowest],
    }


def bench_training_set(args: argparse.Namespace, gen, config: Path, progress: bool) -> dict[str, Any]:
    from parity.batch.engine import Phases
    from parity.feature_store import FeatureStore

    work: Path = args.workdir
    spine = work / "spine.parquet"
    began = time.perf_counter()
    spine_info = write_spine(args, gen, spine, args.spine_rows, tag=1001, progress=progress)
    spine_info["build_seconds"] = round(time.perf_counter() - began, 3)
    out = work / "training_set.parquet"
    out.unlink(missing_ok=True)
    store = FeatureStore(config)
    features = store.resolve(service=SERVICE)
    phases = Phases()
    print(f"training set: {args.spine_rows:,} rows x {len(features)} features of {SERVICE} ...", file=sys.stderr,
          flush=True)
    with duckdb_profiler(args.profile) as statements, \
            Probe(work / "data" / "duckdb_tmp", label="training set", heartbeat=args.heartbeat, phases=phases) as probe:
        store.get_training_set(str(spine), service=SERVICE, out=str(out), phases=phases, progress=progress)
    meta = pq.ParquetFile(out).metadata
    if meta.num_rows != args.spine_rows:
        raise SystemExit(f"error: the training set has {meta.num_rows} rows, the spine {args.spine_rows}")
    report = probe.report()
    result = {
        "spine": spine_info,
        "features": len(features),
        "output": {"path": str(out), "rows": meta.num_rows, "columns": meta.num_columns,
                   "bytes": out.stat().st_size},
        **report,
        "rows_per_second": round(args.spine_rows / probe.seconds),
        "phases": {name: round(s, 3) for name, s in phases.seconds.items()},
        "profiled": args.profile,
    }
    if args.profile:
        result["profile"] = summarize_profile(statements)
    if not args.keep_outputs:
        out.unlink(missing_ok=True)
    return result


# -- step 3: the Feast baseline -------------------------------------------------------------


def write_feast_spine(args: argparse.Namespace, gen, snapshot: pa.Table, path: Path) -> dict[str, Any]:
    """user_id, ts, row_id, label; no ts equals that user's updated_at (ties shifted by +1 µs)."""
    world = gen.World(args.scale, args.days, args.seed, args.start)
    first, end = spine_window(args, gen)
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 2002]))
    n = args.feast_spine_rows
    user = world.sample(rng, "user", n)
    ts = rng.integers(first, end, n)
    updated = updated_by_user(snapshot)
    # exercise the ttl boundary: 1% of rows at exactly updated_at + ttl (live in both), 1% one
    # microsecond later (expired in both)
    ttl = PROFILE_TTL_DAYS * US_PER_DAY
    ts[0::100] = updated[user[0::100]] + ttl
    ts[1::100] = updated[user[1::100]] + ttl + 1
    ties = 0
    while True:  # Feast counts an event at exactly t (ts <= t), Parity does not (ts < t)
        tie = ts == updated[user]
        if not tie.any():
            break
        ties += int(tie.sum())
        ts[tie] += 1
    label = (rng.random(n) < 0.3).astype(np.int8)
    pq.write_table(pa.table({"user_id": user, "ts": pa.array(ts, pa.timestamp("us")),
                             "row_id": np.arange(n, dtype=np.int64), "label": label}), str(path))
    return {"rows": n, "path": str(path), "ts_from": _iso(first), "ts_to_exclusive": _iso(end),
            "ttl_boundary_rows": len(range(0, n, 100)), "ttl_boundary_plus_1us_rows": len(range(1, n, 100)),
            "ties_shifted_by_1us": ties}


def updated_by_user(snapshot: pa.Table) -> np.ndarray:
    """updated_at (µs) indexed by user_id (the generator numbers users 1..N)."""
    ids = snapshot["user_id"].to_numpy()
    table = np.full(int(ids.max()) + 1, np.iinfo(np.int64).min, dtype=np.int64)
    table[ids] = snapshot["updated_at"].cast(pa.int64()).to_numpy()
    return table


def oracle(snapshot: pa.Table, spine: pa.Table) -> dict[str, Any]:
    """Expected values straight from the snapshot: the row of the user if t - ttl <= updated_at < t."""
    ids = snapshot["user_id"].to_numpy()
    index = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    index[ids] = np.arange(len(ids))
    users = spine["user_id"].to_numpy()
    t = spine["ts"].cast(pa.int64()).to_numpy()
    row = index[users]
    updated = snapshot["updated_at"].cast(pa.int64()).to_numpy()[row]
    ttl = PROFILE_TTL_DAYS * US_PER_DAY
    live = (row >= 0) & (updated < t) & (updated >= t - ttl)
    status = np.where(row < 0, "missing", np.where(updated >= t, "missing",
                                                    np.where(updated < t - ttl, "expired", "ok")))
    values = {}
    for name in PROFILE_FEATURES:
        column = snapshot[name].take(pa.array(np.where(row >= 0, row, 0)))
        values[name] = pc.if_else(pa.array(live), column, pa.nulls(len(row), column.type))
    kinds, counts = np.unique(status, return_counts=True)
    return {"values": values, "status": {str(k): int(c) for k, c in zip(kinds, counts)},
            "at_ttl_boundary": int(((row >= 0) & (updated == t - ttl)).sum()),
            "one_us_past_ttl": int(((row >= 0) & (updated == t - ttl - 1)).sum())}


def _comparable(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def mismatches(a: pa.Array, b: pa.Array) -> int:
    a, b = _comparable(a), _comparable(b)
    differ = pc.fill_null(pc.not_equal(a, b), False)
    one_null = pc.xor(pc.is_null(a), pc.is_null(b))
    return int(pc.sum(pc.or_(differ, one_null)).as_py() or 0)


def feast_repo(work: Path, snapshot_path: Path):
    """A Feast 0.67 repo in a temp dir: DuckDB offline store, user entity, user_profile view (ttl 30d)."""
    from feast import Entity, FeatureStore as FeastStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Int64, String, UnixTimestamp

    repo = Path(tempfile.mkdtemp(prefix="feast-repo-", dir=work))
    (repo / "data").mkdir()
    copy = repo / "data" / "user_profile.parquet"
    table = pq.read_table(snapshot_path)
    utc_us = pa.timestamp("us", tz="UTC")  # microseconds: Feast's DuckDB store fails on nanosecond timestamps
    for name in ("signup_ts", "updated_at"):
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(utc_us))
    pq.write_table(table, str(copy))
    (repo / "feature_store.yaml").write_text(
        "project: parity_bench\n"
        "provider: local\n"
        "registry: data/registry.db\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        "offline_store:\n  type: duckdb\n"
        "entity_key_serialization_version: 3\n")
    store = FeastStore(repo_path=str(repo))
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="user_profile_source", path=str(copy), timestamp_field="updated_at")
    view = FeatureView(name="user_profile", entities=[user], ttl=dt.timedelta(days=PROFILE_TTL_DAYS), online=False,
                       schema=[Field(name="user_id", dtype=Int64), Field(name="country", dtype=String),
                               Field(name="language", dtype=String), Field(name="age_bucket", dtype=String),
                               Field(name="signup_ts", dtype=UnixTimestamp)],
                       source=source)
    store.apply([user, view])
    return store, repo


def bench_feast(args: argparse.Namespace, gen, config: Path) -> dict[str, Any]:
    import pandas as pd

    from parity.batch.engine import Phases
    from parity.feature_store import FeatureStore

    work: Path = args.workdir
    snapshot_path = work / "data" / "user_profile" / "part-0.parquet"
    snapshot = pq.read_table(snapshot_path)
    spine_path = work / "feast_spine.parquet"
    spine_info = write_feast_spine(args, gen, snapshot, spine_path)
    print(f"feast baseline: {args.feast_spine_rows:,} rows x {len(PROFILE_FEATURES)} user_profile features ...",
          file=sys.stderr, flush=True)

    began = time.perf_counter()
    fstore, repo = feast_repo(work, snapshot_path)
    setup_seconds = time.perf_counter() - began
    refs = [f"user_profile:{name}" for name in PROFILE_FEATURES]
    with Probe(label="feast: Feast get_historical_features", heartbeat=args.heartbeat) as feast_probe:
        entity_df = pd.read_parquet(spine_path).rename(columns={"ts": "event_timestamp"})
        entity_df["event_timestamp"] = entity_df["event_timestamp"].dt.tz_localize("UTC")
        read_seconds = time.perf_counter() - feast_probe.started
        feast_table = fstore.get_historical_features(entity_df=entity_df, features=refs).to_arrow()
    del entity_df
    timezone = _duckdb_timezone()

    pstore = FeatureStore(config)
    # Parity's batch modules imported before the clock starts, as Feast's are by its repo setup
    # (with PYTHONDONTWRITEBYTECODE set, an editable install compiles them from source on import)
    import parity.batch.training_set  # noqa: F401

    phases = Phases()
    with duckdb_profiler(args.profile) as statements, \
            Probe(label="feast: Parity get_training_set", heartbeat=args.heartbeat, phases=phases) as parity_probe:
        parity_table = pstore.get_training_set(str(spine_path), features=["user_profile:*"], phases=phases)

    spine = pq.read_table(spine_path)
    expected = oracle(snapshot, spine)
    feast_table = feast_table.sort_by("row_id")
    parity_table = parity_table.sort_by("row_id")
    if not (feast_table.num_rows == parity_table.num_rows == spine.num_rows):
        raise SystemExit(f"error: row counts differ: spine {spine.num_rows}, Feast {feast_table.num_rows}, "
                         f"Parity {parity_table.num_rows}")
    assert pc.all(pc.equal(parity_table["row_id"], spine["row_id"])).as_py()
    assert pc.all(pc.equal(feast_table["row_id"], spine["row_id"])).as_py()
    per_feature = {}
    for name in PROFILE_FEATURES:
        parity_col = parity_table[f"user_profile__{name}"]
        feast_col = feast_table[name]
        per_feature[name] = {
            "parity_vs_feast": mismatches(parity_col, feast_col),
            "parity_vs_oracle": mismatches(parity_col, expected["values"][name]),
            "feast_vs_oracle": mismatches(feast_col, expected["values"][name]),
            "non_null": spine.num_rows - parity_col.null_count,
        }
    total = sum(f["parity_vs_feast"] for f in per_feature.values())
    feast_report, parity_report = feast_probe.report(), parity_probe.report()
    shutil.rmtree(repo, ignore_errors=True)
    return {
        "spine": spine_info,
        "features": list(refs),
        "feast": {**feast_report, "read_spine_seconds": round(read_seconds, 3),
                  "repo_setup_seconds_not_timed": round(setup_seconds, 3), "duckdb_timezone": timezone},
        "parity": {**parity_report, "phases": {name: round(x, 3) for name, x in phases.seconds.items()},
                   "profiled": args.profile,
                   **({"profile": summarize_profile(statements, top=8)} if args.profile else {})},
        "speedup": round(feast_report["seconds"] / parity_report["seconds"], 2),
        "values_compared": spine.num_rows * len(PROFILE_FEATURES),
        "mismatches": total,
        "per_feature": per_feature,
        "oracle_status": expected["status"],
        "rows_at_ttl_boundary": expected["at_ttl_boundary"],
        "rows_one_us_past_ttl": expected["one_us_past_ttl"],
    }


def _duckdb_timezone() -> str | None:
    try:
        import duckdb

        return duckdb.connect().execute("SELECT current_setting('TimeZone')").fetchall()[0][0]
    except Exception:
        return None


# -- step 4: backfill -----------------------------------------------------------------------


def bench_backfill(args: argparse.Namespace, config: Path, progress: bool) -> dict[str, Any]:
    from parity.feature_store import FeatureStore

    store = FeatureStore(config)
    tiles = store.tiles_root
    if tiles.exists():
        shutil.rmtree(tiles)  # measure a cold backfill
    start = dt.datetime.combine(args.start, dt.time())
    end = start + dt.timedelta(days=args.days)
    print(f"backfill: [{start}, {end}) for every view ...", file=sys.stderr, flush=True)
    with duckdb_profiler(args.profile) as statements, \
            Probe(args.workdir / "data" / "duckdb_tmp", label="backfill", heartbeat=args.heartbeat) as probe:
        summary = store.backfill(start, end, progress=progress)
    extra = {"profiled": args.profile}
    if args.profile:
        extra["profile"] = summarize_profile(statements, top=10)
    return {**extra, "start": start.isoformat(), "end": end.isoformat(), "views": summary.views, "files": summary.files,
            "tiles": summary.tiles, "bytes": _dir_bytes(tiles), **probe.report(),
            "per_tile_set_seconds": {k: round(v, 3) for k, v in summary.seconds.items()}}


# -- report -----------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    ts = results.get("training_set")
    if ts:
        found["training_set_wall"] = {"target": f"<= {TARGETS['training_set_seconds']:.0f} s",
                                      "measured": ts["seconds"], "met": ts["seconds"] <= TARGETS["training_set_seconds"]}
        found["training_set_peak_rss"] = {"target": f"<= {TARGETS['training_set_peak_rss_gib']:.0f} GiB",
                                          "measured": peak_gib(ts),
                                          "met": peak_gib(ts) <= TARGETS["training_set_peak_rss_gib"]}
    fe = results.get("feast")
    if fe:
        found["feast_speedup"] = {"target": f">= {TARGETS['feast_speedup']:.0f}x", "measured": fe["speedup"],
                                  "met": fe["speedup"] >= TARGETS["feast_speedup"]}
        found["feast_agreement"] = {"target": "0 mismatches", "measured": fe["mismatches"], "met": fe["mismatches"] == 0}
    bf = results.get("backfill")
    if bf:
        found["backfill_wall"] = {"target": f"<= {TARGETS['backfill_seconds']:.0f} s", "measured": bf["seconds"],
                                  "met": bf["seconds"] <= TARGETS["backfill_seconds"]}
    return found


def summary_table(results: dict[str, Any]) -> str:
    lines = []
    a = results["args"]
    lines.append(f"Parity batch benchmark, {results['date_utc']}, {results['machine']['cores']} cores, "
                 f"{results['machine'].get('memory_gib')} GiB; scale {a['scale']:,} events over {a['days']} days")
    ts = results.get("training_set")
    if ts:
        lines.append(f"\ntraining set ({SERVICE}, {ts['features']} features, {ts['spine']['rows']:,} spine rows)"
                     + (" [PROFILED]" if ts["profiled"] else ""))
        lines.append(f"  wall {ts['seconds']:.1f} s   {ts['rows_per_second']:,} rows/s   peak RSS {peak_gib(ts):.2f} GiB "
                     f"(sampled {ts['peak_rss_sampled_gib']:.2f}, ru_maxrss {ts['ru_maxrss_process_gib']:.2f})   "
                     f"spill peak {ts['duckdb_spill_peak_gib']} GiB   CPU s: self {ts.get('cpu_seconds_self')}, "
                     f"other processes {ts.get('cpu_seconds_other_processes')}")
        for name, seconds in ts["phases"].items():
            lines.append(f"  {seconds:9.2f} s  {name}")
    fe = results.get("feast")
    if fe:
        lines.append(f"\nFeast baseline (user_profile, 4 features, ttl 30d, {fe['spine']['rows']:,} spine rows)")
        lines.append(f"  Feast {fe['feast']['seconds']:.2f} s (peak RSS {peak_gib(fe['feast']):.2f} GiB)   "
                     f"Parity {fe['parity']['seconds']:.2f} s (peak RSS {peak_gib(fe['parity']):.2f} GiB)"
                     f"{' [PROFILED]' if fe['parity'].get('profiled') else ''}   "
                     f"Parity is {fe['speedup']:.1f}x faster")
        lines.append(f"  agreement: {fe['mismatches']} mismatches in {fe['values_compared']:,} values; "
                     f"oracle status {fe['oracle_status']}; ties shifted {fe['spine']['ties_shifted_by_1us']}; "
                     f"rows at t - ttl {fe['rows_at_ttl_boundary']}, at t - ttl - 1us {fe['rows_one_us_past_ttl']}")
    bf = results.get("backfill")
    if bf:
        lines.append(f"\nbackfill [{bf['start']}, {bf['end']}) of {len(bf['views'])} views"
                     + (" [PROFILED]" if bf.get("profiled") else ""))
        lines.append(f"  wall {bf['seconds']:.1f} s   {bf['tiles']:,} tiles in {bf['files']} files "
                     f"({bf['bytes'] / 1024 ** 2:.0f} MiB)   peak RSS {peak_gib(bf):.2f} GiB   CPU s: self "
                     f"{bf.get('cpu_seconds_self')}, other processes {bf.get('cpu_seconds_other_processes')}")
    src = results.get("source", {})
    lines.append(f"\nengine: commit {str(src.get('commit'))[:10]}, uncommitted {src.get('uncommitted_engine_files')}, "
                 f"batch/*.py sha256 {src.get('batch_sha256')}"
                 + ("  WARNING: batch/*.py changed on disk during the run" if results.get(
                     "engine_changed_on_disk_during_run") else ""))
    lines.append("\ntargets")
    for name, v in results["verdicts"].items():
        lines.append(f"  {name:<24} {v['target']:<14} measured {v['measured']:<10} {'met' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_batch.py",
        description="Benchmark Parity's batch engine (DuckDB) in one run: scaffold a project and generate the "
                    "short-video example data; time a point-in-time training set of the home_feed_ranking service "
                    "(31 features); compare the 4 user_profile latest-value features with Feast 0.67's DuckDB "
                    "offline store (time and every value); time a 30-day backfill of every view. Prints a summary "
                    "and writes JSON.",
        epilog="targets: training set <= 120 s and <= 12 GiB peak RSS (50M events, 10M rows); Parity >= 5x faster "
               "than Feast with 0 mismatches; backfill <= 60 s.\n"
               "quick run: python benchmarks/bench_batch.py --scale 2000000 --spine-rows 500000 "
               "--feast-spine-rows 200000\n"
               "order: Feast baseline, backfill, then the training set (so a training set stopped from outside leaves "
               "the other results saved); while a step runs, RESULTS.heartbeat.json (beside --results) holds the step, "
               "the engine phases done, RSS and DuckDB's spill size (and, with --profile, the running statement).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=50_000_000,
                        help="video events to generate (follow events: scale/20; default: 50000000)")
    parser.add_argument("--days", type=int, default=30, help="days of events (default: 30)")
    parser.add_argument("--seed", type=int, default=7, help="generator and spine seed (default: 7)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1),
                        help="first day of the data, UTC (default: 2026-01-01)")
    parser.add_argument("--spine-rows", type=int, default=10_000_000,
                        help="rows of the home_feed_ranking training-set spine (default: 10000000)")
    parser.add_argument("--spine-days", type=int, default=20,
                        help="spine times are uniform over the last N days of the data (default: 20)")
    parser.add_argument("--feast-spine-rows", type=int, default=1_000_000,
                        help="rows of the Feast-vs-Parity spine (default: 1000000)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="project folder to create (default: $TMPDIR/parity-bench-SCALE); replaced if an earlier "
                             "run of this benchmark made it, refused if it holds anything else")
    parser.add_argument("--reuse-data", action="store_true",
                        help="keep the project and data of an earlier run in --workdir when its scale, days, seed "
                             "and start match (the generator is deterministic); the batch: settings are rewritten")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS),
                        help="run only these benchmarks (default: all three)")
    parser.add_argument("--memory-limit", default=None,
                        help="batch.memory_limit written to the project's feature_store.yaml, e.g. 10GB "
                             "(default: unset, DuckDB's default of 80%% of RAM)")
    parser.add_argument("--threads", type=int, default=None,
                        help="batch.threads written to the project's feature_store.yaml (default: unset, all cores)")
    parser.add_argument("--profile", action="store_true",
                        help="time every DuckDB statement Parity runs (training sets and backfill) and record "
                             "DuckDB's operator profile of the slow ones (adds overhead: use for diagnosis, not for "
                             "the headline numbers)")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON result file (default: WORKDIR/results.json)")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the training set Parquet in WORKDIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scale < 1 or args.spine_rows < 1 or args.feast_spine_rows < 1 or args.days < 1 or args.spine_days < 1:
        parser.error("--scale, --days, --spine-days, --spine-rows and --feast-spine-rows must be positive")
    if args.workdir is None:
        args.workdir = Path(tempfile.gettempdir()) / f"parity-bench-{args.scale}"
    args.workdir = args.workdir.resolve()
    results_path = (args.results or args.workdir / "results.json").resolve()
    args.heartbeat = results_path.with_name(results_path.stem + ".heartbeat.json")
    progress = not args.no_progress
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_batch.py", *argv])
    results: dict[str, Any] = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "machine": machine(),
        "versions": versions(),
        "args": {k: (v.isoformat() if isinstance(v, dt.date) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
        "targets": TARGETS,
    }
    began = time.perf_counter()
    # import the engine now, so the source state recorded is the code this run executes
    for module in ("parity.feature_store", "parity.batch.engine", "parity.batch.training_set", "parity.batch.backfill"):
        importlib.import_module(module)

    results["source"] = source_state()
    results["project"] = prepare_project(args)
    gen = load_generator()
    config = args.workdir / "feature_store.yaml"

    def save() -> None:
        results["verdicts"] = verdicts(results)
        now = source_state()
        results["engine_changed_on_disk_during_run"] = now["batch_sha256"] != results["source"]["batch_sha256"]
        results["total_seconds"] = round(time.perf_counter() - began, 1)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2, default=str) + "\n")

    # the training set runs last: if it has to be stopped from outside, the other two are saved
    # and the heartbeat file says which phase it was in
    if "feast" in args.only:
        results["feast"] = bench_feast(args, gen, config)
        save()
    if "backfill" in args.only:
        results["backfill"] = bench_backfill(args, config, progress)
        save()
    if "training-set" in args.only:
        results["training_set"] = bench_training_set(args, gen, config, progress)
    save()
    print(summary_table(results))
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
