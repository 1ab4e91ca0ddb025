"""The gateway's copy of live state and its fan-out to subscribers.

Every replica holds the latest summary of every ward, site, system and escalation (seeded from
PostgreSQL, then kept current from the state and escalation topics read whole). A subscription is a
scope; one frame is encoded per scope and change, however many clients watch it.

Resume rests on durable data, not on a counter of this process: every entity carries the version
the command centre gave it, and a scope's *cursor* is the versions of the entities it covers. Any
replica, before or after a restart, can compare a client's cursor with what it holds and send
exactly the entities that changed since. `seq` only numbers a connection's messages of a scope so a
client can notice a gap; it is not meant to survive the connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import logging
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from services.gateway.direct_send import DirectWrite, text_frame
from shared.auth import Scope, Tier
from shared.events import utcnow
from shared.organisation import Organisation

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
HEARTBEAT_QUIET = 5.0  # seconds without a frame after which a connection gets the next heartbeat
DIRECT_LIMIT = 64 * 1024  # bytes written at once to a connection; asyncio's default high-water mark
CLOSE_TOO_SLOW = 4408
CURSOR_PREFIX = "c1"
CLOSED_ESCALATION = frozenset({"resolved", "auto_resolved", "closed", "cancelled"})
# How long a closed escalation stays in live state and cursors: long enough for a screen that
# reconnects to be told it closed, short enough that cursors and fan-out do not grow with history.
CLOSED_ESCALATION_KEPT = timedelta(hours=1)


@dataclass(eq=False)
class Subscriber:
    """One connection's outgoing frames; the connection's sender task drains them.

    Up to QUEUE_LIMIT frames wait in order. Past that the subscriber *coalesces*: it keeps only the
    latest frame per entity (a newer state makes an older one worthless) and tells the client with
    a `resync` marker that `seq` will jump. Frames of no entity (snapshots, resumes, answers) cannot
    coalesce and still queue past the limit. A client that stays behind, coalescing or over its
    limit, too long is dropped; one whose queue passes twice its limit is dropped at once.
    """

    limit: int = QUEUE_LIMIT
    frames: deque[str] = field(default_factory=deque)
    coalesced: OrderedDict[str, str] = field(default_factory=OrderedDict)
    coalescing_since: float | None = None
    scopes: set[Scope] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    too_slow: asyncio.Event = field(default_factory=asyncio.Event)
    # The connection's direct write (services.gateway.direct_send), when its server offers one, and
    # whether its sender holds a frame not yet written: only an idle, empty queue may be bypassed.
    direct: DirectWrite | None = None
    sending: bool = False
    last_frame: float = field(default_factory=time.monotonic)  # when a frame last went out or queued
    over_limit_since: float | None = None  # frames of no entity queued past the limit, since when
    # Answers to the client's requests (snapshot, resume, pong, act_result) still in `frames`, by
    # their position in the order of all frames queued so far.
    _answers: deque[int] = field(default_factory=deque)
    _queued: int = 0
    _taken: int = 0

    def deliver(
        self,
        frames: list[tuple[str, str | None]],
        wire: bytes,
        *,
        droppable: bool = False,
        answer: bool = False,
    ) -> None:
        """Send `frames` (frame, coalescing key), encoded once for everyone as `wire`, in one write if
        nothing waits before them and the socket takes them at once; otherwise queue each as `offer`.

        A catch-up larger than DIRECT_LIMIT is queued too, where it can coalesce, rather than
        buffered whole for every connection.
        """
        if (
            self.direct is not None
            and not self.sending
            and not self.frames
            and not self.coalesced
            and len(wire) <= DIRECT_LIMIT
        ):
            if self.direct(wire):
                self.last_frame = time.monotonic()
                return
        for frame, key in frames:
            self.offer(frame, key, droppable=droppable, answer=answer)

    def offer(
        self, frame: str, key: str | None = None, *, droppable: bool = False, answer: bool = False
    ) -> None:
        """Queue `frame`; `key` names the entity it carries, so a later frame may replace it.

        A `droppable` frame (a heartbeat) is left out when the queue is full; a snapshot never is,
        but it puts the connection behind. An `answer` to the client counts as unanswered until
        it is taken. Nothing more is queued for a connection that is being closed as too slow.
        """
        if self.too_slow.is_set():
            return
        if self.coalescing_since is None and len(self.frames) < self.limit:
            self._append(frame, answer)
        elif key is None:
            if not droppable or len(self.frames) < self.limit:
                self._append(frame, answer)
            if len(self.frames) > self.limit and self.over_limit_since is None:
                self.over_limit_since = asyncio.get_running_loop().time()
            if len(self.frames) > 2 * self.limit:
                self.too_slow.set()
        else:
            if self.coalescing_since is None:
                self.coalescing_since = asyncio.get_running_loop().time()
                self.frames.append(orjson.dumps({"type": "resync", "reason": "client too slow"}).decode())
            self.coalesced.pop(key, None)
            self.coalesced[key] = frame
        self.last_frame = time.monotonic()
        self.ready.set()

    def _append(self, frame: str, answer: bool) -> None:
        self.frames.append(frame)
        self._queued += 1
        if answer:
            self._answers.append(self._queued)

    def take(self) -> str | None:
        if self.frames:
            frame = self.frames.popleft()
            self._taken += 1
            while self._answers and self._answers[0] <= self._taken:
                self._answers.popleft()
            if len(self.frames) <= self.limit:
                self.over_limit_since = None
            return frame
        if self.coalesced:
            _, frame = self.coalesced.popitem(last=False)
            if not self.coalesced:
                self.coalescing_since = None
            return frame
        self.ready.clear()
        return None

    async def next_frame(self) -> str:
        while True:
            frame = self.take()
            if frame is not None:
                return frame
            await self.ready.wait()

    @property
    def pending(self) -> int:
        return len(self.frames) + len(self.coalesced)

    @property
    def unanswered(self) -> int:
        """The client's requests whose answers are still queued (an answer being written is not)."""
        return len(self._answers)

    @property
    def behind_since(self) -> float | None:
        """Since when the client has been behind: coalescing, or over its limit with frames of no entity."""
        since = [t for t in (self.coalescing_since, self.over_limit_since) if t is not None]
        return min(since, default=None)


