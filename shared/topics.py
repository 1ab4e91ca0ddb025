"""The topic registry: every topic ICC uses, with its partitioning and retention.

Every topic is keyed by site id so all events of one site stay ordered in one partition.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    compacted: bool = False
    description: str = ""


BEDS = Topic("icc.beds.v1", description="bed status and bed management events")
EDFLOW = Topic("icc.edflow.v1", description="ED milestones and ambulance handovers")
ESCALATIONS = Topic("icc.escalations.v1", description="escalation lifecycle events")
# Keyed by site/entity (not site alone) so that compaction keeps the latest state of every ward.
STATE = Topic("icc.state.v1", compacted=True, description="live state published by command-centre")
DLQ = Topic("icc.dlq.v1", description="poison messages that exhausted their retries")
# One record per broker incarnation: lets services notice a broker that lost its log (see ADR 0002).
META = Topic("icc.meta.v1", description="broker incarnation marker")

ALL: tuple[Topic, ...] = (BEDS, EDFLOW, ESCALATIONS, STATE, DLQ, META)


def partitions_for(topic: Topic, default: int) -> int:
    return 1 if topic is META else default


def state_key(site_id: str, entity_id: str) -> str:
    """Key of a record on the compacted state topic: one per entity, so compaction keeps each latest."""
    return f"{site_id}/{entity_id}"
