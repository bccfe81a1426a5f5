"""When a parked record may expire: the pending watermark over the chain of consumer groups that
would bring its reference (shared/runtime/pending.py), with a fake cluster and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shared.runtime.pending import KafkaOffsets, Stage, Watermark, expiry_cutoff, stages

UPSTREAM = "skills.training.upstream"
ENROLLMENTS = "skills.enrollment.events"
RESULTS = "skills.assessment.upstream"
CHAIN = [Stage("enrollment", (UPSTREAM,)), Stage("assessment", (RESULTS, ENROLLMENTS))]


class FakeKafka:
    """Two-partition topics: appended records per partition, and each group's positions."""

    def __init__(self) -> None:
        self.ends: dict[tuple[str, int], int] = {
            (t, p): 0 for t in (UPSTREAM, ENROLLMENTS, RESULTS) for p in (0, 1)}
        self.groups: dict[str, dict[tuple[str, int], int]] = {}
        self.calls: list[str] = []

    def append(self, topic: str, partition: int, n: int = 1) -> None:
        self.ends[(topic, partition)] += n

    def catch_up(self, group: str, *topics: str) -> None:
        positions = self.groups.setdefault(group, {})
        for (t, p), end in self.ends.items():
            if t in topics:
                positions[(t, p)] = end

    async def ends_of(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        self.calls.append("ends " + ",".join(topics))
        return {tp: o for tp, o in self.ends.items() if tp[0] in topics}

    async def positions(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        self.calls.append("positions " + group)
        mine = self.groups.get(group, {})
        return {tp: mine.get(tp, 0) for tp in self.ends if tp[0] in topics}


class Offsets:
    def __init__(self, kafka: FakeKafka) -> None:
        self.kafka = kafka

    async def ends(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        return await self.kafka.ends_of(topics)

    async def positions(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        return await self.kafka.positions(group, topics)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def world() -> tuple[FakeKafka, Clock, Watermark]:
    kafka, clock = FakeKafka(), Clock()
    return kafka, clock, Watermark(CHAIN, Offsets(kafka), clock)


async def test_with_every_group_caught_up_the_watermark_is_the_time_the_probe_started() -> None:
    kafka, clock, watermark = world()
    kafka.append(UPSTREAM, 0, 5)
    kafka.catch_up("enrollment", UPSTREAM)
    assert await watermark.advance() == 1000.0
    clock.now = 1005.0
    assert await watermark.advance() == 1005.0
    # The upstream snapshot comes first, the own group's last, each after the previous passed.
    assert kafka.calls[:4] == ["ends skills.training.upstream", "positions enrollment",
                               f"ends {RESULTS},{ENROLLMENTS}", "positions assessment"]


async def test_an_upstream_backlog_of_any_length_holds_the_watermark_and_the_own_group_must_read_its_outputs() -> None:
    kafka, clock, watermark = world()
    assert await watermark.advance() == 1000.0
    clock.now = 1010.0
    kafka.append(RESULTS, 0, 100)          # results arrive at once (and are parked here) ...
    kafka.append(UPSTREAM, 0, 50_000)      # ... their enrollments are queued upstream
    kafka.append(UPSTREAM, 1, 50_000)
    kafka.catch_up("assessment", RESULTS, ENROLLMENTS)  # this service itself is idle
    for _ in range(720):                   # an hour of sweeps, the enrollment service behind
        clock.now += 5
        kafka.groups.setdefault("enrollment", {})[(UPSTREAM, 0)] = 49_999
        assert await watermark.advance() == 1000.0
    clock.now += 5
    kafka.catch_up("enrollment", UPSTREAM)  # the enrollment service is through ...
    kafka.append(ENROLLMENTS, 1, 300)       # ... and published what it decided
    assert await watermark.advance() == 1000.0  # not read here yet
    clock.now += 5
    kafka.catch_up("assessment", RESULTS, ENROLLMENTS)
    assert await watermark.advance() == 1015.0  # the probe that waited the whole hour


async def test_a_steady_lag_that_never_reaches_zero_still_moves_the_watermark() -> None:
    kafka, clock, watermark = world()
    seen = []
    for _ in range(10):
        # Each sweep the enrollment service passes what was there at the last sweep, while
        # more keeps arriving: it is never at the end.
        kafka.groups["enrollment"] = {tp: o for tp, o in kafka.ends.items() if tp[0] == UPSTREAM}
        kafka.append(UPSTREAM, 0, 1000)
        kafka.catch_up("assessment", RESULTS, ENROLLMENTS)
        seen.append(await watermark.advance())
        clock.now += 5
    assert seen[-1] > seen[0] and seen == sorted(seen)
    assert seen[-1] >= clock.now - 15  # a sweep or two behind, not stuck


async def test_a_rebuild_rewinding_the_own_group_holds_the_watermark_until_it_has_read_everything_again() -> None:
    kafka, clock, watermark = world()
    kafka.append(RESULTS, 0, 1000)
    kafka.append(ENROLLMENTS, 1, 1000)
    kafka.catch_up("assessment", RESULTS, ENROLLMENTS)
    assert await watermark.advance() == 1000.0
    kafka.groups["assessment"] = {}  # tools.rebuild: the group starts again at the beginning
    for _ in range(100):
        clock.now += 60
        assert await watermark.advance() == 1000.0
    kafka.catch_up("assessment", RESULTS, ENROLLMENTS)
    assert await watermark.advance() == 1060.0


async def test_the_enrollment_service_waits_for_its_own_group_on_every_partition() -> None:
    """TraineeEnrolled may be on another partition, owned by another replica that is behind."""
    kafka, clock = FakeKafka(), Clock()
    watermark = Watermark(stages("enrollment", [UPSTREAM], {}), Offsets(kafka), clock)
    kafka.append(UPSTREAM, 0, 10)
    kafka.append(UPSTREAM, 1, 10)
    kafka.groups["enrollment"] = {(UPSTREAM, 0): 10, (UPSTREAM, 1): 3}
    assert await watermark.advance() == 0.0
    kafka.catch_up("enrollment", UPSTREAM)
    assert await watermark.advance() == 1000.0


def test_a_parked_record_expires_only_once_the_watermark_is_a_waiting_period_past_its_arrival() -> None:
    parked_at, wait = 100.0, 20.0

    def expires(now: float, watermark: float) -> bool:
        return parked_at < expiry_cutoff(now, watermark, wait)
    assert not expires(now=10_000.0, watermark=119.0)  # a backlog: however late it is now
    assert not expires(now=10_000.0, watermark=120.0)
    assert expires(now=10_000.0, watermark=121.0)
    assert not expires(now=110.0, watermark=10_000.0)  # never before the waiting period itself
    assert expires(now=121.0, watermark=121.0)


def test_the_chain_is_the_upstream_groups_in_order_then_the_own_group_with_the_prefix() -> None:
    chain = stages("t1.assessment", ["t1." + RESULTS, "t1." + ENROLLMENTS],
                   {"enrollment": (UPSTREAM,)}, prefix="t1.")
    assert chain == [Stage("t1.enrollment", ("t1." + UPSTREAM,)),
                     Stage("t1.assessment", ("t1." + RESULTS, "t1." + ENROLLMENTS))]


class FakeAdmin:
    async def describe_topics(self, topics: list[str]) -> list[dict[str, object]]:
        return [{"error_code": 0, "topic": t, "partitions": [{"partition": 1}, {"partition": 0}]}
                for t in topics]

    async def list_consumer_group_offsets(self, group: str, partitions: list[TopicPartition]
                                          ) -> dict[TopicPartition, OffsetAndMetadata]:
        # Partition 0 committed at 7; partition 1 never committed (-1).
        return {TopicPartition(UPSTREAM, 0): OffsetAndMetadata(7, ""),
                TopicPartition(UPSTREAM, 1): OffsetAndMetadata(-1, "")}


class FakeConsumer:
    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 9 for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 4 for tp in tps}


async def test_a_partition_the_group_never_committed_counts_from_its_log_start() -> None:
    offsets = KafkaOffsets(FakeAdmin(), FakeConsumer())
    assert await offsets.ends([UPSTREAM]) == {(UPSTREAM, 0): 9, (UPSTREAM, 1): 9}
    assert await offsets.positions("enrollment", [UPSTREAM]) == {(UPSTREAM, 0): 7, (UPSTREAM, 1): 4}
