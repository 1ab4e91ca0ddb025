"""However many command-centre replicas share the group, each site's events all reach one of them.

The consumer's real assignor is run over the two topics the command centre reads, at the partition
counts the project uses, for 1 … 6 members; the projection's ownership rule then decides the sites.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from services.command_centre.projection import StateProjection, site_partition
from shared import topics
from shared.consumer import PARTITION_ASSIGNORS
from shared.opel import load_profile
from shared.organisation import load_organisation
from shared.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ORG = load_organisation(ROOT / "deploy/org/sample-icb.yaml")
PROFILE = load_profile(ROOT / "deploy/opel/default-profile.yaml")
SUBSCRIBED = (topics.BEDS.name, topics.EDFLOW.name)  # what services/command_centre/app.py reads
DEFAULT_PARTITIONS = Settings.model_fields["topic_partitions"].default
PARTITION_COUNTS = sorted({DEFAULT_PARTITIONS, 3})  # the default, and the count the tests run with


class Cluster:
    """Broker metadata as an assignor reads it (`ClusterMetadata.partitions_for_topic`, all it asks)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions)) if topic in SUBSCRIBED else None


def assign(
    assignor: type[AbstractPartitionAssignor], members: int, partitions: int
) -> dict[str, list[TopicPartition]]:
    """Each member's partitions, as the group leader's assignor deals them."""
    metadata = {f"command-centre-{m}": assignor.metadata(SUBSCRIBED) for m in range(members)}
    return {
        member: assignment.partitions()
        for member, assignment in assignor.assign(Cluster(partitions), metadata).items()
    }


def members_by_key_partition(assignment: dict[str, list[TopicPartition]]) -> dict[int, set[str]]:
    """Partition number → the members holding that partition of any subscribed topic. Every site key
    hashes to one partition number on every topic, so one member per number keeps every site whole."""
    holders: dict[int, set[str]] = {}
    for member, partitions in assignment.items():
        for tp in partitions:
            holders.setdefault(tp.partition, set()).add(member)
    return holders


@pytest.mark.parametrize("partitions", PARTITION_COUNTS)
@pytest.mark.parametrize("members", range(1, 7))
def test_every_site_lands_on_one_member(members: int, partitions: int) -> None:
    assignor = PARTITION_ASSIGNORS[0]
    assignment = assign(assignor, members, partitions)

    every = [TopicPartition(t, p) for t in SUBSCRIBED for p in range(partitions)]
    dealt = [tp for tps in assignment.values() for tp in tps]
    assert sorted(dealt) == sorted(every), "each partition of each topic dealt exactly once"
    holders = members_by_key_partition(assignment)
    assert all(len(h) == 1 for h in holders.values()), holders

    # the projection's ownership (by the beds topic) covers each site's ED partition too
    owned: list[str] = []
    for tps in assignment.values():
        projection = StateProjection(ORG, PROFILE, partitions=partitions)
        projection.assigned(tps, dict.fromkeys(SUBSCRIBED, partitions))
        ed = {tp.partition for tp in tps if tp.topic == topics.EDFLOW.name}
        assert {s.id for s in ORG.sites if site_partition(s.id, partitions) in ed} <= projection.owned
        owned += projection.owned
    assert sorted(owned) == sorted(s.id for s in ORG.sites), "every site owned by exactly one member"


def test_round_robin_would_split_a_site() -> None:
    """Why the consumer names its assignor: aiokafka's default deals both topics in one sequence."""
    holders = members_by_key_partition(assign(RoundRobinPartitionAssignor, 2, 3))
    assert any(len(h) > 1 for h in holders.values())
