"""Hostile values the database would refuse never stall a partition (issue #16, item 4).

Each hostile record is followed, on the same partition, by a valid one: before the decoder
refused these values (and before a permanent database error was isolated by splitting the
batch), the first one rewound its batch forever and every later record of the partition waited
behind it. Here each hostile record must be on the service's DLQ, untouched, with its code and
original position, each valid record must be processed, and /readyz must answer 200 throughout.
"""

from __future__ import annotations

import asyncio
import random
import string
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from tests import builders as b
from tests.harness import Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

T = "skills.training."
UP = topics.TRAINING_UPSTREAM
EVENTS = topics.ENROLLMENT_EVENTS
COLLECT = (EVENTS, topics.dlq("enrollment"), topics.dlq("subsidy"))
BEYOND_BIGINT = 2**63  # one more than PostgreSQL's bigint holds
BEYOND_INT = 2**31  # one more than PostgreSQL's int holds (enrollment.planned_hours)


@dataclass
class Sent:
    key: bytes
    value: bytes
    offset: int
    code: str | None  # the dead-letter code expected; None for a valid record


def _junk(n: int, seed: int) -> str:
    rng = random.Random(seed)  # not compressible below PostgreSQL's index row limit
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def _envelope(type: str, data: dict[str, Any], *, subject: str, id: str,
              source: str = "/institutions/INST-T") -> bytes:
    return encode_raw(type, data, id=id, source=source, subject=subject, agencyid="suqian",
                      time="2026-03-01T09:00:00+08:00")


def hostile_upstream() -> list[tuple[str, bytes | None, dict[str, Any], str]]:
    """(what, Kafka key or None for the subject, envelope overrides and data changes, code)."""
    return [
        ("NUL in id", None, {"id": "poison\x00id"}, "control_character"),
        ("NUL in source", None, {"source": "/institutions/INST\x00T"}, "control_character"),
        ("NUL in a string field", None, {"course": {"occupation_name": "电\x00工"}},
         "control_character"),
        ("escape sequence in id", None, {"id": "poison\x1b[2J"}, "control_character"),
        ("an id of 5 KB", None, {"id": _junk(5000, 1)}, "too_long"),
        ("a source of 3 KB", None, {"source": "/institutions/" + _junk(3000, 2)}, "too_long"),
        ("a subject of 2 KB", None, {"subject": _junk(2000, 3)}, "too_long"),
        ("an integer beyond bigint", None, {"fee": {"amount_fen": BEYOND_BIGINT, "payer": "person"}},
         "integer_out_of_range"),
        ("a Kafka key with 0x00", b"INST-T/2026/\x00poison", {}, "invalid_key"),
        ("a Kafka key of 2 KB", _junk(2000, 4).encode(), {}, "invalid_key"),
        # Passes every decode check; PostgreSQL's int column refuses it: the batch is split
        # until this record is alone, and that record is dead-lettered.
        ("planned hours beyond int", None, {"course": {"planned_hours": BEYOND_INT}},
         "database_refused"),
    ]


def _upstream_record(n: int, key: bytes | None, changes: dict[str, Any]) -> tuple[bytes, bytes]:
    ref = b.ref()
    changes = dict(changes)
    attributes = {a: changes.pop(a) for a in ("id", "source", "subject") if a in changes}
    data = b.enrolled(ref, b.national_id(), **changes)
    value = _envelope(T + "TraineeEnrolled.v1", data, subject=attributes.get("subject", ref),
                      id=attributes.get("id", f"poison-{n}"),
                      source=attributes.get("source", "/institutions/INST-T"))
    return key if key is not None else ref.encode(), value


def _accepted(pid: str, ref: str, **over: Any) -> dict[str, Any]:
    data = b.enrolled(ref, "x")
    accepted = {
        "enrollment_ref": ref, "person_id": pid, "institution_id": "INST-T",
        "categories": ["rural_migrant"], "rural": True, "hukou_agency": "suqian",
        "insured_months": 14, "hired_on": "2026-01-10", "employer": None,
        "course": data["course"], "fee": {"amount_fen": 150000, "payer": "person"},
        "accepted_on": "2026-03-01",
    }
    accepted.update(over)
    return accepted


@pytest.fixture(scope="module")
async def services(stack: Stack) -> AsyncIterator[dict[str, ServiceProcess]]:
    started = {name: ServiceProcess(name, stack).start() for name in ("enrollment", "subsidy")}
    try:
        for service in started.values():
            await service.wait_ready()
        yield started
    finally:
        for service in started.values():
            service.stop()


