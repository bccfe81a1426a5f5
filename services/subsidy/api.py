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
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from services.subsidy import budgets, contract, state_codec, store
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.state import (
    BudgetLedger,
    FundYear,
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


async def mappings(session: AsyncSession, query: Any) -> list[Mapping[str, Any]]:
    """The rows of a query of columns, each readable by column name."""
    return [r._mapping for r in await session.exec(query)]


async def person_state(session: AsyncSession, pid: str) -> PersonState | None:
    raw = (await session.exec(
        select(store.PersonStateRow.state).where(store.PersonStateRow.person_id == pid))).first()
    return state_codec.loads(raw) if raw is not None else None


async def read_budgets(session: AsyncSession) -> BudgetLedger:
    """Every fund year, unlocked, as ``budgets.read_all`` reads them for the engine."""
    t = store.FundYearRow
    return BudgetLedger({
        budgets.key(r.agency, r.fund, r.year): FundYear(r.committed_fen, tuple(r.thresholds_bp))
        for r in await session.exec(select(t.agency, t.fund, t.year, t.committed_fen, t.thresholds_bp))
    })


def _fen(amounts: Any) -> Any:
    """``sum(amount_fen)::bigint``: the sum as a bigint (PostgreSQL sums bigints as numeric)."""
    return sa.cast(func.sum(amounts), sa.BigInteger)


LEDGER = select(*(getattr(store.DecisionRow, c) for c in LEDGER_COLUMNS))


def routes(pool: asyncpg.Pool, policies: PolicySet,
           sessions: async_sessionmaker[AsyncSession]) -> list[BaseRoute]:
    streams = asyncio.Semaphore(MAX_CSV_STREAMS)

    async def person(request: Request) -> Response:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        async with sessions() as session:
            state = await person_state(session, pid)
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
        d, h = store.DecisionRow, store.HoldRow
        dims = (d.event_type, d.rule, d.fund, d.payee_kind, d.reason)
        async with sessions() as session:
            rows = await mappings(session, select(
                *dims, func.count().label("n"), _fen(d.amount_fen).label("fen"),
            ).where(d.agency == agency, col(d.decided_on).between(first, last)).group_by(*dims))
            ledger = await read_budgets(session)
            [open_holds] = await mappings(session, select(
                func.count().label("n"),
                sa.cast(func.coalesce(func.sum(h.amount_fen), 0), sa.BigInteger).label("fen"),
            ).where(h.agency == agency, h.status == "open", col(h.held_on).between(first, last)))
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
        return JSONResponse({
            "agency": agency, "year": year, **totals,
            "net_fen": totals["granted_fen"] - totals["reversed_fen"],
            "by_rule": by["rule"], "by_fund": by["fund"], "by_payee_kind": by["payee_kind"],
            "rejections_by_reason": rejected, "reversals_by_reason": reversed_,
            "budgets": _budgets(policies, ledger, agency, year),
            # Held for integrity review and not reviewed yet: committed, not paid (POLICY §6).
            "holds_open": open_holds["n"], "held_open_fen": open_holds["fen"],
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
        d = store.DecisionRow
        query = (LEDGER.where(d.agency == agency, col(d.decided_on).between(start, end))
                 .order_by(col(d.decided_on), col(d.seq)))
        if as_csv:
            if streams.locked():
                return JSONResponse(
                    {"error": "busy", "detail": "other ledger downloads are running; try again"},
                    status_code=429, headers={"retry-after": "5"},
                )
            return StreamingResponse(
                _csv_rows(sessions, streams, query), media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="ledger-{agency}.csv"'},
            )
        async with sessions() as session:
            rows = await mappings(session, query.limit(size + 1).offset((page - 1) * size))
        return JSONResponse({
            "agency": agency, "from": start.isoformat(), "to": end.isoformat(), "page": page,
            "page_size": size, "has_more": len(rows) > size,
            "entries": [{c: _cell(r[c]) for c in LEDGER_COLUMNS} for r in rows[:size]],
        })

    async def policy_loads(request: Request) -> Response:
        auth.require_auditor(request)  # the audit trail of every agency's policy files
        p = store.PolicyLoadRow
        async with sessions() as session:
            rows = await mappings(session, select(
                p.content_hash, p.agency, p.version, p.source, p.loaded_at,
            ).order_by(col(p.loaded_at)))
        return JSONResponse([{k: _cell(v) for k, v in r.items()} for r in rows])

    return [
        Route("/persons/{person_id}/subsidies", person),
        Route("/agencies/{agency}/summary", summary),
        Route("/agencies/{agency}/ledger", ledger),
        Route("/agencies/{agency}/ledger.csv", ledger),
        Route("/policies/loads", policy_loads),
    ]


async def _csv_rows(sessions: async_sessionmaker[AsyncSession], streams: asyncio.Semaphore,
                    query: Any) -> AsyncIterator[str]:
    """The ledger as CSV, streamed from a server-side cursor (``session.stream``, fetching
    CSV_CHUNK_ROWS at a time): memory stays one chunk whatever the agency's size (a connection
    of the query APIs' pool is held while the client reads: MAX_CSV_STREAMS at most)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEDGER_COLUMNS)
    async with streams, sessions() as session:
        await session.exec(sa.text("SET TRANSACTION READ ONLY"))
        rows = 0
        result = await session.stream(query.execution_options(yield_per=CSV_CHUNK_ROWS))
        async for r in result:
            writer.writerow([_cell(v) for v in r])
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
