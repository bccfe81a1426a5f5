"""The co-partitioning assignor: partition p of every input topic goes to one member."""

from __future__ import annotations

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from shared.runtime.assignor import CoPartitionedAssignor

TOPICS: tuple[str, ...] = ("skills.enrollment.events", "skills.assessment.events")


class Cluster:
    """What an assignor reads of the cluster metadata: the partitions of each topic."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))


def assign(assignor, members: dict[str, tuple[str, ...]], partitions: dict[str, int]):
    metadata = {m: assignor.metadata(topics) for m, topics in members.items()}
    result = assignor.assign(Cluster(partitions), metadata)
    return {m: {t: set(p) for t, p in a.assignment} for m, a in result.items()}


def test_every_member_count_from_one_to_thirteen_gets_the_same_partitions_of_both_topics() -> None:
    for n in range(1, 14):
        members = {f"member-{i:02d}": TOPICS for i in range(n)}
        got = assign(CoPartitionedAssignor, members, {t: 12 for t in TOPICS})
        owners: dict[tuple[str, int], str] = {}
        for member, by_topic in got.items():
            enrollment = by_topic.get(TOPICS[0], set())
            assert enrollment == by_topic.get(TOPICS[1], set()), (n, member, by_topic)
            for topic, parts in by_topic.items():
                for p in parts:
                    assert (topic, p) not in owners, f"{topic}/{p} assigned twice with {n} members"
                    owners[(topic, p)] = member
        assert len(owners) == 24, f"{n} members: {24 - len(owners)} partitions unassigned"
        counts = sorted(len(by_topic.get(TOPICS[0], set())) for by_topic in got.values())
        # balanced within one partition number; members beyond 12 idle
        assert counts[-1] - counts[0] <= 1, (n, counts)
        assert sum(1 for c in counts if c) == min(n, 12)


def test_the_default_round_robin_assignor_splits_a_partition_pair_with_five_members() -> None:
    """Why the services need their own assignor (issue #16, item 1)."""
    members = {f"member-{i}": TOPICS for i in range(5)}
    got = assign(RoundRobinPartitionAssignor, members, {t: 12 for t in TOPICS})
    assert any(by_topic.get(TOPICS[0], set()) != by_topic.get(TOPICS[1], set())
               for by_topic in got.values())


def test_a_member_without_a_topic_leaves_its_partitions_to_the_next_member_that_reads_it() -> None:
    members = {"a": TOPICS, "b": (TOPICS[0],), "c": TOPICS}
    got = assign(CoPartitionedAssignor, members, {t: 6 for t in TOPICS})
    assert got["a"] == {TOPICS[0]: {0, 3}, TOPICS[1]: {0, 3}}
    assert got["b"] == {TOPICS[0]: {1, 4}}
    assert got["c"] == {TOPICS[0]: {2, 5}, TOPICS[1]: {1, 2, 4, 5}}


def test_a_topic_without_metadata_is_skipped_and_the_rest_assigned() -> None:
    members = {"a": TOPICS, "b": TOPICS}
    got = assign(CoPartitionedAssignor, members, {TOPICS[0]: 4})
    assert got == {"a": {TOPICS[0]: {0, 2}}, "b": {TOPICS[0]: {1, 3}}}
