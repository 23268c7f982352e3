"""The embedded Kafka-protocol broker (Tansu), for real: topics, produce, a consumer group with
commits, an independent client (kcat) reading the same messages, ``parity produce`` and
``parity dev up|status|down``. No mocks.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from parity.embedded import kafka_bootstrap, kafka_metadata_ok, online_store_url, read_state
from parity.errors import ConfigError
from parity.registry.config import load_config
from parity.streaming.kafka import consumer_config, ensure_topics, producer_config
from parity.streaming.produce import FIELDS, TokenBucket, load_generator, produce
from test_cli_batch import parity

N = 3000
PARTITIONS = 4
ISO_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_back(bootstrap: str, partitions: dict[str, int], expected: int, timeout: float = 30.0) -> list:
    """Every message of ``partitions`` (topic -> count) from offset 0, by assign() (no group)."""
    consumer = Consumer(consumer_config(bootstrap, "reader-" + os.urandom(6).hex()))
    consumer.assign([TopicPartition(t, p, 0) for t, n in partitions.items() for p in range(n)])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
        # nothing beyond what was expected
        messages += [m for m in consumer.consume(num_messages=1000, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages


@pytest.fixture(scope="module")
def sent(kafka_broker):
    """N keyed messages produced into a fresh 4-partition topic: (topic, [(partition, offset, key, value)])."""
    topic = "roundtrip-" + os.urandom(6).hex()
    assert ensure_topics(kafka_broker.bootstrap_servers, {topic: PARTITIONS}) == {topic: PARTITIONS}
    reports = []

    def delivered(err, msg):
        assert err is None, err
        reports.append((msg.partition(), msg.offset(), msg.key().decode(), msg.value().decode()))

    producer = Producer(producer_config(kafka_broker.bootstrap_servers, on_delivery=delivered))
    for i in range(N):
        value = json.dumps({"event_id": f"e{i}", "user_id": i % 97, "n": i})
        producer.produce(topic, value.encode(), f"e{i}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(reports) == N
    return topic, sorted(reports)


def test_the_broker_answers_metadata_and_topics_are_created_once(kafka_broker, unique_topic):
    assert re.fullmatch(r"127\.0\.0\.1:\d+", kafka_broker.bootstrap_servers)
    assert kafka_broker.ready() and kafka_metadata_ok(kafka_broker.bootstrap_servers)
    topic = unique_topic("created")
    assert ensure_topics(kafka_broker.bootstrap_servers, {topic: 3}) == {topic: 3}
    # an existing topic is not an error and keeps its partitions
    assert ensure_topics(kafka_broker.bootstrap_servers, {topic: 5}) == {topic: 3}


def test_a_consumer_group_reads_everything_commits_and_resumes_from_the_commit(kafka_broker, sent):
    topic, reports = sent
    bootstrap = kafka_broker.bootstrap_servers
    group = "group-" + os.urandom(6).hex()
    consumer = Consumer(consumer_config(bootstrap, group))
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + 60
    while len(got) < N and time.monotonic() < deadline:
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            assert m.error() is None, m.error()
            got.append((m.partition(), m.offset(), m.key().decode(), m.value().decode()))
    assert sorted(got) == reports  # exactly once each: same partition, offset, key and value
    for partition in range(PARTITIONS):
        offsets = [o for p, o, _, _ in got if p == partition]
        assert offsets == list(range(len(offsets)))  # in order, no gap
    ends = {p: max(o for q, o, _, _ in got if q == p) + 1 for p in range(PARTITIONS)}
    # explicit offsets (consumer_config does not store offsets by itself): the next one to read
    consumer.commit(offsets=[TopicPartition(topic, p, end) for p, end in ends.items()], asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    assert {tp.partition: tp.offset for tp in committed} == ends
    consumer.close()

    # more messages; a new member of the group starts at the committed offsets: only those
    producer = Producer(producer_config(bootstrap))
    for i in range(10):
        producer.produce(topic, json.dumps({"event_id": f"more{i}"}).encode(), f"more{i}".encode())
    assert producer.flush(30) == 0
    again = Consumer(consumer_config(bootstrap, group))
    assert {tp.partition: tp.offset for tp in again.committed(
        [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)} == ends
    again.subscribe([topic])
    more, deadline = [], time.monotonic() + 60
    while len(more) < 10 and time.monotonic() < deadline:
        more += [m.key().decode() for m in again.consume(num_messages=100, timeout=0.5) if m.error() is None]
    more += [m.key().decode() for m in again.consume(num_messages=100, timeout=1.0) if m.error() is None]
    again.close()
    assert sorted(more) == sorted(f"more{i}" for i in range(10))


def _kcat(shim: Path) -> tuple[list[str], dict] | None:
    """``kcat`` and the environment to run it in, or None when it is not installed.

    Debian bookworm's kcat links librdkafka 2.0.2, whose parser of tagged fields skips one
    byte short per field (fixed in librdkafka 2.1): it cannot read the ApiVersions v3 answer
    of Tansu, which sends the response's tagged fields. kcat then runs on the librdkafka that
    the confluent-kafka wheel bundles (same ABI, soname librdkafka.so.1); kcat's own consumer
    and output stay independent of the Python client.
    """
    binary = shutil.which("kcat") or shutil.which("kafkacat")
    if binary is None:
        return None
    env = dict(os.environ)
    version = subprocess.run([binary, "-V"], capture_output=True, text=True).stdout
    found = re.search(r"librdkafka (\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < (2, 1):
        import confluent_kafka

        libs = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
        if not libs:
            pytest.skip(f"kcat links librdkafka {found[1]}.{found[2]}, too old for this broker, and no newer one "
                        "was found in the confluent-kafka wheel")
        shim.mkdir(exist_ok=True)
        (shim / "librdkafka.so.1").symlink_to(libs[0])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(shim), env.get("LD_LIBRARY_PATH")]))
    return [binary], env


def test_kcat_reads_the_same_messages(kafka_broker, sent, tmp_path):
    found = _kcat(tmp_path / "lib")
    if found is None:
        pytest.skip("kcat is not installed (apt-get install kcat): the independent-client check did not run")
    command, env = found
    topic, reports = sent
    out = subprocess.run(command + ["-b", kafka_broker.bootstrap_servers, "-C", "-t", topic, "-o", "beginning",
                                    "-e", "-q", "-f", "%p\t%o\t%k\t%s\n"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = sorted((int(p), int(o), k, v) for p, o, k, v in (line.split("\t", 3) for line in out.stdout.splitlines()))
    # the fixture's messages, exactly; plus the 10 "more" ones when the group test ran first
    assert [r for r in rows if not r[2].startswith("more")] == reports
    assert len(rows) in (N, N + 10)


# -- parity produce ------------------------------------------------------------------------


def _project(tmp_path, bootstrap: str | None = None, suffix: str | None = None) -> Path:
    parity("init", "p", cwd=tmp_path)
    project = tmp_path / "p"
    if bootstrap:
        config = project / "feature_store.yaml"
        config.write_text(config.read_text().replace("streaming:\n", f"streaming:\n  bootstrap_servers: {bootstrap}\n"))
    if suffix:  # topics of its own on the shared broker
        sources = project / "feature_defs" / "sources.yaml"
        text = sources.read_text()
        for name in ("video_events", "follow_events"):
            text = text.replace(f"kafka: {{topic: {name}}}", f"kafka: {{topic: {name}-{suffix}}}")
        sources.write_text(text)
    return project


def _check_event(source: str, key: bytes, value: bytes, earliest: datetime, latest: datetime) -> dict:
    event = json.loads(value)
    assert list(event) == list(FIELDS[source])  # exactly the source's fields, in schema order
    assert key.decode() == event["event_id"]
    assert isinstance(event["event_id"], str) and event["event_id"].startswith("ve-" if source == "video_events"
                                                                              else "fe-")
    for column, dtype in FIELDS[source].items():
        value = event[column]
        if dtype == "int64":
            assert isinstance(value, int) or (value is None and column == "watch_ms"), (column, value)
        elif dtype == "float64":
            assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (column, value)
    assert ISO_US.match(event["ts"]), event["ts"]
    assert earliest <= _parse_ts(event["ts"]) <= latest
    if source == "video_events":
        assert event["event_type"] in ("play", "skip", "like", "share", "comment", "report")
        assert (event["watch_ms"] is None) == (event["completion"] is None)
    return event


def test_parity_produce_sends_500_events_with_the_source_schemas(kafka_broker, tmp_path):
    suffix = os.urandom(4).hex()
    project = _project(tmp_path, kafka_broker.bootstrap_servers, suffix)
    before = datetime.now(timezone.utc)
    result = parity("produce", "--count", "500", "--rate", "0", "--partitions", "3", "--seed", "11", "--json",
                    "--quiet", cwd=project)
    after = datetime.now(timezone.utc)
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["errors"]) == (500, 0)
    assert summary["bootstrap_servers"] == kafka_broker.bootstrap_servers
    topics = {"video_events": f"video_events-{suffix}", "follow_events": f"follow_events-{suffix}"}
    assert summary["topics"] == topics
    assert sum(summary["by_source"].values()) == 500 and summary["by_source"]["follow_events"] > 0
    messages = read_back(kafka_broker.bootstrap_servers, {t: 3 for t in topics.values()}, 500)
    assert len(messages) == 500
    source_of = {t: s for s, t in topics.items()}
    # ts = send time minus an ingest delay: under 1 s mostly, 1% up to 4 h late
    events = [_check_event(source_of[m.topic()], m.key(), m.value(), before - timedelta(hours=4, seconds=1), after)
              for m in messages]
    assert len({e["event_id"] for e in events}) == 500
    counts = {s: sum(1 for m in messages if source_of[m.topic()] == s) for s in topics}
    assert counts == summary["by_source"]
    assert {m.partition() for m in messages} == {0, 1, 2}  # keyed by event_id: spread over the partitions


def test_produce_prints_a_progress_bar_and_a_summary_line(kafka_broker, tmp_path):
    project = _project(tmp_path, kafka_broker.bootstrap_servers, os.urandom(4).hex())
    result = parity("produce", "--count", "300", "--rate", "1000", cwd=project)
    assert re.fullmatch(r"sent 300 events \(\d+ video_events, \d+ follow_events\) to 127\.0\.0\.1:\d+ in "
                        r"[\d.]+ s \([\d,]+ events/s\); 0 errors; seed \d+\n", result.stdout), result.stdout
    assert "producing" in result.stderr and "ev/s" in result.stderr
    seconds = float(re.search(r" in ([\d.]+) s", result.stdout)[1])
    assert 0.2 <= seconds < 5  # 300 events at 1000/s: about 0.3 s


def test_rate_and_duration_are_honoured(kafka_broker):
    suffix = os.urandom(4).hex()
    topics = {"video_events": f"rate-ve-{suffix}", "follow_events": f"rate-fe-{suffix}"}
    summary = produce(kafka_broker.bootstrap_servers, topics, rate=400, duration=1.0, seed=3, partitions=1,
                      progress=False)
    assert summary.errors == 0
    assert 200 <= summary.sent <= 480, summary.sent  # ~400 in 1 s, never more
    assert 0.9 <= summary.seconds < 3


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(100, burst=10, clock=lambda: now[0])
    assert bucket.take(50) == 1  # starts with one token
    assert bucket.take(5) == 0 and bucket.wait() == pytest.approx(0.01)
    now[0] = 0.05
    assert bucket.take(50) == 5
    now[0] = 10.0
    assert bucket.take(50) == 10  # never more than the burst


def test_produce_errors_are_one_line_and_a_hint(tmp_path):
    from parity.embedded import free_port

    project = _project(tmp_path, f"127.0.0.1:{free_port()}")
    result = parity("produce", "--count", "5", cwd=project, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: the Kafka broker at 127.0.0.1:") and "did not answer" in lines[0]
    assert lines[1].startswith("hint: run `parity dev up`")
    bad = parity("produce", "--rate", "-1", cwd=project, check=False)
    assert bad.returncode == 2 and "must not be negative" in bad.stderr


def test_live_events_share_the_offline_catalogue_and_are_deterministic():
    gen = load_generator()
    sizes = gen.cardinalities(1_000_000)
    world = gen.World(1_000_000, 1, 5, gen.dt.date(2026, 1, 1))
    clock = itertools.count(10**15, 1000).__next__  # 1 ms per event
    events = list(itertools.islice(gen.live_events(5, *sizes, clock=clock), 20_000))
    again = list(itertools.islice(gen.live_events(5, *sizes, clock=itertools.count(10**15, 1000).__next__), 20_000))
    assert events == again
    video_creator = world.catalogue["video_creator"]
    follows = 0
    for source, event in events:
        assert list(event) == list(FIELDS[source])
        if source == "video_events":
            assert event["creator_id"] == video_creator[event["video_id"]]
            assert 1 <= event["user_id"] <= sizes[0] and 1 <= event["video_id"] <= sizes[1]
        else:
            follows += 1
            assert 1 <= event["creator_id"] <= sizes[2]
    assert 0.03 < follows / len(events) < 0.07  # one follow per 20 video events
    ts = [e["ts"] for _, e in events]
    assert any(b < a for a, b in zip(ts, ts[1:]))  # out of order
    late = sum(1 for i, t in enumerate(ts) if 10**15 + 1000 * i - t > 1_000_000)
    assert 0.005 < late / len(ts) < 0.02  # ~1% more than 1 s late


# -- parity dev up / status / down ----------------------------------------------------------


def test_dev_up_status_down_starts_and_stops_redis_and_the_broker(tmp_path):
    project = _project(tmp_path)
    try:
        up = parity("dev", "up", cwd=project).stdout.splitlines()
        assert re.fullmatch(r"redis: redis://127\.0\.0\.1:\d+/0 \(pid \d+\)", up[0]), up
        assert re.fullmatch(r"kafka: 127\.0\.0\.1:\d+ \(pid \d+\)", up[1]), up
        state = read_state(project)
        assert set(state) == {"redis", "kafka"}
        assert set(state["kafka"]) == {"bootstrap_servers", "pid", "port"}
        assert state["kafka"]["bootstrap_servers"] == f"127.0.0.1:{state['kafka']['port']}"
        assert up[1] == f"kafka: {state['kafka']['bootstrap_servers']} (pid {state['kafka']['pid']})"
        # what an engine finds: both addresses, from the state file, nothing started
        config = load_config(project)
        assert online_store_url(config, start=False) == state["redis"]["url"]
        assert kafka_bootstrap(config, start=False) == state["kafka"]["bootstrap_servers"]
        assert kafka_metadata_ok(state["kafka"]["bootstrap_servers"])
        # up again: the same servers
        assert parity("dev", "up", cwd=project).stdout.splitlines() == up
        assert parity("dev", "status", cwd=project).stdout.splitlines() == up
        produced = json.loads(parity("produce", "--count", "20", "--rate", "0", "--json", "--quiet",
                                     cwd=project).stdout)
        assert produced["bootstrap_servers"] == state["kafka"]["bootstrap_servers"] and produced["sent"] == 20
    finally:
        down = parity("dev", "down", cwd=project)
    assert down.stdout.strip() == "stopped: redis, kafka"
    for entry in state.values():
        assert not Path(f"/proc/{entry['pid']}").exists() or b"zombie" in Path(f"/proc/{entry['pid']}/status").read_bytes()
    assert parity("dev", "status", cwd=project).stdout.splitlines() == ["redis: not running", "kafka: not running"]
    with pytest.raises(ConfigError, match="no Kafka broker is running"):
        kafka_bootstrap(load_config(project), start=False)


def test_a_configured_broker_wins_and_dev_up_does_not_start_one(kafka_broker, tmp_path):
    project = _project(tmp_path, kafka_broker.bootstrap_servers)
    try:
        up = parity("dev", "up", cwd=project).stdout.splitlines()
        assert up[1] == f"kafka: {kafka_broker.bootstrap_servers} (streaming.bootstrap_servers; not started by Parity)"
        assert "kafka" not in read_state(project)
        assert kafka_bootstrap(load_config(project), start=False) == kafka_broker.bootstrap_servers
    finally:
        assert parity("dev", "down", cwd=project).stdout.strip() == "stopped: redis"
