"""Keeps the live state of the sites this replica owns, and publishes what changed.

Runs inside the consumer's batch transaction: the event log, ward and site summaries, history
points, snapshots, the published deltas (through the outbox) and the consumed offsets commit
together or not at all. A site is owned by the replica whose Kafka partitions carry its key (the
consumer's range assignor hands one replica the same partition of the beds and ED-flow topics); on
a rebalance the state is dropped and rebuilt from the site's latest snapshot plus the tail of its
event log, never from the beginning of time. An event for a site this replica does not own, or for
one outside the organisation, is set aside and counted, never made into a second copy of a state.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import TypeAdapter, ValidationError

from services.command_centre.escalation_engine import EscalationEngine
from services.command_centre.metrics import SiteMetrics, all_ward_metrics, site_metrics
from services.command_centre.site_state import SiteState
from shared import topics
from shared.consumer import Delivery
from shared.db import next_ids
from shared.events import BedStatus, Envelope, ScopeStateChanged, WardBedCounts, WardStateChanged, utcnow
from shared.opel import DeclaredLevel, OpelProfile, effective_level, score_site
from shared.organisation import Organisation
from shared.outbox import OutboxEvent, append
from shared.topics import state_key

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 2  # 2: encounters keep a timeline; stays' bed writes held apart until settled
HISTORY_INTERVAL = timedelta(minutes=1)
_REGISTERS = (
    "beds",
    "ncr",
    "encounters",
    "bed_writes",
    "ncr_writes",
    "attendances",
    "handovers",
    "unmapped_locations",
    "applied",
)
# Why an event was set aside unapplied (the consumer counts them by these names).
UNKNOWN_SITE = "unknown_site"  # not a site of the organisation model
NOT_OWNED = "not_owned"  # a site another replica owns: its partitions were split between replicas
SET_ASIDE_REASONS = (UNKNOWN_SITE, NOT_OWNED)


def site_partition(site_id: str, partitions: int) -> int:
    """The partition a site's events land on (the producer's default partitioner on the site key)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(site_id.encode(), every, every))


@dataclass
class HistoryThrottle:
    """Writes a series on change, at most once per interval; a change inside the interval waits."""

    last: dict[str, tuple[float | None, datetime]] = field(default_factory=dict)
    pending: dict[str, float | None] = field(default_factory=dict)

    def offer(self, values: dict[str, float | None], now: datetime) -> list[tuple[str, float | None]]:
        due: list[tuple[str, float | None]] = []
        for metric, value in values.items():
            previous = self.last.get(metric)
            if previous is not None and previous[0] == value:
                self.pending.pop(metric, None)
                continue
            if previous is None or now - previous[1] >= HISTORY_INTERVAL:
                due.append((metric, value))
                self.last[metric] = (value, now)
                self.pending.pop(metric, None)
            else:
                self.pending[metric] = value
        return due

    def flush(self, now: datetime) -> list[tuple[str, float | None]]:
        return self.offer(dict(self.pending), now) if self.pending else []


@dataclass
class LiveSite:
    state: SiteState
    last_event_id: int = 0
    since_snapshot: int = 0
    ward_versions: dict[str, int] = field(default_factory=dict)
    ward_published: dict[str, dict[str, Any]] = field(default_factory=dict)
    scope_version: int = 0
    scope_published: dict[str, Any] | None = None
    history: HistoryThrottle = field(default_factory=HistoryThrottle)
    declared: DeclaredLevel | None = None


def _unpickle(site_id: str, snapshot: asyncpg.Record) -> dict[str, Any] | None:
    """A snapshot's registers, or None (rebuild from the whole log) when it cannot be used."""
    if snapshot["format"] != SNAPSHOT_FORMAT:
        return None
    try:
        registers = pickle.loads(snapshot["state"])
    except Exception as exc:  # damaged, or written by code whose classes have since changed
        log.warning("site %s: snapshot unreadable (%r); rebuilding from the event log", site_id, exc)
        return None
    if not isinstance(registers, dict) or set(registers) != set(_REGISTERS):
        log.warning("site %s: snapshot holds other registers; rebuilding from the event log", site_id)
        return None
    return registers


