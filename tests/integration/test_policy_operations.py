"""Policy operations on a real subsidy service: two versions of one agency's policy decide by
basis date, a what-if publishes and writes nothing, and a correction pays its top-ups once."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.contract import topics
from tests import builders as b
from tests.harness import ROOT, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

ENR = topics.ENROLLMENT_EVENTS
OUT = topics.SUBSIDY_EVENTS
COLLECT = (OUT,)  # topics the shared `collector` fixture reads (tests/conftest.py)
LIVE = ROOT / "services" / "subsidy" / "policies"
JUNE = ("--from", "2026-06-01", "--to", "2026-06-30")


def _suqian(**over: Any) -> dict[str, Any]:
    raw = json.loads((LIVE / "suqian.json").read_text())
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The defaults, with Suqian split into a 2020 and a 2026 version."""
    directory = tmp_path_factory.mktemp("policies")
    for name in ("baoshan", "beijing", "city-a"):
        (directory / f"{name}.json").write_text((LIVE / f"{name}.json").read_text())
    (directory / "suqian-2020.json").write_text(json.dumps(_suqian(valid_to="2025-12-31")))
    (directory / "suqian-2026.json").write_text(json.dumps(
        _suqian(version="2026-01", valid_from="2026-01-01")))
    corrected = _suqian(version="2026-01-corrected", valid_from="2026-01-01")
    next(r for r in corrected["rules"] if r["id"] == "SQ-LIVING")["amount"] = 4000
    (tmp_path_factory.getbasetemp() / "suqian-corrected.json").write_text(json.dumps(corrected))
    return directory


@pytest.fixture(scope="module")
async def subsidy(stack: Stack, policy_dir: Path) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("subsidy", stack, env={"SUBSIDY_POLICY_DIR": str(policy_dir)})
    service.start()
    await service.wait_ready()
    yield service
    service.stop()




async def _living(producer: Producer, pid: str, completed_on: str, days: int) -> None:
    """A low-income Suqian trainee who completes on `completed_on` after `days` days."""
    ref = b.ref()
    start = completed_on[:8] + "01"
    course = {"course_id": "C-1", "occupation_code": f"6-{uuid.uuid4().hex[:6]}",
              "occupation_name": "电工", "level": "intermediate", "training_type": "skill_upgrade",
              "planned_hours": 80, "start_date": start, "end_date": completed_on,
              "project_based": False, "program_years": None}
    accepted = {"enrollment_ref": ref, "person_id": pid, "institution_id": "INST-T",
                "categories": ["low_income"], "rural": False, "hukou_agency": "suqian",
                "insured_months": 0, "hired_on": None, "employer": None, "course": course,
                "fee": {"amount_fen": 150000, "payer": "person"}, "accepted_on": start}
    completed = {"enrollment_ref": ref, "person_id": pid, "course": course,
                 "hours_attended": days * 8, "days_attended": days, "attendance_rate": 1.0,
                 "completed_on": completed_on}
    for kind, data, day in (("EnrollmentAccepted.v1", accepted, start),
                            ("TrainingCompleted.v1", completed, completed_on)):
        await producer.event(ENR, "skills.enrollment." + kind, data, subject=pid,
                             agency="suqian", source="/services/enrollment",
                             time=f"{day}T09:00:00+08:00")


async def _cli(stack: Stack, policy_dir: Path, module: str, *args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.subsidy.{module}", "--agency", "suqian", *args,
        "--policy-dir", str(policy_dir), "--database-url", stack.db_url("subsidy"), "--json",
        cwd=ROOT, env={**ServiceProcess("subsidy", stack).environment()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return orjson.loads(out)


def _of(pid: str):  # noqa: ANN201
    return lambda e: e["data"]["person_id"] == pid


async def test_two_versions_of_one_agency_decide_by_the_completion_date(
        subsidy, producer, collector) -> None:
    old, new = b.pid(b.national_id()), b.pid(b.national_id())
    await _living(producer, old, "2025-12-20", 4)
    await _living(producer, new, "2026-03-20", 4)
    [before] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=_of(old))
    [after] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=_of(new))
    assert before["data"]["policy"]["version"] == "2020-01"
    assert after["data"]["policy"]["version"] == "2026-01"
    loads = subsidy.get("/policies/loads")
    assert {("suqian", "2020-01"), ("suqian", "2026-01")} <= {(r["agency"], r["version"])
                                                            for r in loads}


