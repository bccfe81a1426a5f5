"""The benchmark's pure parts: percentiles, trace numbering, completeness, the paced split and
the profile summary."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import orjson

from shared.contract.identity import normalise_national_id, person_id
from tools.bench import (
    OverlapProbe,
    batch_counters,
    batch_summary,
    completeness,
    cpu_split,
    paced_cores_lines,
    percentile,
    produce_paced,
    split_lanes,
    summarise_profile,
    trace_seq,
    traceparent,
    with_traceparent,
)
from tools.expected import DEFAULT_SECRET, Out, persons_in_several_lanes
from tools.population import Record
from tools.simulate import simulate

GRANTED = "skills.subsidy.SubsidyGranted.v1"


def _out(id: str, key: str = "p1", amount: int = 100) -> Out:
    return Out(GRANTED, id, key, "suqian", "2026-03-01T09:00:00+08:00", {"amount_fen": amount})


def _published(o: Out) -> dict[str, object]:
    return {"type": o.type, "id": o.id, "subject": o.key, "data": dict(o.data)}


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_ignores_input_order() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_a_traceparent_names_its_record() -> None:
    tp = traceparent(123456)
    assert len(tp) == 55 and tp.startswith("00-") and tp.endswith("-01")
    assert trace_seq(tp) == 123456
    assert trace_seq(None) is None
    assert trace_seq("garbage") is None


def test_with_traceparent_adds_the_attribute_and_leaves_non_objects_alone() -> None:
    value = orjson.dumps({"specversion": "1.0", "id": "x"})
    assert orjson.loads(with_traceparent(value, 9))["traceparent"] == traceparent(9)
    assert with_traceparent(b"not json", 9) == b"not json"
    assert with_traceparent(b"[1]", 9) == b"[1]"


def test_completeness_holds_when_every_decision_is_published_once_in_order() -> None:
    expected = [_out("a"), _out("b"), _out("c", key="p2")]
    check = completeness(expected, [_published(o) for o in expected])
    assert check.ok and check.published == check.expected == 3


def test_completeness_counts_missing_duplicated_and_unexpected_decisions() -> None:
    expected = [_out("a"), _out("b")]
    published = [_published(_out("a")), _published(_out("a")), _published(_out("z"))]
    check = completeness(expected, published)
    assert not check.ok
    assert (check.missing, check.duplicated, check.unexpected) == (1, 1, 1)


def test_completeness_notices_different_data_and_a_different_order() -> None:
    expected = [_out("a"), _out("b")]
    assert not completeness(expected, [_published(_out("a", amount=1)), _published(_out("b"))]).ok
    swapped = completeness(expected, [_published(_out("b")), _published(_out("a"))])
    assert swapped.missing == 0 and not swapped.order_ok and not swapped.ok
    assert swapped.order_samples[0][1:] == (["a", "b"], ["b", "a"])
    # A person whose records come from two lanes has no single right order: only the set counts.
    person = expected[0].key
    assert completeness(expected, [_published(_out("b")), _published(_out("a"))],
                        frozenset({person})).ok


def test_a_national_id_in_two_lanes_makes_one_person_without_an_oracle_order() -> None:
    pop = simulate(3, 5)
    assert persons_in_several_lanes(pop) == set()
    # lane 2's records, re-keyed into a fourth lane, with lane 0's national id
    first = next(r for r in pop.training if pop.lane(r.key) == 0 and b'"trainee"' in r.value)
    nid = orjson.loads(first.value)["data"]["trainee"]["national_id"]
    twin = next(r for r in pop.training if pop.lane(r.key) == 2 and b'"trainee"' in r.value)
    obj = orjson.loads(twin.value)
    obj["data"]["trainee"]["national_id"] = nid
    pop.training.append(Record("twin", orjson.dumps(obj)))
    pop.lanes["twin"] = 3
    assert persons_in_several_lanes(pop) == {person_id(normalise_national_id(nid), DEFAULT_SECRET)}


def test_the_paced_split_takes_whole_persons_from_the_end() -> None:
    pop = simulate(60, 5)
    chosen = split_lanes(pop, 10)
    assert len(chosen) == 10
    assert all(index >= 40 for index in chosen)


def test_the_profile_summary_ranks_functions_by_inclusive_share_and_counts_own_samples() -> None:
    stacks = [
        "_run_once (asyncio/base_events.py:1922);process (consumer.py:270);decode (envelope.py:61) 6",
        "_run_once (asyncio/base_events.py:1922);process (consumer.py:270);decode (envelope.py:94) 2",
        "_run_once (asyncio/base_events.py:1922);process (consumer.py:273) 2",
        "not a stack line",
    ]
    rows = summarise_profile(stacks)
    # lines of one function are one entry; the event loop's own frames are left out
    assert rows == [("process (consumer.py)", 100.0, 20.0), ("decode (envelope.py)", 80.0, 80.0)]
    assert summarise_profile([]) == []


def test_the_cpu_split_is_cores_used_per_part_over_the_interval() -> None:
    before = {"machine": 100.0, "postgresql": 10.0, "enrollment": 5.0}
    after = {"machine": 140.0, "postgresql": 22.0, "enrollment": 13.0, "load generator": 3.0}
    assert cpu_split(before, after, 20.0) == {
        "machine": 2.0, "postgresql": 0.6, "enrollment": 0.4, "load generator": 0.15}
    assert cpu_split(before, after, 0.0) == {}


def test_batch_figures_come_from_the_metrics_text_and_are_summarised_per_interval() -> None:
    text = "\n".join([
        "# HELP skills_batch_size Records per consumed batch",
        'skills_batch_size_bucket{le="1.0"} 3.0',
        "skills_batch_size_count 10.0", "skills_batch_size_sum 500.0",
        "skills_batch_processing_seconds_count 10.0", "skills_batch_processing_seconds_sum 0.5",
        'skills_gc_seconds_total{generation="0"} 1.25', 'skills_gc_seconds_total{generation="2"} 0.5',
        'skills_gc_seconds_created{generation="0"} 1.7e9',
    ])
    after = batch_counters(text)
    assert after == {"batches": 10.0, "records": 500.0, "seconds": 0.5, "gc_seconds": 1.75}
    before = {"batches": 2.0, "records": 100.0, "seconds": 0.1, "gc_seconds": 0.25}
    assert batch_summary({"s": before}, {"s": after}) == {
        "s": {"batches": 8, "mean_records": 50.0, "mean_ms": 50.0, "busy_seconds": 0.4,
              "gc_seconds": 1.5}}


def test_replicas_busy_at_once_is_their_busy_seconds_over_the_wall_clock() -> None:
    """Two replicas busy 6 s and 5 s in a 10 s interval: 11 s of batches in 10 s cannot have
    taken turns, so they overlapped (parallelism 1.1); one replica alone shows no figure."""
    zero = {"batches": 0.0, "records": 0.0, "seconds": 0.0}
    after = {"subsidy": {"batches": 20.0, "records": 2000.0, "seconds": 11.0},
             "subsidy#1": {"batches": 12.0, "records": 1200.0, "seconds": 6.0},
             "subsidy#2": {"batches": 8.0, "records": 800.0, "seconds": 5.0},
             "enrollment": {"batches": 4.0, "records": 400.0, "seconds": 2.0}}
    summary = batch_summary(dict.fromkeys(after, zero), after, 10.0)
    assert summary["subsidy"]["parallelism"] == 1.1
    assert summary["subsidy#2"]["busy_seconds"] == 5.0
    assert "parallelism" not in summary["enrollment"]


def test_the_overlap_probe_counts_instants_with_two_replicas_in_a_batch() -> None:
    class World:  # two subsidy replicas and one enrollment process
        def processes(self) -> list[Any]:
            return [SimpleNamespace(name="subsidy", port=1), SimpleNamespace(name="subsidy", port=2),
                    SimpleNamespace(name="enrollment", port=3)]

    probe = OverlapProbe(World())  # type: ignore[arg-type]  # a fake world with the used part
    assert set(probe.groups) == {"subsidy"}
    probe.started, probe.stopped = 0.0, 10.0
    for states in ([True, True], [True, False], [False, False], [True, True]):
        probe.polls["subsidy"] += 1
        probe.busy["subsidy"] += any(states)
        probe.together["subsidy"] += sum(states) >= 2
    assert probe.summary() == {"subsidy": {
        "polls": 4, "busy_polls": 3, "together_polls": 2, "together_share_of_busy": 0.667,
        "together_seconds_estimate": 5.0}}


def test_the_paced_halves_report_the_cores_of_each_part() -> None:
    lines = paced_cores_lines({
        "training": {"machine": 1.62, "postgresql": 0.41, "kafka": 0.18, "enrollment": 0.4,
                     "assessment": 0.12, "subsidy": 0.21, "load generator": 0.27},
        "assessment": {"machine": 1.1, "subsidy": 0.5},
    })
    assert [line.split()[3:5] for line in lines] == [["training", "records"], ["assessment", "records"]]
    assert lines[0].endswith("1.62 (postgresql 0.41, kafka 0.18, enrollment 0.4, assessment 0.12, "
                             "subsidy 0.21, load generator 0.27)")
    assert lines[1].endswith("1.1 (subsidy 0.5)")


class _Batch:
    """An aiokafka record batch as the paced producer uses it: full after ``size`` records."""

    def __init__(self, size: int) -> None:
        self.size, self.records, self.closed = size, list[tuple[bytes, bytes]](), False

    def append(self, *, key: bytes, value: bytes, timestamp: None, headers: Any) -> object | None:
        if len(self.records) >= self.size:
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, _Batch]] = []

    def create_batch(self) -> _Batch:
        return _Batch(3)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, partition, batch))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_the_paced_phase_sends_each_record_once_to_its_lane_in_order_with_its_number() -> None:
    pop = simulate(12, 7)
    records = pop.training[:60]
    world = SimpleNamespace(stack=SimpleNamespace(topic=lambda t: "x." + t), partitions=4)
    producer, sent_at = _Producer(), dict[int, float]()
    # 60 records at 6,000 a second: about 10 ms, two or three ticks, batches of 3 filling up.
    late = await produce_paced(producer, world, "skills.training.upstream", pop, records,  # type: ignore[arg-type]  # fakes with the used parts
                               6000.0, 101, sent_at)
    assert len(late) == len(records) and min(late) >= 0  # never sent before its time
    assert all(batch.closed for _, _, batch in producer.sent)
    assert {topic for topic, _, _ in producer.sent} == {"x.skills.training.upstream"}
    received: dict[int, list[tuple[bytes, bytes]]] = {}
    for _, partition, batch in producer.sent:
        received.setdefault(partition, []).extend(batch.records)
    expected: dict[int, list[tuple[bytes, bytes]]] = {}
    for n, record in enumerate(records):
        expected.setdefault(pop.lane(record.key) % 4, []).append(
            (record.key.encode(), with_traceparent(record.value, 101 + n)))
    assert received == expected  # every record once, on its lane's partition, in its order
    assert list(sent_at) == list(range(101, 161))
    assert list(sent_at.values()) == sorted(sent_at.values())
