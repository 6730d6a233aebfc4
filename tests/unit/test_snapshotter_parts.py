"""The snapshotter's pure parts: litestream's log read into a replica position, targets,
litestream's config, which replica a fetch restores."""

from __future__ import annotations

import pytest
import yaml

from colony.shared.config import NatsSettings, SnapshotterSettings
from colony.shared.messages import ReplicaPosition
from colony.snapshotter.fetching import choose
from colony.snapshotter.litestream import (
    TargetError,
    nats_options,
    parse,
    render,
    replica_url,
    shown,
)
from colony.snapshotter.position import Held, Tracker, log_time
from colony.snapshotter.service import stale

T0 = 1_800_000_000.0


def at(seconds: float) -> str:
    """Litestream's time format (nanoseconds, Z) for T0 + seconds."""
    from datetime import UTC, datetime

    text = datetime.fromtimestamp(T0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{text}123Z"


def sync(t: float, txid: int) -> dict:
    return {"time": at(t), "level": "DEBUG", "msg": "sync", "txid": f"{txid:016x}"}


def uploaded(t: float, txid: int) -> dict:
    return parse(
        f'{{"time":"{at(t)}","level":"DEBUG","msg":"ltx file uploaded","system":"store",'
        f'"level":0,"minTXID":"{txid:016x}","maxTXID":"{txid:016x}","size":886}}'
    )


def test_litestream_times_read_with_nanoseconds():
    assert log_time(at(1.5)) == pytest.approx(T0 + 1.5, abs=1e-5)
    assert log_time("2026-12-06T05:47:17.907438789Z") == pytest.approx(1796536037.907438, abs=1e-5)


def test_a_txid_holds_what_was_committed_before_its_sync_started():
    tracker = Tracker()
    tracker.read(T0 + 0.1, 5, 1)
    tracker.read(T0 + 0.9, 9, 1)
    tracker.line(sync(1.0, 1))  # starts after index 9 was read
    tracker.read(T0 + 1.05, 12, 1)  # committed during the sync: maybe not in txid 1
    tracker.line(uploaded(1.1, 1))
    assert tracker.position() == Held(9, 1)
    assert tracker.synced_at == pytest.approx(T0 + 1.1, abs=1e-5)
    assert tracker.lag(T0 + 2.0) == pytest.approx(2.0 - 1.05, abs=1e-5)


def test_a_sync_that_finds_nothing_new_shows_the_previous_txid_held_everything():
    tracker = Tracker()
    tracker.read(T0, 3, 1)
    tracker.line(sync(1.0, 1))
    tracker.read(T0 + 1.02, 4, 1)  # just after the sync began
    tracker.line(uploaded(1.1, 1))
    assert tracker.position() == Held(3, 1)
    tracker.line(sync(2.0, 2))  # the database idle from now on: txid 2 is never made
    tracker.line(sync(3.0, 2))
    assert tracker.position() == Held(4, 1) and tracker.lag(T0 + 4) == 0


def test_the_replica_holds_only_what_was_uploaded():
    tracker = Tracker()
    tracker.read(T0, 3, 1)
    tracker.line(sync(1.0, 1))
    tracker.line(uploaded(1.1, 1))
    tracker.read(T0 + 1.5, 7, 2)
    tracker.line(sync(2.0, 2))
    tracker.line(sync(3.0, 3))  # txid 2 was made, not uploaded yet
    assert tracker.position() == Held(3, 1)
    tracker.line(uploaded(3.2, 2))
    assert tracker.position() == Held(7, 2)
    assert [r.held for r in tracker.readings] == [Held(7, 2)]  # older ones date nothing now


def test_litestream_lines_keep_their_severity_when_a_key_repeats():
    line = '{"time":"t","level":"ERROR","msg":"compaction failed","level":1,"error":"x"}'
    assert parse(line) == {"time": "t", "level": "ERROR", "msg": "compaction failed",
                           "level2": 1, "error": "x"}  # fmt: skip
    assert parse("plain words") == {"msg": "plain words", "level": "INFO"}
    assert parse("[1, 2]") == {"msg": "[1, 2]", "level": "INFO"}


def test_errors_make_it_unhealthy_until_an_upload_or_recovery():
    tracker = Tracker()
    error = {"time": at(1), "level": "ERROR", "msg": "monitor error", "error": "disk full"}
    tracker.line(error)
    assert tracker.problem == "litestream: monitor error: disk full"
    tracker.line({"time": at(2), "level": "INFO", "msg": "replica sync recovered"})
    assert tracker.problem == ""
    tracker.line(error)
    tracker.line(uploaded(3, 1))
    assert tracker.problem == ""
    tracker.line({"msg": "not litestream's JSON"})  # no time: ignored
    assert tracker.problem == ""


def test_targets():
    assert replica_url("nats", "v1", "nats://127.0.0.1:4222", "B") == "nats://127.0.0.1:4222/B"
    assert replica_url("file:///srv/replicas/", "v1", "", "B") == "file:///srv/replicas/v1"
    # one writer per path: each voter writes under its own prefix, a folder's or a bucket's
    assert replica_url("s3://bucket/colony", "v1", "", "B") == "s3://bucket/colony/v1"
    assert replica_url("s3://bucket/colony/", "v2", "", "B") == "s3://bucket/colony/v2"
    assert replica_url("s3://bucket", "v1", "", "B") == "s3://bucket/v1"
    assert (
        replica_url("s3://k:s@bucket/p?endpoint=http://minio:9000&region=x", "v1", "", "B")
        == "s3://k:s@bucket/p/v1?endpoint=http://minio:9000&region=x"
    )
    with pytest.raises(TargetError, match="name the bucket"):
        replica_url("s3:///path", "v1", "", "B")
    with pytest.raises(TargetError, match="expected 'nats', 'file:///DIR' or 's3://"):
        replica_url("ftp://x", "v1", "", "B")
    with pytest.raises(TargetError, match="absolute path"):
        replica_url("file://relative/dir", "v1", "", "B")
    assert shown("s3://key:secret@host:9000/bucket") == "s3://host:9000/bucket"


def test_litestream_config_carries_the_settings(tmp_path):
    settings = SnapshotterSettings(sync_interval=0.5, snapshot_interval=600, retention=7200)
    config = yaml.safe_load(render(tmp_path / "management.db", "file:///r/v1", settings))
    assert config["dbs"] == [
        {"path": str(tmp_path / "management.db"),
         "replica": {"url": "file:///r/v1", "sync-interval": "0.500s"}}
    ]  # fmt: skip
    assert config["snapshot"] == {"interval": "600.000s", "retention": "7200.000s"}
    assert config["l0-retention"] == "300.000s"
    assert config["logging"] == {"level": "debug", "type": "json", "stderr": True}


def entry(node: str, term: int, index: int, healthy: bool = True) -> ReplicaPosition:
    return ReplicaPosition(node=node, target="t", term=term, index=index, healthy=healthy)


def test_a_fetch_picks_the_freshest_healthy_replica_by_term_then_index():
    entries = [
        entry("a", 2, 50),
        entry("b", 3, 40),
        entry("c", 3, 45, healthy=False),
        entry("d", 3, 41),
        entry("e", 0, 0),
    ]
    assert [e.node for e in choose(entries)] == ["d", "b", "a"]
    assert [e.node for e in choose(entries, min_index=45)] == ["a"]
    assert choose(entries, min_index=51) == []


def test_a_fetch_never_picks_a_replica_of_a_node_that_is_no_voter_or_marked_stale():
    # the lost history of a restored cluster: higher terms, on nodes no longer voters
    entries = [entry("old", 9, 900), entry("gone", 8, 800), entry("v1", 3, 40), entry("v2", 3, 41)]
    assert [e.node for e in choose(entries, voters={"v1", "v2"})] == ["v2", "v1"]
    assert [e.node for e in choose(entries)] == ["old", "gone", "v2", "v1"]
    marked = [stale(e) if e.node in ("old", "gone") else e for e in entries]
    assert [e.node for e in choose(marked)] == ["v2", "v1"]
    assert stale(entries[0]).problem.startswith("not a voter any more")


def test_the_node_nats_credentials_and_tls_go_to_a_nats_replica(tmp_path):
    assert nats_options(NatsSettings()) == {}
    nats = NatsSettings(creds="/c.creds", tls_ca="/ca.pem", tls_cert="/c.pem", tls_key="/k.pem")
    options = nats_options(nats)
    assert options == {"creds": "/c.creds", "root-cas": ["/ca.pem"], "client-cert": "/c.pem",
                       "client-key": "/k.pem"}  # fmt: skip
    text = render(tmp_path / "db", "nats://h:1/B", SnapshotterSettings(), replica=options)
    assert yaml.safe_load(text)["dbs"][0]["replica"]["creds"] == "/c.creds"