JSON_TIME: TypeAdapter[datetime] = TypeAdapter(datetime)

OPEL_SERIES = ("opel_computed_level", "opel_level")
"""History series of the computed and the effective (declared while active, else computed) level."""


def history_values(metrics: SiteMetrics, opel: Mapping[str, Any]) -> dict[str, float | None]:
    """The series kept as history: the numeric metrics, and the levels of a site's or the system's
    OPEL view (kept as shown, so a past level stays the one the profile then in force gave)."""
    values = {k: (float(v) if v is not None else None) for k, v in metrics.opel_inputs().items()}
    levels = (opel["computed"]["level"], opel["effective_level"])
    for series, level in zip(OPEL_SERIES, levels, strict=True):
        values[series] = float(level) if level is not None else None
    return values


def with_change(opel: dict[str, Any], published: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """`opel` with its `change`: the last change of the effective level (from which level, and when).

    Taken from what was last published for the scope: a new change when the effective level differs
    from it, else the change it carried. A scope's first summary has none. Published summaries are
    kept in `scope_state`, so the change outlives a restart or a change of leader, and every screen
    shows the same trend whenever it connected."""
    before = published.get("opel") if published else None
    if not before:
        change = None
    elif before.get("effective_level") != opel["effective_level"]:
        change = {"from_level": before.get("effective_level"), "at": JSON_TIME.dump_python(now, mode="json")}
    else:
        change = before.get("change")
    return {**opel, "change": change}


class StateProjection:
    def __init__(
        self,
        org: Organisation,
        profile: OpelProfile,
        *,
        partitions: int,
        clock: Callable[[], datetime] = utcnow,
        snapshot_every: int = 5000,
        escalations: EscalationEngine | None = None,
    ) -> None:
        self.org = org
        self.profile = profile
        self.partitions = partitions
        self.clock = clock
        self.snapshot_every = snapshot_every
        self.escalations = escalations
        self.sites: dict[str, LiveSite] = {}
        self.owned: set[str] = set()
        self.lock = asyncio.Lock()
        self._warned: dict[str, set[str]] = {reason: set() for reason in SET_ASIDE_REASONS}

    # ---- ownership ---------------------------------------------------------------------------
    def forget(self) -> None:
        self.sites.clear()
        if self.escalations is not None:
            self.escalations.forget()

    def assigned(self, partitions: Sequence[TopicPartition], counts: dict[str, int]) -> None:
        """Own the sites whose key lands on this replica's beds partitions."""
        mine = {tp.partition for tp in partitions if tp.topic == topics.BEDS.name}
        count = counts.get(topics.BEDS.name) or self.partitions
        if len(set(counts.values())) > 1:
            log.warning(
                "topics have different partition counts %s: a site's events may reach another replica "
                "than its bed events, and are then set aside",
                counts,
            )
        self.owned = {s.id for s in self.org.sites if site_partition(s.id, count) in mine}
        self._warned[NOT_OWNED].clear()  # a new assignment: report a split again
        self.forget()

    async def _live(self, conn: asyncpg.Connection, site_id: str) -> LiveSite:
        live = self.sites.get(site_id)
        if live is None:
            live = await self._load(conn, site_id)
            self.sites[site_id] = live
        return live

    async def _load(self, conn: asyncpg.Connection, site_id: str) -> LiveSite:
        state = SiteState(self.org.sites_by_id[site_id], self.org.system.id)
        live = LiveSite(state)
        snapshot = await conn.fetchrow(
            "SELECT last_event_id, format, state FROM site_snapshot WHERE site_id = $1", site_id
        )
        registers = _unpickle(site_id, snapshot) if snapshot is not None else None
        if registers is not None:
            for name, value in registers.items():
                setattr(state, name, value)
            live.last_event_id = snapshot["last_event_id"]
        async with conn.transaction():
            cursor = conn.cursor(
                "SELECT id, body FROM site_event WHERE site_id = $1 AND id > $2 ORDER BY id",
                site_id,
                live.last_event_id,
                prefetch=5000,
            )
            async for row in cursor:
                state.apply(Envelope.from_json(row["body"]))
                live.last_event_id = row["id"]
                live.since_snapshot += 1
        for row in await conn.fetch(
            "SELECT ward_id, version, summary FROM ward_state WHERE site_id = $1", site_id
        ):
            live.ward_versions[row["ward_id"]] = row["version"]
            live.ward_published[row["ward_id"]] = _comparable(row["summary"])
        scope = await conn.fetchrow(
            "SELECT version, summary FROM scope_state WHERE scope = $1", f"site:{site_id}"
        )
        if scope is not None:
            live.scope_version = scope["version"]
            live.scope_published = _comparable(scope["summary"])
        live.declared = await current_declared(conn, f"site:{site_id}", self.clock())
        for row in await conn.fetch(
            "SELECT DISTINCT ON (metric) metric, value, at FROM metric_point WHERE scope = $1 "
            "ORDER BY metric, at DESC",
            f"site:{site_id}",
        ):
            live.history.last[row["metric"]] = (row["value"], row["at"])
        return live

    # ---- applying a batch --------------------------------------------------------------------
    async def apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> Counter[str]:
        async with self.lock:
            return await self._apply(conn, deliveries)

    async def _apply(self, conn: asyncpg.Connection, deliveries: Sequence[Delivery]) -> Counter[str]:
        sites = {d.envelope.site_id for d in deliveries}
        set_aside: Counter[str] = Counter()
        if not sites <= self.owned:
            set_aside = self._set_aside(sites - self.owned, deliveries)
            sites &= self.owned
            deliveries = [d for d in deliveries if d.envelope.site_id in sites]
        if not deliveries:
            return set_aside
        for site_id in sites:
            await self._live(conn, site_id)  # load (snapshot + tail) before this batch joins the log
        fresh: list[Delivery] = []
        seen: set[uuid.UUID] = set()
        for d in deliveries:
            if d.envelope.event_id not in seen:  # the same event twice in one batch: logged once
                seen.add(d.envelope.event_id)
                fresh.append(d)
        # Ids first (one round trip), then a binary COPY: far cheaper than INSERT … RETURNING.
        ids = await next_ids(conn, "site_event", len(fresh))
        await conn.copy_records_to_table(
            "site_event",
            columns=("id", "event_id", "site_id", "event_type", "occurred_at", "body"),
            records=[
                (
                    i,
                    d.envelope.event_id,
                    d.envelope.site_id,
                    d.envelope.event_type,
                    d.envelope.occurred_at,
                    d.raw,
                )
                for i, d in zip(ids, fresh, strict=True)
            ],
        )
        changed: dict[str, set[str]] = defaultdict(set)
        last_id: dict[str, int] = {}
        for i, delivery in zip(ids, fresh, strict=True):
            site_id = delivery.envelope.site_id
            live = self.sites[site_id]
            changed[site_id] |= live.state.apply(delivery.envelope)
            live.since_snapshot += 1
            last_id[site_id] = i
        now = self.clock()
        for site_id, wards in changed.items():
            live = self.sites[site_id]
            live.last_event_id = max(live.last_event_id, last_id[site_id])
            await self._publish(conn, site_id, live, {w for w in wards if w}, now)
            if live.since_snapshot >= self.snapshot_every:
                await self._snapshot(conn, site_id, live)
        return set_aside

    def _set_aside(self, strangers: set[str], deliveries: Sequence[Delivery]) -> Counter[str]:
        """Count the deliveries for sites not owned here, by reason, and report each site once."""
        reasons = {s: NOT_OWNED if s in self.org.sites_by_id else UNKNOWN_SITE for s in strangers}
        for site_id, reason in reasons.items():
            if site_id in self._warned[reason]:
                continue
            self._warned[reason].add(site_id)
            if reason == UNKNOWN_SITE:
                log.warning("events for site %r set aside: not a site of the organisation model", site_id)
            else:
                log.warning(
                    "events for site %s set aside: another replica owns it (its partitions of the "
                    "subscribed topics are split between replicas)",
                    site_id,
                )
        return Counter(reasons[d.envelope.site_id] for d in deliveries if d.envelope.site_id in reasons)

    # ---- publishing --------------------------------------------------------------------------
    async def _publish(
        self, conn: asyncpg.Connection, site_id: str, live: LiveSite, wards: set[str] | None, now: datetime
    ) -> None:
        """Publish the wards (those events touched, or every ward when `wards` is None) and the site
        whose figures differ from what was last published."""
        state = live.state
        site = state.site
        all_wards = all_ward_metrics(state, now)
        outbox: list[OutboxEvent] = []
        ward_rows = []
        for ward in site.wards:
            if wards is not None and ward.id not in wards and ward.id in live.ward_published:
                continue
            wm = all_wards[ward.id]
            beds = {b.id: state.bed_status(b.id) for b in ward.bed_list}
            counts = WardBedCounts(**wm.counts)
            # as stored, so that a restarted replica compares a time as the string it published
            figures = wm.model_dump(mode="json", exclude={"ward_id", "counts", "beds_total", "available"})
            comparable = {"beds": {k: v.value for k, v in beds.items()}, "metrics": figures}
            if live.ward_published.get(ward.id) == comparable:
                continue
            version = live.ward_versions.get(ward.id, 0) + 1
            summary = WardStateChanged(
                system_id=state.system_id,
                ward_id=ward.id,
                version=version,
                beds_total=wm.beds_total,
                available=wm.available,
                counts=counts,
                beds=beds,
                as_of=now,
                metrics=figures,
            )
            live.ward_versions[ward.id] = version
            live.ward_published[ward.id] = comparable
            ward_rows.append((ward.id, site_id, state.system_id, version, summary.model_dump(mode="json")))
            outbox.append(_state_event(summary, site_id, ward.id, now))
        if ward_rows:
            await conn.executemany(
                """
                INSERT INTO ward_state (ward_id, site_id, system_id, version, summary)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (ward_id) DO UPDATE SET version = $4, summary = $5, updated_at = now()
                """,
                ward_rows,
            )
        metrics = site_metrics(state, now, all_wards.values())
        opel = with_change(self.opel_view(metrics, live.declared, now), live.scope_published, now)
        scope_event = self._scope_change(live, f"site:{site_id}", metrics, opel, now)
        if scope_event is not None:
            await upsert_scope(conn, scope_event)
            outbox.append(_state_event(scope_event, site_id, "site", now))
        points = live.history.offer(history_values(metrics, opel), now)
        await write_history(conn, f"site:{site_id}", points, now)
        if outbox:
            await append(conn, outbox)
        if self.escalations is not None:
            # rules and timers in the same transaction as the state that triggered them
            await self.escalations.evaluate_site(
                conn,
                site_id,
                {w: m.model_dump() for w, m in all_wards.items()},
                {**metrics.opel_inputs(), "opel_level": opel["effective_level"]},
                now,
            )

    def opel_view(
        self, metrics: SiteMetrics, declared: DeclaredLevel | None, now: datetime
    ) -> dict[str, Any]:
        computed = score_site(self.profile, metrics.opel_inputs())
        return {
            "computed": computed.model_dump(mode="json"),
            "declared": declared.model_dump(mode="json") if declared and declared.is_active(now) else None,
            "effective_level": effective_level(computed, declared, now),
        }

    def _scope_change(
        self, live: LiveSite, scope: str, metrics: SiteMetrics, opel: dict[str, Any], now: datetime
    ) -> ScopeStateChanged | None:
        metrics_json = metrics.model_dump(mode="json", exclude={"as_of"})
        comparable = {"metrics": metrics_json, "opel": opel}
        if live.scope_published == comparable:
            return None
        live.scope_version += 1
        live.scope_published = comparable
        return ScopeStateChanged(
            scope=scope,
            system_id=self.org.system.id,
            version=live.scope_version,
            metrics=metrics_json,
            opel=opel,
            as_of=now,
        )

    async def _snapshot(self, conn: asyncpg.Connection, site_id: str, live: LiveSite) -> None:
        data = pickle.dumps({name: getattr(live.state, name) for name in _REGISTERS}, protocol=5)
        await conn.execute(
            """
            INSERT INTO site_snapshot (site_id, last_event_id, format, state) VALUES ($1, $2, $3, $4)
            ON CONFLICT (site_id) DO UPDATE SET last_event_id = $2, format = $3, state = $4, taken_at = now()
            """,
            site_id,
            live.last_event_id,
            SNAPSHOT_FORMAT,
            data,
        )
        live.since_snapshot = 0

    # ---- the clock moves on -------------------------------------------------------------------
    async def tick(self, pool: asyncpg.Pool) -> None:
        """Waits grow and midnight passes without events: refresh owned sites, flush history.

        Every ward is looked at, not only those events touched: at midnight a quiet ward's "today"
        figures start again although nothing happened on it.
        """
        async with self.lock, pool.acquire() as conn, conn.transaction():
            now = self.clock()
            for site_id in sorted(self.owned):
                live = await self._live(conn, site_id)
                live.state.prune(now)
                live.declared = await current_declared(conn, f"site:{site_id}", now)
                await self._publish(conn, site_id, live, None, now)
                await write_history(conn, f"site:{site_id}", live.history.flush(now), now)


async def current_declared(conn: asyncpg.Connection, scope: str, now: datetime) -> DeclaredLevel | None:
    """The latest declaration active at `now`.

    A stored row that no longer reads as a `DeclaredLevel` (written before a rule was tightened,
    or by hand) is logged and passed over, so it cannot stop a site loading or the state ticking.
    """
    rows = await conn.fetch(
        """
        SELECT id, level, reason, declared_by, declared_at, expires_at FROM declared_opel
        WHERE scope = $1 AND withdrawn_at IS NULL AND declared_at <= $2
          AND (expires_at IS NULL OR expires_at > $2)
        ORDER BY declared_at DESC, id DESC
        """,
        scope,
        now,
    )
    for row in rows:
        fields = dict(row)
        declaration_id = fields.pop("id")
        try:
            return DeclaredLevel.model_validate(fields)
        except ValidationError as exc:
            log.warning("%s: declared level %s is unreadable and ignored: %s", scope, declaration_id, exc)
    return None


async def upsert_scope(conn: asyncpg.Connection, event: ScopeStateChanged) -> None:
    await conn.execute(
        """
        INSERT INTO scope_state (scope, version, summary) VALUES ($1, $2, $3)
        ON CONFLICT (scope) DO UPDATE SET version = $2, summary = $3, updated_at = now()
        """,
        event.scope,
        event.version,
        event.model_dump(mode="json"),
    )


async def write_history(
    conn: asyncpg.Connection, scope: str, points: list[tuple[str, float | None]], now: datetime
) -> None:
    if points:
        await conn.executemany(
            "INSERT INTO metric_point (scope, metric, at, value) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (scope, metric, at) DO UPDATE SET value = $4",
            [(scope, metric, now, value) for metric, value in points],
        )


def _state_event(
    payload: WardStateChanged | ScopeStateChanged, site_id: str, entity: str, now: datetime
) -> OutboxEvent:
    envelope = Envelope.wrap(
        payload, occurred_at=now, source="command-centre", site_id=site_id, entity_id=entity
    )
    return OutboxEvent(
        envelope.event_id,
        topics.STATE.name,
        state_key(site_id, entity),
        envelope.to_json(),
        envelope.event_type,
    )


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored summary that decides whether a new one is a change."""
    if "beds" in summary:
        return {
            "beds": {k: BedStatus(v).value for k, v in summary["beds"].items()},
            "metrics": summary.get("metrics"),
        }
    return {"metrics": summary.get("metrics"), "opel": summary.get("opel")}
