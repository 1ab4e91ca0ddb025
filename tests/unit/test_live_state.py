"""The gateway's live state: cursors that resume exactly, slow subscribers that coalesce or are dropped,
escalations that reach every scope they concern and are forgotten an hour after they close."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.gateway.live_state import CLOSED_ESCALATION_KEPT, HEARTBEAT_QUIET, LiveState, Subscriber
from shared.auth import Scope, Tier
from shared.organisation import Organisation

pytestmark = pytest.mark.unit


def ward(ward_id: str, version: int, occupied: int = 0) -> dict[str, Any]:
    return {"ward_id": ward_id, "version": version, "counts": {"occupied": occupied}}


def drain(subscriber: Subscriber) -> list[dict[str, Any]]:
    frames = []
    while (frame := subscriber.take()) is not None:
        frames.append(orjson.loads(frame))
    return frames


def site_of(org: Organisation) -> tuple[Scope, list[str]]:
    site = org.sites[0]
    return Scope(Tier.site, site.id), [w.id for w in site.wards]


async def test_resume_sends_exactly_what_changed_since_the_cursor(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    for i, w in enumerate(wards):
        live.seed(ward(w, 1, i))
    first = Subscriber()
    snapshot = orjson.loads(live.subscribe(first, scope))
    assert snapshot["type"] == "snapshot" and len(snapshot["wards"]) == len(wards)
    live.update(ward(wards[0], 2))
    (delta,) = drain(first)
    cursor = delta["cursor"]
    live.unsubscribe(first)

    live.update(ward(wards[1], 5))
    live.update(ward(wards[1], 6))
    live.update(ward(wards[0], 2))  # not newer: no change

    # a different replica (another LiveState holding the same durable versions) resumes the same
    other = LiveState(org)
    for w in wards:
        other.seed(live.wards[w])
    for state in (live, other):
        resumed = orjson.loads(state.subscribe(Subscriber(), scope, cursor))
        assert resumed["type"] == "resume"
        assert [w["ward_id"] for w in resumed["wards"]] == [wards[1]]
        assert resumed["wards"][0]["version"] == 6


async def test_unusable_cursor_gets_a_fresh_snapshot(org: Organisation) -> None:
    scope, _ = site_of(org)
    live = LiveState(org)
    other_scope = Scope(Tier.site, org.sites[1].id)
    foreign = live.cursor(other_scope)
    for cursor in ("garbage", "c1.0000.AAAA", foreign):
        assert orjson.loads(live.subscribe(Subscriber(), scope, cursor))["type"] == "snapshot"


async def test_slow_subscriber_coalesces_to_latest_state_per_entity(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    slow, fast = Subscriber(limit=3), Subscriber(limit=1000)
    slow.offer(live.subscribe(slow, scope))
    fast.offer(live.subscribe(fast, scope))
    for version in range(1, 11):
        for w in wards[:2]:
            live.update(ward(w, version))
    fast_frames = drain(fast)
    assert len(fast_frames) == 1 + 20  # snapshot and every delta, nothing held back
    frames = drain(slow)
    kinds = [f["type"] for f in frames]
    assert kinds[:4] == ["snapshot", "delta", "delta", "resync"]
    tail = frames[4:]
    # after the marker only the latest state of each ward, each once
    assert sorted((f["ward"]["ward_id"], f["ward"]["version"]) for f in tail) == [
        (wards[0], 10),
        (wards[1], 10),
    ]
    assert slow.coalescing_since is None
    assert live.stragglers(1e12, 30.0) == []


async def test_escalations_reach_the_scopes_they_concern(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    watcher = Subscriber()
    live.subscribe(watcher, scope)
    escalation = {"id": "e1", "version": 1, "scope": f"ward:{wards[0]}", "status": "open", "tier": "ward"}
    assert live.update_escalation(escalation)
    assert not live.update_escalation(escalation)
    frames = drain(watcher)
    assert frames[-1]["escalation"]["id"] == "e1"
    assert orjson.loads(live.snapshot(scope))["escalations"] == [escalation]
    cursor = frames[-1]["cursor"]
    resolved = {**escalation, "version": 2, "status": "resolved"}
    live.update_escalation(resolved)
    assert orjson.loads(live.snapshot(scope))["escalations"] == []
    resumed = orjson.loads(live.subscribe(Subscriber(), scope, cursor))
    assert resumed["escalations"] == [resolved], "a resume says what was resolved meanwhile"
    other_site = Scope(Tier.site, org.sites[1].id)
    assert orjson.loads(live.snapshot(other_site))["escalations"] == []


async def test_a_snapshot_is_never_dropped_from_a_full_queue(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    slow = Subscriber(limit=2)
    slow.offer(live.subscribe(slow, scope))
    for version in range(1, 5):
        live.update(ward(wards[0], version))
    live.heartbeat(now=time.monotonic() + HEARTBEAT_QUIET)  # due, but the queue is full
    other = Scope(Tier.ward, wards[1])
    slow.offer(live.subscribe(slow, other))
    kinds = [(f["type"], f["scope"] if "scope" in f else None) for f in drain(slow)]
    assert ("snapshot", str(other)) in kinds
    assert ("heartbeat", None) not in kinds


class Socket:
    """A connection's direct write as the gateway's server offers it: takes bytes while `open`."""

    def __init__(self) -> None:
        self.open = True
        self.writes: list[bytes] = []

    def __call__(self, wire: bytes) -> bool:
        if self.open:
            self.writes.append(wire)
        return self.open


def frames_in(wire: bytes) -> list[dict[str, Any]]:
    """The text frames of unmasked server-to-client bytes (RFC 6455 5.2)."""
    messages, at = [], 0
    while at < len(wire):
        assert wire[at] == 0x81, "a final text frame"
        length, at = wire[at + 1], at + 2
        if length == 126:
            length, at = int.from_bytes(wire[at : at + 2]), at + 2
        elif length == 127:
            length, at = int.from_bytes(wire[at : at + 8]), at + 8
        messages.append(orjson.loads(wire[at : at + length]))
        at += length
    return messages


async def test_an_idle_connection_is_written_directly_and_a_busy_one_keeps_order(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    socket = Socket()
    watcher = Subscriber(direct=socket)
    watcher.offer(live.subscribe(watcher, scope))
    live.update(ward(wards[0], 1))
    assert socket.writes == [], "the snapshot is still queued: the delta must wait behind it"
    assert [f["type"] for f in drain(watcher)] == ["snapshot", "delta"]

    live.update(ward(wards[0], 2))
    assert [f["ward"]["version"] for f in frames_in(b"".join(socket.writes))] == [2]
    assert watcher.take() is None

    watcher.sending = True  # its sender holds a frame it has not written yet
    live.update(ward(wards[0], 3))
    watcher.sending = False
    socket.open = False  # the socket stopped taking data
    live.update(ward(wards[0], 4))
    socket.open = True
    live.update(ward(wards[0], 5))
    assert len(socket.writes) == 1, "nothing may overtake what is queued"
    assert [f["ward"]["version"] for f in drain(watcher)] == [3, 4, 5]


async def test_a_batch_reaches_each_connection_in_one_write_in_order(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    sockets = [Socket(), Socket()]
    for socket in sockets:
        watcher = Subscriber(direct=socket)
        live.subscribe(watcher, scope)  # the snapshot taken out of band, so the queue is empty
    with live.batch():
        live.update(ward(wards[0], 1))
        live.update(ward(wards[1], 1))
        live.update_summary({"scope": str(scope), "version": 1, "metrics": {}})
        assert all(s.writes == [] for s in sockets), "nothing goes out before the batch ends"
    for socket in sockets:
        assert len(socket.writes) == 1
        sent = frames_in(socket.writes[0])
        assert [f["seq"] for f in sent] == [1, 2, 3]
        assert [f.get("ward", {}).get("ward_id") for f in sent] == [wards[0], wards[1], None]
        assert sent[2]["summary"]["scope"] == str(scope)


async def test_a_large_catch_up_is_queued_where_it_can_coalesce(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    socket = Socket()
    watcher = Subscriber(direct=socket, limit=10)
    live.subscribe(watcher, scope)
    padding = "x" * 1000
    with live.batch():
        for version in range(1, 101):
            live.update({**ward(wards[0], version), "note": padding})
    assert socket.writes == []
    assert drain(watcher)[-1]["ward"]["version"] == 100


async def test_heartbeats_go_only_to_connections_that_heard_nothing_lately(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    busy, quiet = Subscriber(), Subscriber()
    live.subscribe(busy, scope)
    live.subscribe(quiet, Scope(Tier.ward, wards[1]))
    quiet.last_frame -= HEARTBEAT_QUIET
    live.update(ward(wards[0], 1))  # reaches `busy` only
    live.heartbeat()
    assert [f["type"] for f in drain(busy)] == ["delta"]
    assert [f["type"] for f in drain(quiet)] == ["heartbeat"]
    live.heartbeat(now=time.monotonic() + HEARTBEAT_QUIET)
    assert [f["type"] for f in drain(busy)] == ["heartbeat"]
    assert [f["type"] for f in drain(quiet)] == ["heartbeat"]


async def test_a_queue_of_frames_that_cannot_coalesce_is_bounded(org: Organisation) -> None:
    """Snapshots, resumes and answers have no entity to coalesce on: past the limit the client
    counts as behind (dropped after the grace), and at twice the limit it is dropped at once."""
    scope, _ = site_of(org)
    live = LiveState(org)
    reader, stalled = Subscriber(limit=3), Subscriber(limit=3)
    live.connect(stalled)  # subscribed to nothing: only answers to pings queue up
    for subscriber in (reader, stalled):
        for _ in range(4):
            subscriber.offer(live.subscribe(subscriber, scope), answer=True)
    assert stalled.behind_since is not None
    assert set(live.stragglers(stalled.behind_since + 31.0, 30.0)) == {reader, stalled}
    assert not stalled.too_slow.is_set()

    drain(reader)  # a client that reads again is in time again
    assert reader.behind_since is None and reader.unanswered == 0
    live.unsubscribe(stalled)
    assert live.stragglers(1e12, 30.0) == [stalled], "a connection counts without any subscription"

    stalled.offer(live.snapshot(scope), answer=True)
    stalled.offer(live.snapshot(scope), answer=True)
    assert stalled.pending == 6 and not stalled.too_slow.is_set()
    stalled.offer(live.snapshot(scope), answer=True)
    assert stalled.too_slow.is_set(), "past twice its limit a connection is dropped without the grace"
    stalled.offer(live.snapshot(scope), answer=True)
    assert stalled.pending == 7, "nothing more is queued for a connection being closed"
    live.disconnect(stalled)
    assert live.stragglers(1e12, 30.0) == []


async def test_answers_count_until_they_are_sent(org: Organisation) -> None:
    scope, wards = site_of(org)
    live = LiveState(org)
    socket = Socket()
    watcher = Subscriber(direct=socket)
    live.connect(watcher)
    pong = orjson.dumps({"type": "pong"}).decode()
    watcher.deliver([(pong, None)], pong.encode(), answer=True)
    assert watcher.unanswered == 0, "an answer written at once waits for nothing"
    watcher.offer(live.subscribe(watcher, scope), answer=True)
    live.update(ward(wards[0], 1))
    watcher.deliver([(pong, None)], pong.encode(), answer=True)
    assert watcher.unanswered == 2, "the snapshot and the pong queued behind it"
    assert watcher.take() is not None and watcher.unanswered == 1
    assert [f["type"] for f in drain(watcher)] == ["delta", "pong"]
    assert watcher.unanswered == 0


def escalation_at(ident: str, version: int, scope: str, origin: str, status: str = "open") -> dict[str, Any]:
    return {
        "id": ident,
        "version": version,
        "scope": scope,
        "origin_scope": origin,
        "site_id": "",
        "status": status,
        "tier": scope.split(":")[0],
    }


async def test_a_ward_keeps_seeing_what_it_promoted_until_it_is_resolved(org: Organisation) -> None:
    site, wards = site_of(org)
    system = Scope(Tier.system, org.system.id)
    place = Scope(Tier.ward, wards[0])
    live = LiveState(org)
    ward_watcher, site_watcher = Subscriber(), Subscriber()
    live.subscribe(ward_watcher, place)
    live.subscribe(site_watcher, site)
    raised = {**escalation_at("e1", 1, str(place), str(place)), "site_id": site.id}
    live.update_escalation(raised)
    cursor = drain(ward_watcher)[-1]["cursor"]
    promoted = {**raised, "version": 2, "tier": "site", "scope": str(site)}
    live.update_escalation(promoted)
    assert [f["escalation"]["version"] for f in drain(ward_watcher)] == [2]
    assert orjson.loads(live.snapshot(place))["escalations"] == [promoted]
    on_top = {**promoted, "version": 3, "tier": "system", "scope": str(system)}
    live.update_escalation(on_top)
    resolved = {**on_top, "version": 4, "status": "resolved"}
    live.update_escalation(resolved)
    assert [f["escalation"]["version"] for f in drain(ward_watcher)] == [3, 4]
    assert [f["escalation"]["version"] for f in drain(site_watcher)] == [1, 2, 3, 4]
    assert orjson.loads(live.snapshot(place))["escalations"] == []
    resumed = orjson.loads(live.subscribe(Subscriber(), place, cursor))
    assert resumed["type"] == "resume" and resumed["escalations"] == [resolved]


async def test_a_system_escalation_reaches_the_system_watchers_only(org: Organisation) -> None:
    site, _ = site_of(org)
    system = Scope(Tier.system, org.system.id)
    live = LiveState(org)
    site_watcher, system_watcher = Subscriber(), Subscriber()
    live.subscribe(site_watcher, site)
    live.subscribe(system_watcher, system)
    # a system escalation is stored under the first site (its partition key): that says nothing of where it is
    raised = {**escalation_at("s1", 1, str(system), str(system)), "site_id": site.id}
    live.update_escalation(raised)
    assert drain(site_watcher) == []
    assert [f["escalation"]["id"] for f in drain(system_watcher)] == ["s1"]
    assert orjson.loads(live.snapshot(site))["escalations"] == []
    assert orjson.loads(live.snapshot(system))["escalations"] == [raised]


async def test_a_closed_escalation_is_forgotten_an_hour_after_it_closed(org: Organisation) -> None:
    site, wards = site_of(org)
    now = [datetime(2026, 11, 26, 9, 0, tzinfo=UTC)]
    live = LiveState(org, clock=lambda: now[0])
    watcher = Subscriber()
    live.subscribe(watcher, site)
    place = f"ward:{wards[0]}"
    live.update_escalation(escalation_at("open", 1, place, place))
    live.update_escalation(escalation_at("done", 1, place, place))
    cursor = drain(watcher)[-1]["cursor"]
    closed = {**escalation_at("done", 2, place, place, "auto_resolved"), "updated_at": now[0].isoformat()}
    live.update_escalation(closed)
    assert [e["id"] for e in orjson.loads(live.snapshot(site))["escalations"]] == ["open"]

    now[0] += CLOSED_ESCALATION_KEPT - timedelta(seconds=1)
    live.forget_closed_escalations()
    resumed = orjson.loads(live.subscribe(Subscriber(), site, cursor))
    assert resumed["type"] == "resume" and resumed["escalations"] == [closed], "still in time to take it down"

    now[0] += timedelta(seconds=1)
    live.forget_closed_escalations()
    assert "done" not in live.escalations
    assert "done" not in str(live.decode_cursor(site, live.cursor(site)))
    # a cursor naming what is no longer kept is too old: the client gets everything afresh
    assert orjson.loads(live.subscribe(Subscriber(), site, cursor))["type"] == "snapshot"
    # one that arrives closed longer ago than that (a replay of the topic) is neither kept nor sent
    drain(watcher)
    old = {**escalation_at("old", 3, place, place, "resolved"), "updated_at": "2026-11-26T09:00:00+00:00"}
    live.update_escalation(old)
    assert "old" not in live.escalations and drain(watcher) == []
    assert "open" in live.escalations
