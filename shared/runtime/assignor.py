"""Co-partitioning: a consumer-group member that gets partition p of one topic gets p of all.

Every topic of the contract is keyed by ``person_id`` (or, upstream, by the reference of a
person's record) with one partitioner, so partition p of ``skills.enrollment.events`` and
partition p of ``skills.assessment.events`` hold the same persons. A service that reads both
must read both on the same member, or two replicas decide one person at the same time, each
from half of the facts (aiokafka's default round-robin assignor splits them as soon as the
group has 5, 7 or 8+ members). Kafka Streams relies on the same property.

The assignment: partition numbers, sorted, dealt round-robin to the members sorted by id; a
member takes its numbers in every topic it subscribes to. A member that does not subscribe to
a topic (only during a deployment that changes a service's topics) leaves that topic's
partition to the next member in the same order that does. Members beyond the number of
partitions get nothing: replicas beyond the partition count idle.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)


class CoPartitionedAssignor(AbstractPartitionAssignor):
    """Partition p of every subscribed topic to one member (see the module docstring)."""

    name = "copartitioned"
    version = 0

    @classmethod
    def assign(
        cls,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        order = sorted(members)
        topics = sorted({t for m in members.values() for t in m.subscription})
        partitions: dict[str, set[int]] = {}
        for topic in topics:
            found = cluster.partitions_for_topic(topic)
            if found is None:
                log.warning("no partition metadata for topic %s", topic)
                continue
            partitions[topic] = set(found)
        numbers = sorted(set().union(*partitions.values())) if partitions else []
        if len({len(p) for p in partitions.values()}) > 1:
            log.warning("co-partitioned topics differ in partition count: %s",
                        {t: len(p) for t, p in partitions.items()})
        assignment: dict[str, dict[str, list[int]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        for index, number in enumerate(numbers):
            for topic, present in partitions.items():
                if number not in present:
                    continue
                for step in range(len(order)):
                    member = order[(index + step) % len(order)]
                    if topic in members[member].subscription:
                        assignment[member][topic].append(number)
                        break
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, sorted((t, sorted(p)) for t, p in assignment[member].items()), b""
            )
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass
