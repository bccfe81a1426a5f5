"""ledger.csv is streamed (chunked, no length known up front) and lists exactly the agency's
decisions, in the JSON ledger's order."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from services.subsidy.api import LEDGER_COLUMNS

from .conftest import World, bearer

pytestmark = [pytest.mark.security, pytest.mark.integration]


async def test_the_ledger_csv_is_streamed_and_lists_every_decision_of_the_agency(world: World, population) -> None:
    agency = "suqian"
    conn = await world.services["subsidy"].db()
    try:
        decided = await conn.fetchval("SELECT count(*) FROM decision WHERE agency = $1", agency)
    finally:
        await conn.close()
    assert decided > 0
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("GET", world.url("subsidy", f"/agencies/{agency}/ledger.csv"),
                                 headers=bearer(agency)) as r:
            assert r.status_code == 200
            assert r.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.headers
            text = "".join([chunk async for chunk in r.aiter_text()])
        pages, page = [], 1
        while True:
            body = (await client.get(world.url("subsidy", f"/agencies/{agency}/ledger"),
                                     params={"page": page, "page_size": 1000},
                                     headers=bearer(agency))).json()
            pages += body["entries"]
            if not body["has_more"]:
                break
            page += 1
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == LEDGER_COLUMNS
    assert len(rows) - 1 == decided == len(pages)
    assert [r[LEDGER_COLUMNS.index("event_id")] for r in rows[1:]] == [e["event_id"] for e in pages]
