"""Every query API on the real services: no token 401, another agency's person or enrollment 404
(as an unknown one: no oracle across agencies), another agency's summary 403, auditors read all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from shared.contract.identity import person_id
from tests.harness import SECRET, ServiceProcess
from tools.population import Population

from .conftest import AGENCIES, World, bearer

pytestmark = [pytest.mark.security, pytest.mark.integration]

PROTECTED = (
    ("enrollment", "GET", "/enrollments/INST-X/2026/1"),
    ("enrollment", "GET", "/persons/p_0/record"),
    ("enrollment", "POST", "/persons/lookup"),
    ("assessment", "GET", "/persons/p_0/certificates"),
    ("subsidy", "GET", "/persons/p_0/subsidies"),
    ("subsidy", "GET", "/agencies/suqian/summary"),
    ("subsidy", "GET", "/agencies/suqian/ledger"),
    ("subsidy", "GET", "/agencies/suqian/ledger.csv"),
    ("subsidy", "GET", "/policies/loads"),
)


async def fetch_rows(service: ServiceProcess, sql: str) -> list[asyncpg.Record]:
    conn = await service.db()
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def get(world: World, service: str, path: str, who: str | None, **kw: Any) -> httpx.Response:
    headers = bearer(who) if who else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(world.url(service, path), headers=headers, **kw)


def other_than(*agencies: str) -> str:
    return next(a for a in AGENCIES if a not in agencies)


@pytest.mark.parametrize(("service", "method", "path"), PROTECTED)
async def test_every_query_route_refuses_a_request_without_a_valid_token(world, service, method, path) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for headers in ({}, {"authorization": "Bearer not-a-token"},
                        {"authorization": "Basic dGVzdDp0ZXN0"}, {"authorization": "Bearer"}):
            r = await client.request(method, world.url(service, path), headers=headers, json={})
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("service", ["enrollment", "assessment", "subsidy"])
async def test_health_readiness_and_metrics_stay_open_for_operators(world, service) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await get(world, service, path, None)).status_code == 200


async def test_an_agency_sees_only_its_own_enrollments_of_a_person_enrolled_in_two_agencies(
    world, population: Population
) -> None:
    rows = await fetch_rows(world.services["enrollment"],
                            "SELECT person_id, array_agg(DISTINCT agency) AS agencies FROM enrollment"
                            " GROUP BY person_id HAVING count(DISTINCT agency) > 1 LIMIT 1")
    pid, agencies = rows[0]["person_id"], set(rows[0]["agencies"])
    for agency in agencies:
        r = await get(world, "enrollment", f"/persons/{pid}/record", agency)
        assert r.status_code == 200
        assert {e["agency"] for e in r.json()["enrollments"]} == {agency}
        assert r.json()["rejections"] == []
    auditor = (await get(world, "enrollment", f"/persons/{pid}/record", "auditor")).json()
    assert {e["agency"] for e in auditor["enrollments"]} == agencies
    stranger = other_than(*agencies)
    foreign = await get(world, "enrollment", f"/persons/{pid}/record", stranger)
    unknown = await get(world, "enrollment", "/persons/p_nobody/record", stranger)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()  # "not yours" reads exactly as "not there"
    assert (await get(world, "enrollment", "/persons/p_nobody/record", "auditor")).status_code == 404


async def test_an_enrollment_is_readable_by_its_agency_and_auditors_only(world, population) -> None:
    row = (await fetch_rows(world.services["enrollment"], "SELECT enrollment_ref, agency FROM enrollment LIMIT 1"))[0]
    path = f"/enrollments/{row['enrollment_ref']}"
    assert (await get(world, "enrollment", path, row["agency"])).json()["agency"] == row["agency"]
    assert (await get(world, "enrollment", path, "auditor")).status_code == 200
    foreign = await get(world, "enrollment", path, other_than(row["agency"]))
    unknown = await get(world, "enrollment", "/enrollments/INST-NOWHERE/1", other_than(row["agency"]))
    assert foreign.status_code == unknown.status_code == 404 and foreign.json() == unknown.json()


async def test_a_lookup_tells_an_agency_only_whether_the_person_is_known_to_it(world, population) -> None:
    enrolled = {r["person_id"]: set(r["agencies"]) for r in await fetch_rows(
        world.services["enrollment"],
        "SELECT person_id, array_agg(DISTINCT agency) AS agencies FROM enrollment GROUP BY person_id")}
    nid = next(n for n in _national_ids(population) if _pid(n) in enrolled)
    agencies = enrolled[_pid(nid)]
    async with httpx.AsyncClient(timeout=10) as client:
        async def lookup(who: str) -> dict[str, Any]:
            r = await client.post(world.url("enrollment", "/persons/lookup"), headers=bearer(who),
                                  json={"national_id": nid})
            assert r.status_code == 200
            return r.json()
        mine = await lookup(next(iter(agencies)))
        audited = await lookup("auditor")
        theirs = await lookup(other_than(*agencies))
    assert mine["known"] and audited["known"] and not theirs["known"]
    assert mine["person_id"] == audited["person_id"] == theirs["person_id"] == _pid(nid)


async def test_certificates_are_verified_publicly_without_personal_data_and_listed_per_agency(
    world, population
) -> None:
    rows = await fetch_rows(world.services["assessment"],
                            "SELECT c.certificate_id, c.person_id, a.agency FROM certificate c"
                            " JOIN assessment a USING (assessment_ref) LIMIT 1")
    cert, pid, agency = rows[0]["certificate_id"], rows[0]["person_id"], rows[0]["agency"]
    public = await get(world, "assessment", f"/certificates/{cert}", None)
    assert public.status_code == 200
    assert "person_id" not in public.json() and pid not in public.text
    path = f"/persons/{pid}/certificates"
    owned = await get(world, "assessment", path, agency)
    assert owned.status_code == 200
    assert {c["agency"] for c in owned.json()["certificates"]} == {agency}
    assert (await get(world, "assessment", path, "auditor")).status_code == 200
    owners = {r["agency"] for r in await fetch_rows(
        world.services["assessment"],
        f"SELECT a.agency FROM certificate c JOIN assessment a USING (assessment_ref) WHERE c.person_id = '{pid}'")}
    foreign = await get(world, "assessment", path, other_than(*owners))
    unknown = await get(world, "assessment", "/persons/p_nobody/certificates", other_than(*owners))
    assert foreign.status_code == unknown.status_code == 404 and foreign.json() == unknown.json()


async def test_an_agency_sees_only_its_own_subsidy_decisions_of_a_person(world, population) -> None:
    rows = await fetch_rows(world.services["subsidy"],
                            "SELECT person_id, array_agg(DISTINCT agency) AS agencies FROM decision"
                            " GROUP BY person_id ORDER BY count(DISTINCT agency) DESC LIMIT 1")
    pid, agencies = rows[0]["person_id"], set(rows[0]["agencies"])
    path = f"/persons/{pid}/subsidies"
    for agency in agencies:
        body = (await get(world, "subsidy", path, agency)).json()
        items = body["grants"] + body["rejections"] + body["reversals"]
        assert items and {i["agency"] for i in items} == {agency}
    audited = (await get(world, "subsidy", path, "auditor")).json()
    everything = audited["grants"] + audited["rejections"] + audited["reversals"]
    assert {i["agency"] for i in everything} == agencies
    enrolled_in = {r["agency"] for r in await fetch_rows(
        world.services["enrollment"], f"SELECT agency FROM enrollment WHERE person_id = '{pid}'")}
    stranger = next((a for a in AGENCIES if a not in agencies | enrolled_in), None)
    if stranger is not None:
        foreign = await get(world, "subsidy", path, stranger)
        assert foreign.status_code == 404
        assert foreign.json()["error"] == "not_found"
        unknown = await get(world, "subsidy", "/persons/p_nobody/subsidies", stranger)
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/agencies/{a}/summary?year=2026", "/agencies/{a}/ledger",
                                  "/agencies/{a}/ledger.csv"])
async def test_an_agency_reads_its_own_summary_and_ledger_but_not_another_agencys(world, population, path) -> None:
    for agency in ("suqian", "baoshan"):
        own = await get(world, "subsidy", path.format(a=agency), agency)
        assert own.status_code == 200, own.text
        assert (await get(world, "subsidy", path.format(a=agency), "auditor")).status_code == 200
        foreign = await get(world, "subsidy", path.format(a=agency), other_than(agency))
        assert foreign.status_code == 403
        assert foreign.json()["error"] == "forbidden"
    assert (await get(world, "subsidy", path.format(a="nowhere"), "auditor")).status_code == 404
    assert (await get(world, "subsidy", path.format(a="nowhere"), "suqian")).status_code == 403


async def test_the_ledger_of_an_agency_lists_only_that_agencys_decisions(world, population) -> None:
    body = (await get(world, "subsidy", "/agencies/suqian/ledger?page_size=1000", "suqian")).json()
    pids = {e["person_id"] for e in body["entries"]}
    decided = {r["person_id"] for r in await fetch_rows(
        world.services["subsidy"], "SELECT person_id FROM decision WHERE agency = 'suqian'")}
    assert pids and pids <= decided


async def test_the_policy_load_audit_trail_is_for_auditors_only(world) -> None:
    audited = await get(world, "subsidy", "/policies/loads", "auditor")
    assert audited.status_code == 200
    assert {p["agency"] for p in audited.json()} == set(AGENCIES)
    assert all(len(p["content_hash"]) == 64 for p in audited.json())
    for agency in AGENCIES:
        assert (await get(world, "subsidy", "/policies/loads", agency)).status_code == 403


def _national_ids(pop: Population) -> Iterator[str]:
    for record in pop.training:
        try:
            yield orjson.loads(record.value)["data"]["trainee"]["national_id"]
        except (ValueError, KeyError, TypeError):
            continue


def _pid(nid: str) -> str | None:
    try:
        return person_id(nid, SECRET)
    except ValueError:
        return None
