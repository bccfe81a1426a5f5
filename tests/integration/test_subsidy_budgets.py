"""Budgets across subsidy replicas: per fund year, first come first served, never a global lock.

Two subsidy processes share one database and consumer group on their own topics and
databases. Suqian's employment_subsidy fund gets a 2026 budget of 90,000 fen (900 CNY); every
person below is a rural non-continuing graduate who completes 10 days of training, which
SQ-LIVING pays 30 CNY a day: 10 x 3,000 = 30,000 fen each (POLICY §5, suqian.json). So over the
module exactly three are granted (30,000 + 30,000 + 30,000 = 90,000 = the budget), every other one
is rejected budget_exhausted, and the third grant crosses 80 % (72,000), 90 % (81,000) and 100 %
(90,000) at once: one BudgetThresholdReached each, whichever replica made it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from tests import builders as b
from tests.harness import KAFKA, ROOT, Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

ENR = topics.ENROLLMENT_EVENTS
OUT = topics.SUBSIDY_EVENTS
BUDGET = 90_000
PER_PERSON = 10 * 3_000


def budgeted(directory: Path) -> None:
    for source in (ROOT / "services" / "subsidy" / "policies").glob("*.json"):
        policy = json.loads(source.read_text())
        if policy["agency"] == "suqian":
            policy["budgets"] = {"employment_subsidy": {"2026": BUDGET}}
        (directory / source.name).write_text(json.dumps(policy, ensure_ascii=False))


async def members(stack: Stack, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return sum(len(g[5]) for response in responses for g in response.groups if g[2] == "Stable")


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, list[ServiceProcess]]]:
    own = Stack()  # its own topics and database: two replicas of one group, other policies
    await own.create_topics()
    policies = tmp_path_factory.mktemp("budgeted")
    budgeted(policies)
    replicas = [ServiceProcess("subsidy", own, env={"SUBSIDY_POLICY_DIR": str(policies)})
                for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready()
        await wait_for(lambda: _two(own), 90, "both subsidy replicas in the group")
        yield own, replicas
    finally:
        for replica in replicas:
            replica.stop()
        await own.drop()


async def _two(stack: Stack) -> bool:
    return await members(stack, f"{stack.prefix}subsidy") == 2


async def send(producer: Producer, partition: int, kind: str, data: dict[str, Any], agency: str,
               time: str) -> None:
    value = encode_raw("skills.enrollment." + kind, data, id=f"{kind}/{data['enrollment_ref']}",
                       source="/services/enrollment", subject=data["person_id"], agencyid=agency,
                       time=time)
    await producer.producer.send_and_wait(producer.stack.topic(ENR), value=value,
                                          key=data["person_id"].encode(), partition=partition,
                                          headers=headers())


def accepted(ref: str, pid: str) -> dict[str, Any]:
    data = b.enrolled(ref, "x")
    trainee = data.pop("trainee")
    return {
        "enrollment_ref": ref, "person_id": pid, "institution_id": data["institution_id"],
        "categories": trainee["categories"], "rural": trainee["rural"],
        "hukou_agency": trainee["hukou_agency"], "insured_months": trainee["insured_months"],
        "hired_on": trainee["hired_on"], "employer": None, "course": data["course"],
        "fee": {"amount_fen": 150000, "payer": "person"}, "accepted_on": "2026-03-01",
    }


async def trainee(producer: Producer, partition: int, agency: str = "suqian") -> str:
    """One person: accepted, then completed with 10 days (80 hours) attended."""
    pid, ref = b.pid(b.national_id()), b.ref()
    enrolment = accepted(ref, pid)
    await send(producer, partition, "EnrollmentAccepted.v1", enrolment, agency,
               "2026-03-01T09:00:00+08:00")
    await send(producer, partition, "TrainingCompleted.v1", {
        "enrollment_ref": ref, "person_id": pid, "course": enrolment["course"],
        "hours_attended": 80, "days_attended": 10, "attendance_rate": 1.0,
        "completed_on": "2026-03-20"}, agency, "2026-03-20T18:00:00+08:00")
    return pid


async def prejob_advance(producer: Producer, partition: int) -> str:
    """EXAMPLES.md 5: baoshan's BS-PREJOB advance, decided at acceptance, from a fund without a
    budget."""
    pid, ref = b.pid(b.national_id()), b.ref()
    base = accepted(ref, pid)
    enrolment = {**base, "categories": ["poor_labor"], "rural": False, "institution_id": "INST-9",
                 "course": {**base["course"], "training_type": "pre_job", "level": None,
                            "project_based": True, "start_date": "2026-04-01",
                            "end_date": "2026-04-20"},
                 "fee": {"amount_fen": 90000, "payer": "institution"}, "accepted_on": "2026-04-01"}
    await send(producer, partition, "EnrollmentAccepted.v1", enrolment, "baoshan",
               "2026-04-01T09:00:00+08:00")
    return pid


async def test_a_locked_fund_year_holds_only_the_batches_that_spend_from_it(world) -> None:
    """A suqian fund year locked from outside stops suqian's SQ-LIVING decisions, not a person of
    another agency whose rules have no budget, decided meanwhile by the other replica (the
    co-partitioning assignor deals partitions 0 and 1 to different members)."""
    stack, (first, _) = world
    conn = await first.db()
    async with Producer(stack) as producer, Collector(stack, (OUT,)) as collector:
        try:
            await conn.execute("INSERT INTO fund_year (agency, fund, year) VALUES "
                               "('suqian', 'employment_subsidy', 2026) ON CONFLICT DO NOTHING")
            async with conn.transaction():
                await conn.execute("SELECT * FROM fund_year WHERE agency = 'suqian' FOR UPDATE")
                held = await trainee(producer, 0)
                free = await prejob_advance(producer, 1)
                await collector.wait_events(OUT, "SubsidyGranted.v1",
                                            where=lambda e: e["data"].get("person_id") == free)
                assert collector.events(OUT, where=lambda e: e["data"].get("person_id") == held) == []
            [grant] = await collector.wait_events(OUT, "SubsidyGranted.v1",
                                                  where=lambda e: e["data"].get("person_id") == held)
            assert (grant["data"]["rule"], grant["data"]["amount_fen"]) == ("SQ-LIVING", PER_PERSON)
        finally:
            await conn.close()


async def test_two_replicas_never_commit_above_the_budget_and_report_each_threshold_once(world) -> None:
    stack, (first, _) = world
    async with Producer(stack) as producer, Collector(stack, (OUT,)) as collector:
        before = await first.db()
        try:
            spent = await before.fetchval(
                "SELECT coalesce(sum(committed_fen), 0) FROM fund_year WHERE agency = 'suqian' "
                "AND fund = 'employment_subsidy' AND year = 2026")
        finally:
            await before.close()
        assert spent == PER_PERSON  # the previous test's one grant
        persons = [await trainee(producer, n % 4) for n in range(12)]
        mine = set(persons)

        def decided(e: dict[str, Any]) -> bool:
            return e["data"].get("person_id") in mine and e["data"].get("rule") == "SQ-LIVING"

        await wait_for(lambda: len(collector.events(OUT, where=decided)) >= 12, 120,
                       "a SQ-LIVING decision for each of the 12 persons")
        grants = collector.events(OUT, "SubsidyGranted.v1", where=decided)
        rejected = collector.events(OUT, "SubsidyRejected.v1", where=decided)
        # 30,000 already committed: two more fit (90,000), the other ten do not
        assert len(grants) == 2 and all(g["data"]["amount_fen"] == PER_PERSON for g in grants)
        assert len(rejected) == 10
        assert {r["data"]["reason"] for r in rejected} == {"budget_exhausted"}
        await wait_for(lambda: len(collector.events(OUT, "BudgetThresholdReached.v1")) >= 3, 30,
                       "three threshold notices")
        notices = collector.events(OUT, "BudgetThresholdReached.v1")
        assert sorted(n["data"]["threshold_bp"] for n in notices) == [8000, 9000, 10000]
        assert len({n["id"] for n in notices}) == 3
        summary = first.get("/agencies/suqian/summary?year=2026")
        assert summary["budgets"]["employment_subsidy"] == {
            "budget_fen": BUDGET, "committed_fen": BUDGET, "remaining_fen": 0}


async def test_a_batch_whose_fund_year_changed_before_it_locked_it_decides_again(world) -> None:
    """decide_with_budgets against PostgreSQL: another transaction holds the row and spends
    from it after this batch's unlocked read; the batch's first decisions (made on 0 committed)
    are dropped and it decides again on what the row holds once locked (60 + 30 = 90)."""
    from services.subsidy import budgets
    from services.subsidy.engine.state import BudgetLedger

    _stack, (first, _) = world
    other, conn = await first.db(), await first.db()
    key = ("test-agency", "fund-x", 2031)
    seen: list[int] = []

    def run(ledger: BudgetLedger) -> list[int]:
        seen.append(ledger.committed_fen(*key))
        ledger.commit(*key, 30, 100)
        return list(seen)

    try:
        await other.execute("INSERT INTO fund_year (agency, fund, year) VALUES ($1, $2, $3)", *key)
        holder = other.transaction()
        await holder.start()
        await other.execute("SELECT * FROM fund_year WHERE agency = $1 FOR UPDATE", key[0])
        batch = conn.transaction()
        await batch.start()
        deciding = asyncio.ensure_future(
            budgets.decide_with_budgets(conn, frozenset({budgets.key(*key)}), run))
        await wait_for(lambda: len(seen) == 1, 10, "the first, unlocked decision")
        waiting = ("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1")
        await wait_for(lambda: other.fetchval(waiting, conn.get_server_pid()), 10,
                       "the batch waiting for the row's lock")
        assert not deciding.done(), "the batch must wait for the row"
        await other.execute("UPDATE fund_year SET committed_fen = 60 WHERE agency = $1", key[0])
        await holder.commit()
        result, ledger, start = await deciding
        stored = await budgets.store(conn, ledger, start)
        await batch.commit()
        final = await other.fetchval("SELECT committed_fen FROM fund_year WHERE agency = $1", key[0])
    finally:
        await other.close()
        await conn.close()
    assert seen == [0, 60] and result == [0, 60]
    assert stored.committed_fen(*key) == final == 90