async def _outbox_empty(conn: Any) -> bool:
    return await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_raised_amount_is_reported_then_topped_up_exactly_once(
        stack, subsidy, producer, collector, policy_dir) -> None:
    corrected = str(policy_dir.parent / "suqian-corrected.json")
    ten, five, july = b.pid(b.national_id()), b.pid(b.national_id()), b.pid(b.national_id())
    await _living(producer, ten, "2026-06-10", 10)
    await _living(producer, five, "2026-06-12", 5)
    await _living(producer, july, "2026-07-02", 3)  # after the period
    paid = {}
    # All three decided before the decision count is taken (the July one is outside the
    # period, but its decision still lands in the table).
    for pid in (ten, five, july):
        [grant] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=_of(pid))
        paid[pid] = grant["data"]
    assert [paid[ten]["amount_fen"], paid[five]["amount_fen"]] == [30000, 15000]
    conn = await subsidy.db()
    try:
        decisions = await conn.fetchval("SELECT count(*) FROM decision")
        # The relay deletes rows after the broker acknowledged them, so a collected event's
        # row may still be there for a moment: start from a drained outbox.
        await wait_for(lambda: _outbox_empty(conn), 30, "the outbox drained")

        report = await _cli(stack, policy_dir, "whatif", *JUNE, "--draft", corrected)
        assert report["by_rule"] == [{
            "rule": "SQ-LIVING", "fund": "employment_subsidy", "changed": 2,
            "newly_granted": 0, "newly_rejected": 0, "grants": 2, "persons": 2,
            "paid_fen": 45000, "entitled_fen": 60000, "delta_fen": 15000}]
        assert report["baseline_mismatches"] == 0 and report["persons_without_fact_log"] == 0
        assert {s["person_id"] for s in report["samples"]} == {ten, five}
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM decision") == decisions

        dry = await _cli(stack, policy_dir, "corrections", *JUNE, "--policy", corrected)
        assert (dry["applied"], dry["topups"], dry["topup_fen"]) == (False, 2, 15000)
        first = await _cli(stack, policy_dir, "corrections", *JUNE, "--policy", corrected,
                           "--apply")
        assert (first["topups"], first["topup_fen"], first["reversals"]) == (2, 15000, 0)
        second = await _cli(stack, policy_dir, "corrections", *JUNE, "--policy", corrected,
                            "--apply")
        assert (second["topups"], second["new_grants"], second["reversals"]) == (0, 0, 0)
        assert await conn.fetchval("SELECT count(*) FROM policy_correction") == 2
        ledger = await conn.fetch("SELECT person_id, amount_fen, grant_id FROM decision "
                                  "WHERE event_id IN (SELECT event_id FROM policy_correction)")
        assert sorted((r["person_id"], r["amount_fen"]) for r in ledger) == sorted(
            [(ten, 10000), (five, 5000)])
    finally:
        await conn.close()

    # A later fact of each person lands behind any correction event on the person's partition.
    for pid in (ten, five):
        await _living(producer, pid, "2026-08-20", 1)
        await collector.wait_events(OUT, "SubsidyGranted.v1", 3,
                                    where=lambda e, pid=pid: _of(pid)(e))
    for pid, extra in ((ten, 10000), (five, 5000)):
        topups = collector.events(
            OUT, "SubsidyGranted.v1",
            lambda e, pid=pid: _of(pid)(e) and "corrects_grant_id" in e["data"])
        assert [(t["data"]["amount_fen"], t["data"]["corrects_grant_id"], t["data"]["rule"])
                for t in topups] == [(extra, paid[pid]["grant_id"], "SQ-LIVING")]
        topup = topups[0]
        assert topup["id"] == topup["data"]["grant_id"] != paid[pid]["grant_id"]
        assert topup["data"]["correction"]["policy"]["version"] == "2026-01-corrected"
        assert topup["data"]["payee"] == {"kind": "person", "id": pid}
    record = subsidy.get(f"/persons/{ten}/subsidies")
    june = next(g for g in record["grants"] if g["grant_id"] == paid[ten]["grant_id"])
    assert june["amount_fen"] == 40000 and june["policy"]["version"] == "2026-01-corrected"
