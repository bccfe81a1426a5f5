"""The subsidy handler (load -> decide -> record) on the in-memory store: fast, no database.

Its facts are the enrollment service's own events (that handler on its in-memory store); the
money is worked out by hand from POLICY.md §4 (SQ-LIVING: 30 CNY per attended day for a rural
non-continuing graduate, on completion) and §3 (never twice for one enrollment and rule).
"""

from __future__ import annotations

from typing import Any

import orjson

from shared.contract import topics
from shared.contract.envelope import decode, encode_raw
from shared.runtime.consumer import Incoming
from shared.runtime.outbox import Outbox, RawRecord
from services.enrollment import handlers as enrollment
from services.enrollment.config import EnrollmentSettings
from services.enrollment.store import MemoryEnrollmentStore
from services.subsidy.app import policies_from
from services.subsidy.config import SubsidySettings
from services.subsidy.handlers import make_handler
from services.subsidy.store import MemorySubsidyStore
from tests import builders as b
from tests.harness import SECRET
from tests.uow import incoming, published

ENV = {"PERSON_ID_SECRET": SECRET, "ENVIRONMENT": "development"}
SUBSIDY = SubsidySettings(**ENV)  # type: ignore[arg-type]  # fields by name, validated by pydantic


async def enrollment_events(items: list[Incoming]) -> list[Incoming]:
    out = Outbox(source="/services/enrollment", dlq_topic="dlq")
    handler = enrollment.make_handler(EnrollmentSettings(**ENV), MemoryEnrollmentStore())  # type: ignore[arg-type]  # fields by name, validated by pydantic
    await handler(None, items, out)  # type: ignore[arg-type]  # the in-memory store takes no connection
    return [Incoming(decode(row[3], topics.ENROLLMENT_EVENTS),
                     RawRecord(topics.ENROLLMENT_EVENTS, 0, i, row[1], row[3]))
            for i, row in enumerate(out.rows)]


def again(item: Incoming) -> Incoming:
    """The same event redelivered under a new id (the inbox would not catch it)."""
    event = orjson.loads(item.record.value or b"")
    value = encode_raw(event["type"], event["data"], id=event["id"] + "-again",
                       source=event["source"], subject=event["subject"],
                       agencyid=event["agencyid"], time=event["time"])
    return Incoming(decode(value, topics.ENROLLMENT_EVENTS),
                    RawRecord(topics.ENROLLMENT_EVENTS, 0, 99, item.record.key, value))


async def run(store: MemorySubsidyStore, items: list[Incoming]) -> list[dict[str, Any]]:
    out = Outbox(source="/services/subsidy", dlq_topic="dlq")
    handler = make_handler(SUBSIDY, policies_from(SUBSIDY.policy_dir), store)
    await handler(None, items, out)  # type: ignore[arg-type]  # the in-memory store takes no connection
    return published(out)


async def test_a_living_allowance_is_granted_once_on_completion_across_batches() -> None:
    nid, ref = b.national_id(), b.ref()
    up = topics.TRAINING_UPSTREAM
    accepted, completed = await enrollment_events([
        incoming(up, enrollment.ENROLLED, b.enrolled(ref, nid), subject=ref),
        incoming(up, enrollment.ATTENDANCE, b.attendance(ref, "2026-03-02", 8), subject=ref),
        incoming(up, enrollment.ATTENDANCE, b.attendance(ref, "2026-03-03", 6), subject=ref),
        incoming(up, enrollment.FINISHED, b.finished(ref), subject=ref),
    ])
    store = MemorySubsidyStore()
    await run(store, [accepted])
    assert b.pid(nid) in store.states  # the person's state is kept between batches
    granted = [e["data"] for e in await run(store, [completed])
               if e["type"] == "skills.subsidy.SubsidyGranted.v1"]
    living = [g for g in granted if g["rule"] == "SQ-LIVING"]
    # 2 attended days x 3,000 fen, to the trainee, from the employment subsidy fund.
    assert [(g["amount_fen"], g["fund"], g["payee"]["kind"], g["stage"]) for g in living] == [
        (6000, "employment_subsidy", "person", "full")]
    assert [r[1] for r in store.decisions if r[4] == "SQ-LIVING"] == ["granted"]
    key = "suqian|employment_subsidy|2026"
    assert store.funds[key].committed_fen == sum(
        g["amount_fen"] for g in granted if g["fund"] == "employment_subsidy")
    # The same completion again (a new event id): the engine decides nothing a second time.
    assert [e for e in await run(store, [again(completed)])
            if e["type"] == "skills.subsidy.SubsidyGranted.v1"] == []