async def _send(producer: Producer, topic: str, key: bytes, value: bytes) -> int:
    meta = await producer.producer.send_and_wait(
        producer.stack.topic(topic), value=value, key=key, partition=0, headers=headers())
    return int(meta.offset)


def _status(service: ServiceProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def _watch(services: dict[str, ServiceProcess], seen: list[tuple[str, str, int]],
                 done: asyncio.Event) -> None:
    while not done.is_set():
        for name, service in services.items():
            for path in ("/readyz", "/healthz"):
                status = await asyncio.to_thread(_status, service, path)
                if status != 200:
                    seen.append((name, path, status))
        await asyncio.sleep(0.2)


def _assert_dead_lettered(collector: Collector, dlq: str, topic: str, sent: list[Sent]) -> None:
    found = {(r.headers["original-topic"], r.headers["original-partition"],
              r.headers["original-offset"]): r for r in collector.dead_letters(dlq)}
    for record in sent:
        if record.code is None:
            continue
        letter = found.get((topic, "0", str(record.offset)))
        assert letter is not None, f"no dead letter for offset {record.offset} ({record.code})"
        assert letter.headers["error-code"] == record.code, letter.headers
        assert letter.value == record.value  # untouched
        assert (letter.key or "").encode() == record.key


async def test_each_hostile_value_is_dead_lettered_with_its_code_and_the_valid_record_after_it_is_processed(
    services: dict[str, ServiceProcess], producer: Producer, collector: Collector, stack: Stack,
) -> None:
    done = asyncio.Event()
    unhealthy: list[tuple[str, str, int]] = []
    watcher = asyncio.create_task(_watch(services, unhealthy, done))
    try:
        upstream: list[Sent] = []
        valid_refs: list[str] = []
        for n, (_, key, changes, code) in enumerate(hostile_upstream()):
            key_bytes, value = _upstream_record(n, key, changes)
            upstream.append(Sent(key_bytes, value, await _send(producer, UP, key_bytes, value), code))
            ref = b.ref()
            valid = _envelope(T + "TraineeEnrolled.v1", b.enrolled(ref, b.national_id()),
                              subject=ref, id=f"valid-{n}")
            upstream.append(Sent(ref.encode(), valid, await _send(producer, UP, ref.encode(), valid), None))
            valid_refs.append(ref)

        # The internal topic: what a misbehaving producer could write there reaches the subsidy.
        internal: list[Sent] = []
        valid_pids: list[str] = []
        hostile_internal: list[tuple[dict[str, Any], str]] = [
            ({"hukou_agency": "su\x00qian"}, "control_character"),
            ({"fee": {"amount_fen": BEYOND_BIGINT + 5, "payer": "person"}}, "integer_out_of_range"),
        ]
        for n, (over, code) in enumerate(hostile_internal):
            pid = b.pid(b.national_id())
            value = _envelope("skills.enrollment.EnrollmentAccepted.v1", _accepted(pid, b.ref(), **over),
                              subject=pid, id=f"bad-accepted-{n}", source="/services/enrollment")
            internal.append(Sent(pid.encode(), value, await _send(producer, EVENTS, pid.encode(), value), code))
            good = b.pid(b.national_id())
            value = _envelope("skills.enrollment.EnrollmentAccepted.v1", _accepted(good, b.ref()),
                              subject=good, id=f"good-accepted-{n}", source="/services/enrollment")
            internal.append(Sent(good.encode(), value, await _send(producer, EVENTS, good.encode(), value), None))
            valid_pids.append(good)

        await collector.wait_events(
            EVENTS, "EnrollmentAccepted.v1", count=len(valid_refs),
            where=lambda e: e["data"]["enrollment_ref"] in valid_refs, timeout=90)
        conn = await services["subsidy"].db()
        try:
            await wait_for(lambda: conn.fetchval(
                "SELECT count(*) = $2 FROM person_state WHERE person_id = ANY($1::text[])",
                valid_pids, len(valid_pids)), 90, "the valid internal records in the subsidy")
        finally:
            await conn.close()
        expected = {
            topics.dlq("enrollment"): sum(s.code is not None for s in upstream),
            topics.dlq("subsidy"): sum(s.code is not None for s in internal),
        }
        await wait_for(lambda: all(len(collector.dead_letters(t)) >= n for t, n in expected.items()),
                       60, "the dead letters")
    finally:
        done.set()
        await watcher
    _assert_dead_lettered(collector, topics.dlq("enrollment"), stack.topic(UP), upstream)
    _assert_dead_lettered(collector, topics.dlq("subsidy"), stack.topic(EVENTS), internal)
    assert not unhealthy, f"not ready or not healthy while poison was handled: {unhealthy[:5]}"
