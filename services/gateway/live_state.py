"""The gateway's copy of live state and its fan-out to subscribers.

Every replica holds the latest summary of every ward (seeded from PostgreSQL, then kept current
from the state topic read whole). A subscription is a scope; each scope numbers its messages, and
one frame is encoded per scope and change, however many clients watch it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.auth import Scope, Tier
from shared.events import utcnow
from shared.organisation import Organisation

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
CLOSE_TOO_SLOW = 4408


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection's outgoing queue; the connection's sender task drains it."""

    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    scopes: set[Scope] = field(default_factory=set)
    too_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: str) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.too_slow.set()


class LiveState:
    def __init__(self, org: Organisation) -> None:
        self.org = org
        self.wards: dict[str, dict[str, Any]] = {}
        self.summaries: dict[str, dict[str, Any]] = {}  # "site:ID" / "system:ID" → metrics and OPEL
        self.escalations: dict[str, dict[str, Any]] = {}  # open and acknowledged, by id
        self.seq: dict[Scope, int] = defaultdict(int)
        self.subscribers: dict[Scope, set[Subscriber]] = defaultdict(set)
        self.changes = 0

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
        if publish:
            ward = self.org.wards.get(ward_id)
            if ward is not None:
                for scope in (
                    Scope(Tier.ward, ward_id),
                    Scope(Tier.site, ward.site_id),
                    Scope(Tier.system, self.org.system.id),
                ):
                    self._publish(scope, summary)
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
                self._publish(target, summary, kind="summary")
        return True

    def update_escalation(self, escalation: dict[str, Any], *, publish: bool = True) -> bool:
        """Keep an escalation if newer; push it to the watchers of its scope and every scope above."""
        key = escalation["id"]
        held = self.escalations.get(key)
        if held is not None and held["version"] >= escalation["version"]:
            return False
        if escalation["status"] in ("open", "acknowledged"):
            self.escalations[key] = escalation
        else:
            self.escalations.pop(key, None)
        self.changes += 1
        if publish:
            for target in self.scopes_above(Scope.parse(escalation["scope"])):
                self._publish(target, escalation, kind="escalation")
        return True

    def scopes_above(self, scope: Scope) -> list[Scope]:
        """The scope itself and every scope that contains it (ward → site → system)."""
        system = Scope(Tier.system, self.org.system.id)
        if scope.tier is Tier.ward:
            ward = self.org.wards.get(scope.id)
            return [scope, Scope(Tier.site, ward.site_id), system] if ward is not None else [scope]
        if scope.tier is Tier.site:
            return [scope, system]
        return [scope]

    def escalations_in(self, scope: Scope) -> list[dict[str, Any]]:
        return [e for e in self.escalations.values() if scope in self.scopes_above(Scope.parse(e["scope"]))]

    def _publish(self, scope: Scope, summary: dict[str, Any], kind: str = "ward") -> None:
        watchers = self.subscribers.get(scope)
        self.seq[scope] += 1
        if not watchers:
            return
        frame = orjson.dumps(
            {"type": "delta", "scope": str(scope), "seq": self.seq[scope], kind: summary}
        ).decode()
        for subscriber in watchers:
            subscriber.offer(frame)

    def subscribe(self, subscriber: Subscriber, scope: Scope) -> str:
        """Register and return the snapshot frame; later deltas of the scope follow it in order."""
        self.subscribers[scope].add(subscriber)
        subscriber.scopes.add(scope)
        ward_ids = self.ward_ids(scope)
        return orjson.dumps(
            {
                "type": "snapshot",
                "scope": str(scope),
                "seq": self.seq[scope],
                "organisation": self.organisation_view(scope),
                "wards": [self.wards[w] for w in ward_ids if w in self.wards],
                "summaries": [self.summaries[k] for k in self.summary_keys(scope) if k in self.summaries],
                "escalations": self.escalations_in(scope),
            }
        ).decode()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for scope in subscriber.scopes:
            self.subscribers[scope].discard(subscriber)
        subscriber.scopes.clear()

    def broadcast(self, message: dict[str, Any]) -> None:
        frame = orjson.dumps(message).decode()
        everyone = {s for watchers in self.subscribers.values() for s in watchers}
        for subscriber in everyone:
            subscriber.offer(frame)

    def heartbeat(self) -> None:
        self.broadcast({"type": "heartbeat", "at": utcnow().isoformat()})

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