class CursorError(ValueError):
    pass


class LiveState:
    def __init__(self, org: Organisation, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.org = org
        self.clock = clock
        self.wards: dict[str, dict[str, Any]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}  # "site:ID" / "system:ID" → metrics and OPEL
        self.escalations: dict[str, dict[str, Any]] = {}  # escalation id → its latest lifecycle state
        # scope → the ids of the escalations it covers, so that a scope's cursor walks only its own
        self._escalations_by_scope: defaultdict[Scope, dict[str, None]] = defaultdict(dict)
        self._closed: list[tuple[datetime, str, int]] = []  # heap: (when to forget, id, version)
        self.seq: dict[Scope, int] = defaultdict(int)
        self.subscribers: dict[Scope, set[Subscriber]] = defaultdict(set)
        self.connections: set[Subscriber] = set()
        self.changes = 0
        self._keys: dict[Scope, list[str]] = {}
        self._batch: defaultdict[Scope, list[tuple[str, str | None]]] | None = None
        digest = hashlib.sha256(orjson.dumps(sorted(org.wards))).hexdigest()[:8]
        self._org_digest = digest

    # -- keeping state ---------------------------------------------------------------------------

    def seed(self, summary: dict[str, Any]) -> None:
        self.update(summary, publish=False)

    def update(self, summary: dict[str, Any], *, publish: bool = True) -> bool:
        """Keep the summary if it is newer than what we hold; fan it out. Return whether it was newer."""
        ward_id = summary["ward_id"]
        held = self.wards.get(ward_id)
        if held is not None and held["version"] >= summary["version"]:
            return False
        self.wards[ward_id] = summary
        self.changes += 1
        ward = self.org.wards.get(ward_id)
        if publish and ward is not None:
            for scope in (
                Scope(Tier.ward, ward_id),
                Scope(Tier.site, ward.site_id),
                Scope(Tier.system, self.org.system.id),
            ):
                self._publish(scope, f"ward:{ward_id}", "ward", summary)
        return True

    def update_summary(self, summary: dict[str, Any], *, publish: bool = True) -> bool:
        """Keep a site's or the system's summary if newer; a site's goes to its and the system's watchers."""
        key = summary["scope"]
        held = self.summaries.get(key)
        if held is not None and held["version"] >= summary["version"]:
            return False
        self.summaries[key] = summary
        self.changes += 1
        if publish:
            scope = Scope.parse(key)
            targets = (
                [scope] if scope.tier is Tier.system else [scope, Scope(Tier.system, self.org.system.id)]
            )
            for target in targets:
                self._publish(target, key, "summary", summary)
        return True

    def update_escalation(self, escalation: dict[str, Any], *, publish: bool = True) -> bool:
        """Keep an escalation's latest lifecycle state (by version); fan it out to the scopes it concerns.
        Return whether it is kept.

        A closed one is kept for CLOSED_ESCALATION_KEPT after it closed (snapshots leave it out), so
        a resume tells a client that an escalation it showed has been resolved meanwhile; then
        `forget_closed_escalations` drops it, and a cursor that still names it is too old to resume.
        """
        escalation_id = str(escalation.get("id", escalation.get("escalation_id")))
        held = self.escalations.get(escalation_id)
        version = int(escalation.get("version", 0))
        if held is not None and held.get("version", 0) >= version:
            return False
        forget_at = self._forget_at(escalation)
        if held is None and forget_at is not None and forget_at <= self.clock():
            return False  # closed long ago (the topic read again from its start): no screen needs it
        scopes = self._escalation_scopes(escalation)
        if held is not None:
            for scope in set(self._escalation_scopes(held)) - set(scopes):
                self._escalations_by_scope[scope].pop(escalation_id, None)
        self.escalations[escalation_id] = escalation
        for scope in scopes:
            self._escalations_by_scope[scope][escalation_id] = None
        if forget_at is not None:
            heapq.heappush(self._closed, (forget_at, escalation_id, version))
        self.changes += 1
        if publish:
            for scope in scopes:
                self._publish(scope, f"escalation:{escalation_id}", "escalation", escalation)
        return True

    def _forget_at(self, escalation: dict[str, Any]) -> datetime | None:
        """When a closed escalation may be forgotten: CLOSED_ESCALATION_KEPT after its last change
        (the command centre's time, so that every replica forgets it at once); None while open."""
        if escalation.get("status") not in CLOSED_ESCALATION:
            return None
        try:
            closed_at = datetime.fromisoformat(str(escalation.get("updated_at")))
        except ValueError:
            closed_at = self.clock()
        if closed_at.tzinfo is None:
            closed_at = self.clock()
        return closed_at + CLOSED_ESCALATION_KEPT

    def forget_closed_escalations(self) -> None:
        """Drop the escalations closed more than CLOSED_ESCALATION_KEPT ago from state and cursors."""
        now = self.clock()
        while self._closed and self._closed[0][0] <= now:
            _, escalation_id, version = heapq.heappop(self._closed)
            held = self.escalations.get(escalation_id)
            if held is None or held.get("version", 0) != version:
                continue  # changed again since (a note on it): its later entry decides
            del self.escalations[escalation_id]
            for scope in self._escalation_scopes(held):
                self._escalations_by_scope[scope].pop(escalation_id, None)

    def _escalation_scopes(self, escalation: dict[str, Any]) -> list[Scope]:
        """Every scope from the system down to where the escalation is now and where it was raised:
        a ward keeps seeing what it promoted, and a system escalation reaches the system only."""
        scopes = [Scope(Tier.system, self.org.system.id)]
        for name in ("origin_scope", "scope"):
            try:
                place = Scope.parse(str(escalation.get(name) or ""))
            except ValueError:
                continue
            ward = self.org.wards.get(place.id) if place.tier is Tier.ward else None
            site_id = ward.site_id if ward is not None else place.id if place.tier is Tier.site else None
            if site_id in self.org.sites_by_id:
                scopes.append(Scope(Tier.site, str(site_id)))
            if ward is not None:
                scopes.append(place)
        return list(dict.fromkeys(scopes))

    # -- fan-out ---------------------------------------------------------------------------------

    def _publish(self, scope: Scope, key: str, kind: str, body: dict[str, Any]) -> None:
        self.seq[scope] += 1
        watchers = self.subscribers.get(scope)
        if not watchers:
            return
        frame = orjson.dumps(
            {
                "type": "delta",
                "scope": str(scope),
                "seq": self.seq[scope],
                "cursor": self.cursor(scope),
                kind: body,
            }
        ).decode()
        if self._batch is not None:
            self._batch[scope].append((frame, f"{scope}|{key}"))
        else:
            self._send(watchers, [(frame, f"{scope}|{key}")])

    @staticmethod
    def _send(
        watchers: Iterable[Subscriber], frames: list[tuple[str, str | None]], *, droppable: bool = False
    ) -> None:
        wire = b"".join(text_frame(frame) for frame, _ in frames)
        for subscriber in watchers:
            subscriber.deliver(frames, wire, droppable=droppable)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes applied inside go out together at the end: a scope's frames, in order, in one
        write per connection. The block must not await, so no one subscribes in between."""
        self._batch = defaultdict(list)
        try:
            yield
        finally:
            frames_by_scope, self._batch = self._batch, None
            for scope, frames in frames_by_scope.items():
                self._send(self.subscribers.get(scope, ()), frames)

    def subscribe(self, subscriber: Subscriber, scope: Scope, cursor: str | None = None) -> str:
        """Register and return the first frame: a snapshot, or on resume only what changed since `cursor`.

        Later deltas of the scope follow it in order.
        """
        self.connections.add(subscriber)
        self.subscribers[scope].add(subscriber)
        subscriber.scopes.add(scope)
        if cursor:
            try:
                seen = self.decode_cursor(scope, cursor)
            except CursorError as exc:
                log.info("resume of %s falls back to a snapshot: %s", scope, exc)
            else:
                return self._resume_frame(scope, seen)
        return self.snapshot(scope)

    def snapshot(self, scope: Scope) -> str:
        return orjson.dumps(
            {
                "type": "snapshot",
                "scope": str(scope),
                "seq": self.seq[scope],
                "cursor": self.cursor(scope),
                "organisation": self.organisation_view(scope),
                "wards": [self.wards[w] for w in self.ward_ids(scope) if w in self.wards],
                "summaries": [self.summaries[k] for k in self.summary_keys(scope) if k in self.summaries],
                "escalations": self._escalations_in(scope),
            }
        ).decode()

    def _resume_frame(self, scope: Scope, seen: dict[str, int]) -> str:
        newer = [k for k, v in self._versions(scope).items() if v > seen.get(k, 0)]
        return orjson.dumps(
            {
                "type": "resume",
                "scope": str(scope),
                "seq": self.seq[scope],
                "cursor": self.cursor(scope),
                "wards": [self.wards[k[5:]] for k in newer if k.startswith("ward:")],
                "summaries": [self.summaries[k] for k in newer if not k.startswith(("ward:", "escalation:"))],
                "escalations": [self.escalations[k[11:]] for k in newer if k.startswith("escalation:")],
            }
        ).decode()

    def unsubscribe(self, subscriber: Subscriber, scopes: Iterable[Scope] | None = None) -> None:
        """End the subscriber's subscriptions: all of them, or those among `scopes`."""
        ending = set(subscriber.scopes) if scopes is None else subscriber.scopes & set(scopes)
        for scope in ending:
            self.subscribers[scope].discard(subscriber)
        subscriber.scopes -= ending

    def connect(self, subscriber: Subscriber) -> None:
        """Count a connection from its start: one that subscribes to nothing can still fall behind."""
        self.connections.add(subscriber)

    def disconnect(self, subscriber: Subscriber) -> None:
        self.unsubscribe(subscriber)
        self.connections.discard(subscriber)

    def heartbeat(self, now: float | None = None) -> None:
        """Tell the quiet connections that the feed is alive.

        Any frame says so: a connection that got one in the last HEARTBEAT_QUIET seconds is left out,
        so a busy feed costs no heartbeat burst to every screen.
        """
        now = time.monotonic() if now is None else now
        quiet = [s for s in self.connections if now - s.last_frame >= HEARTBEAT_QUIET]
        frame = orjson.dumps({"type": "heartbeat", "at": utcnow().isoformat()}).decode()
        self._send(quiet, [(frame, None)], droppable=True)

    def stragglers(self, now: float, drop_after: float) -> list[Subscriber]:
        """Connections behind (`Subscriber.behind_since`) for longer than `drop_after` seconds."""
        return [
            s for s in self.connections if (since := s.behind_since) is not None and now - since > drop_after
        ]

    # -- cursors ---------------------------------------------------------------------------------

    def _entity_keys(self, scope: Scope) -> list[str]:
        keys = self._keys.get(scope)
        if keys is None:
            keys = [f"ward:{w}" for w in self.ward_ids(scope)] + self.summary_keys(scope)
            self._keys[scope] = keys
        return keys

    def _versions(self, scope: Scope) -> dict[str, int]:
        versions: dict[str, int] = {}
        for key in self._entity_keys(scope):
            held = self.wards.get(key[5:]) if key.startswith("ward:") else self.summaries.get(key)
            versions[key] = int(held["version"]) if held else 0
        for escalation_id in self._escalation_ids_in(scope):
            versions[f"escalation:{escalation_id}"] = int(self.escalations[escalation_id].get("version", 0))
        return versions

    def cursor(self, scope: Scope) -> str:
        """An opaque token: the versions of every entity of the scope, in the organisation's order.

        Wards and summaries are listed positionally (the digest pins the organisation they belong
        to); escalations, which come and go, by id.
        """
        versions = self._versions(scope)
        fixed = [versions[k] for k in self._entity_keys(scope)]
        escalations = {k[11:]: v for k, v in versions.items() if k.startswith("escalation:")}
        body = orjson.dumps([str(scope), fixed, escalations])
        encoded = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        return f"{CURSOR_PREFIX}.{self._org_digest}.{encoded}"

    def decode_cursor(self, scope: Scope, cursor: str) -> dict[str, int]:
        try:
            prefix, digest, encoded = cursor.split(".", 2)
            body = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            cursor_scope, fixed, escalations = body
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise CursorError(f"unreadable cursor: {exc}") from exc
        keys = self._entity_keys(scope)
        if prefix != CURSOR_PREFIX or digest != self._org_digest:
            raise CursorError("cursor from another format or organisation")
        if cursor_scope != str(scope) or not isinstance(fixed, list) or len(fixed) != len(keys):
            raise CursorError("cursor of another scope")
        if not isinstance(escalations, dict):
            raise CursorError("unreadable cursor")
        held = self._escalations_by_scope.get(scope, {})
        if any(k not in held for k in escalations):
            raise CursorError("cursor older than what is kept: it names an escalation long closed")
        seen = {k: int(v) for k, v in zip(keys, fixed, strict=True)}
        seen.update({f"escalation:{k}": int(v) for k, v in escalations.items()})
        return seen

    # -- scope geometry --------------------------------------------------------------------------

    def _escalation_ids_in(self, scope: Scope) -> list[str]:
        return list(self._escalations_by_scope.get(scope, ()))

    def _escalations_in(self, scope: Scope) -> list[dict[str, Any]]:
        """The open ones (a snapshot needs no history)."""
        held = (self.escalations[i] for i in self._escalation_ids_in(scope))
        return [e for e in held if e.get("status") not in CLOSED_ESCALATION]

    def summary_keys(self, scope: Scope) -> list[str]:
        if scope.tier is Tier.ward:
            return []
        if scope.tier is Tier.site:
            return [str(scope)]
        return [str(scope)] + [f"site:{s.id}" for s in self.org.sites]

    def ward_ids(self, scope: Scope) -> list[str]:
        if scope.tier is Tier.ward:
            return [scope.id]
        if scope.tier is Tier.site:
            return [w.id for w in self.org.sites_by_id[scope.id].wards]
        return list(self.org.wards)

    def organisation_view(self, scope: Scope) -> dict[str, Any]:
        wanted = set(self.ward_ids(scope))
        return {
            "system": {"id": self.org.system.id, "name": self.org.system.name},
            "sites": [
                {
                    "id": site.id,
                    "name": site.name,
                    "wards": [
                        {
                            "id": w.id,
                            "name": w.name,
                            "type": w.type.value,
                            "specialty": w.specialty,
                            "beds_total": len(w.bed_list),
                        }
                        for w in site.wards
                        if w.id in wanted
                    ],
                }
                for site in self.org.sites
                if any(w.id in wanted for w in site.wards)
            ],
        }
