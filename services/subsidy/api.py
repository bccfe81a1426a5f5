"""Query API of the subsidy service: a person's decisions, an agency's summary and ledger (台账).

Every route needs a bearer token (shared.runtime.auth): an agency token reads its own agency's
decisions, summary and ledger; the policy-load audit trail is for auditors only.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from services.subsidy import budgets, contract, state_codec
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.state import (
    BudgetLedger,
    PersonState,
    grants,
    live_grants,
    pending_items,
    rejections,
    reversals,
)

LEDGER_COLUMNS = (
    "decided_on", "event_type", "event_id", "person_id", "rule", "stage", "reason",
    "amount_fen", "fund", "payee_kind", "grant_id",
)
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000  # keeps OFFSET well inside bigint whatever the query string says
CSV_CHUNK_ROWS = 1000  # ledger.csv rows read from a cursor and sent per chunk
# ledger.csv downloads at a time: each holds a connection of the pool the consumer also uses.
MAX_CSV_STREAMS = 2
# What /openapi.json says beyond the routes' paths.
OPENAPI: dict[str, dict[str, Any]] = {
    "/agencies/{agency}/summary": {"query": {"year": {"type": "integer"}}},
    "/agencies/{agency}/ledger": {"query": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "page": {"type": "integer"}, "page_size": {"type": "integer"}}},
    "/agencies/{agency}/ledger.csv": {"query": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"}}},
}


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _date(value: str | None, default: dt.date) -> dt.date:
    return dt.date.fromisoformat(value) if value else default


def routes(pool: asyncpg.Pool, policies: PolicySet) -> list[BaseRoute]:
    streams = asyncio.Semaphore(MAX_CSV_STREAMS)

    async def person(request: Request) -> Response:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        raw = await pool.fetchval("SELECT state FROM person_state WHERE person_id = $1", pid)
        state = state_codec.loads(raw) if raw is not None else None
        if state is None or not _has_record_in(state, who):
            # Unknown, or nothing of this agency: the same answer (no oracle across agencies).
            return _error(404, "not_found", f"no subsidy decisions for {pid[:60]}")
        live = {g.grant_id for g in live_grants(state)}
        agency_of = {ref: e.accepted.agency for ref, e in state.enrollments.items()}
        return JSONResponse({
            "person_id": pid,
            # A held grant (POLICY §6) is live (it counts) but unpaid until released: "hold".
            "grants": [{**contract.data(g.event), "live": g.grant_id in live,
                        **({"hold": {**dataclasses.asdict(g.hold), "status": g.hold.status.value,
                                     "held_on": g.hold.held_on.isoformat()}} if g.hold else {})}
                       for g in state.grant_log if who.sees(g.event.agency)],
            "flags": {ref: [{"check": f.check, "flagged_on": f.flagged_on.isoformat(),
                             "detail": f.detail} for f in found]
                      for ref, found in state.flags.items() if who.sees(agency_of.get(ref))},
            "rejections": [contract.data(r) for r in rejections(state) if who.sees(r.agency)],
            "reversals": [contract.data(r) for r in reversals(state) if who.sees(r.agency)],
            # A pending item is an agency's when it waits on one of that agency's enrollments;
            # unlinked certificates and early revocations have no agency yet: auditors only.
            "pending": [
                {**dataclasses.asdict(p), "kind": p.kind.value, "since": p.since.isoformat()}
                for p in pending_items(state)
                if who.auditor or who.sees(agency_of.get(p.enrollment_ref or ""))
            ],
        })

    async def summary(request: Request) -> Response:
        agency = request.path_params["agency"]
        auth.require_agency(request, agency)
        if agency not in policies.agencies():
            return _error(404, "unknown_agency", f"no policy for agency {agency[:60]!r}")
        try:
            year = int(request.query_params.get("year", dt.date.today().year))
            first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
        except ValueError:
            return _error(422, "invalid_year", "year must be a number such as 2026")
        rows = await pool.fetch(
            "SELECT event_type, rule, fund, payee_kind, reason, count(*) AS n,"
            " sum(amount_fen)::bigint AS fen FROM decision"
            " WHERE agency = $1 AND decided_on BETWEEN $2 AND $3"
            " GROUP BY event_type, rule, fund, payee_kind, reason",
            agency, first, last,
        )
        by: dict[str, dict[str, dict[str, int]]] = {"rule": {}, "fund": {}, "payee_kind": {}}
        rejected: dict[str, int] = {}
        reversed_: dict[str, dict[str, int]] = {}
        totals = {"grants": 0, "granted_fen": 0, "reversals": 0, "reversed_fen": 0, "rejections": 0,
                  "holds": 0}
        for r in rows:
            if r["event_type"] == "granted":
                totals["grants"] += r["n"]
                totals["granted_fen"] += r["fen"]
                for dim in by:
                    entry = by[dim].setdefault(r[dim] or "-", {"count": 0, "amount_fen": 0})
                    entry["count"] += r["n"]
                    entry["amount_fen"] += r["fen"]
            elif r["event_type"] == "rejected":
                totals["rejections"] += r["n"]
                rejected[r["reason"]] = rejected.get(r["reason"], 0) + r["n"]
            elif r["event_type"] == "held":  # SubsidyHeld (POLICY §6): nothing paid yet
                totals["holds"] += r["n"]
            else:
                totals["reversals"] += r["n"]
                totals["reversed_fen"] -= r["fen"]
                entry = reversed_.setdefault(r["reason"], {"count": 0, "amount_fen": 0})
                entry["count"] += r["n"]
                entry["amount_fen"] -= r["fen"]
        ledger = await budgets.read_all(pool)
        open_holds = await pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount_fen), 0)::bigint AS fen FROM hold"
            " WHERE agency = $1 AND status = 'open' AND held_on BETWEEN $2 AND $3",
            agency, first, last)
        return JSONResponse({
            "agency": agency, "year": year, **totals,
            "net_fen": totals["granted_fen"] - totals["reversed_fen"],
            "by_rule": by["rule"], "by_fund": by["fund"], "by_payee_kind": by["payee_kind"],
            "rejections_by_reason": rejected, "reversals_by_reason": reversed_,
            "budgets": _budgets(policies, ledger, agency, year),
            # Held for integrity review and not reviewed yet: committed, not paid (POLICY §6).
            "holds_open": open_holds["n"], "held_open_fen": open_holds["fen"],  # type: ignore[index]  # one row
        })

    async def ledger(request: Request) -> Response:
        agency = request.path_params["agency"]
        auth.require_agency(request, agency)
        if agency not in policies.agencies():
            return _error(404, "unknown_agency", f"no policy for agency {agency[:60]!r}")
        q = request.query_params
        try:
            start = _date(q.get("from"), dt.date(1900, 1, 1))
            end = _date(q.get("to"), dt.date(9999, 12, 31))
            page = min(MAX_PAGE, max(1, int(q.get("page", 1))))
            size = min(MAX_PAGE_SIZE, max(1, int(q.get("page_size", 100))))
        except ValueError:
            return _error(422, "invalid_query", "from/to are YYYY-MM-DD, page and page_size numbers")
        as_csv = request.url.path.endswith(".csv")
        sql = (
            "SELECT " + ", ".join(LEDGER_COLUMNS) + " FROM decision"
            " WHERE agency = $1 AND decided_on BETWEEN $2 AND $3 ORDER BY decided_on, seq"
        )
        if as_csv:
            if streams.locked():
                return JSONResponse(
                    {"error": "busy", "detail": "other ledger downloads are running; try again"},
                    status_code=429, headers={"retry-after": "5"},
                )
            return StreamingResponse(
                _csv_rows(pool, streams, sql, agency, start, end), media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="ledger-{agency}.csv"'},
            )
        rows = await pool.fetch(sql + " LIMIT $4 OFFSET $5", agency, start, end, size + 1, (page - 1) * size)
        return JSONResponse({
            "agency": agency, "from": start.isoformat(), "to": end.isoformat(), "page": page,
            "page_size": size, "has_more": len(rows) > size,
            "entries": [{c: _cell(r[c]) for c in LEDGER_COLUMNS} for r in rows[:size]],
        })

    async def policy_loads(request: Request) -> Response:
        auth.require_auditor(request)  # the audit trail of every agency's policy files
        rows = await pool.fetch(
            "SELECT content_hash, agency, version, source, loaded_at FROM policy_load ORDER BY loaded_at"
        )
        return JSONResponse([{k: _cell(v) for k, v in dict(r).items()} for r in rows])

    return [
        Route("/persons/{person_id}/subsidies", person),
        Route("/agencies/{agency}/summary", summary),
        Route("/agencies/{agency}/ledger", ledger),
        Route("/agencies/{agency}/ledger.csv", ledger),
        Route("/policies/loads", policy_loads),
    ]


async def _csv_rows(pool: asyncpg.Pool, streams: asyncio.Semaphore, sql: str, agency: str,
                    start: dt.date, end: dt.date) -> AsyncIterator[str]:
    """The ledger as CSV, streamed from a server-side cursor: memory stays one chunk whatever
    the agency's size (a connection is held while the client reads: MAX_CSV_STREAMS at most)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEDGER_COLUMNS)
    async with streams, pool.acquire() as conn, conn.transaction(readonly=True):
        rows = 0
        async for r in conn.cursor(sql, agency, start, end, prefetch=CSV_CHUNK_ROWS):
            writer.writerow([_cell(r[c]) for c in LEDGER_COLUMNS])
            rows += 1
            if rows % CSV_CHUNK_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def _has_record_in(state: PersonState, who: auth.Principal) -> bool:
    """Whether ``who`` may see this person at all: an enrollment or a decision of its agency."""
    if who.auditor:
        return True
    return (
        any(who.sees(e.accepted.agency) for e in state.enrollments.values())
        or any(who.sees(g.agency) for g in grants(state))
        or any(who.sees(r.agency) for r in rejections(state))
        or any(who.sees(r.agency) for r in reversals(state))
    )


def _cell(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _budgets(policies: PolicySet, ledger: BudgetLedger, agency: str, year: int) -> dict[str, dict[str, int | None]]:
    policy = policies.for_date(agency, dt.date(year, 12, 31))
    funds = set(policy.budgets) if policy is not None else set()
    funds |= {k.split("|")[1] for k in ledger.funds if k.startswith(f"{agency}|") and k.endswith(f"|{year}")}
    result = {}
    for fund in sorted(funds):
        budget = policy.budget_fen(fund, year) if policy is not None else None
        committed = ledger.committed_fen(agency, fund, year)
        result[fund] = {
            "budget_fen": budget, "committed_fen": committed,
            "remaining_fen": None if budget is None else budget - committed,
        }
    return result
