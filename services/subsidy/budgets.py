"""Fund budgets in PostgreSQL: one ``fund_year`` row per (agency, fund, year), no global lock.

The engine reads and updates a `BudgetLedger` in memory and stays pure; this module decides
which rows a batch must hold and writes the batch's changes back.

- A fund year with a budget in some policy version ("budgeted") is read by the engine's
  ``fits`` and ``commit`` (first come, first served; thresholds reported once). A batch that
  touches one holds its row (``FOR UPDATE``) from before its decisions are final until it
  commits, and every batch takes these row locks in one statement in key order.
- Every other fund year only accumulates (committed money without a budget, and releases):
  its change is added in one upsert at the end of the batch, sorted by key, never read first.

A batch cannot know before deciding which fund years its decisions will read, so
`decide_with_budgets` decides against an unlocked snapshot, locks the budgeted fund years the
decisions read, and keeps the decisions when the locked rows hold what the snapshot said;
otherwise it decides again against the locked rows (releasing and re-taking the row locks in key
order, inside a savepoint, when the new decisions read a fund year not yet held).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.state import BudgetLedger, FundYear

T = TypeVar("T")

COLUMNS = "agency, fund, year, committed_fen, thresholds_bp"


def key(agency: str, fund: str, year: int) -> str:
    return f"{agency}|{fund}|{year}"


def _split(k: str) -> tuple[str, str, int]:
    agency, fund, year = k.rsplit("|", 2)
    return agency, fund, int(year)


def budgeted(policies: PolicySet) -> frozenset[str]:
    """Every (agency, fund, year) that some loaded policy version gives a budget."""
    return frozenset(
        key(agency, fund, year)
        for agency, versions in policies.by_agency.items() for policy in versions
        for fund, years in policy.budgets.items() for year in years
    )


@dataclass
class TrackingLedger(BudgetLedger):
    """A `BudgetLedger` that remembers which fund years were read, and what they held."""

    read: dict[str, FundYear] = field(default_factory=dict)

    def get(self, agency: str, fund: str, year: int) -> FundYear:
        value = super().get(agency, fund, year)
        self.read.setdefault(key(agency, fund, year), value)
        return value


def _ledger(rows: Iterable[asyncpg.Record]) -> dict[str, FundYear]:
    return {key(r["agency"], r["fund"], r["year"]):
            FundYear(r["committed_fen"], tuple(r["thresholds_bp"])) for r in rows}


async def read_all(conn: asyncpg.Connection | asyncpg.Pool) -> BudgetLedger:
    """Every fund year, unlocked (queries, what-if runs)."""
    return BudgetLedger(_ledger(await conn.fetch(f"SELECT {COLUMNS} FROM fund_year")))


async def lock(conn: asyncpg.Connection, keys: Iterable[str]) -> dict[str, FundYear]:
    """Hold the rows of these fund years, in key order, and return what they hold (rows that do
    not exist yet are created first, also in key order)."""
    wanted = sorted(set(keys), key=_split)
    if not wanted:
        return {}
    parts = [_split(k) for k in wanted]
    columns = ([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
    select = (f"SELECT {COLUMNS} FROM fund_year WHERE (agency, fund, year) IN "
              "(SELECT * FROM unnest($1::text[], $2::text[], $3::int[])) "
              "ORDER BY agency, fund, year FOR UPDATE")
    rows = await conn.fetch(select, *columns)
    if len(rows) < len(wanted):
        await conn.execute(
            "INSERT INTO fund_year (agency, fund, year) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::int[]) ORDER BY 1, 2, 3 "
            "ON CONFLICT DO NOTHING", *columns)
        rows = await conn.fetch(select, *columns)
    return _ledger(rows)


async def decide_with_budgets(
    conn: asyncpg.Connection, budgeted_keys: frozenset[str],
    run: Callable[[BudgetLedger], T],
) -> tuple[T, BudgetLedger, dict[str, FundYear]]:
    """``run`` (the batch's decisions, pure, repeatable) against budgets that hold.

    Returns its result, the ledger it left and the fund years it started from (to write back
    with `store`). Every budgeted fund year ``run`` read is locked by this transaction and held
    what ``run`` saw.
    """
    # Without any budget nothing is read first: fund years only accumulate.
    snapshot = await read_all(conn) if budgeted_keys else BudgetLedger()
    held: dict[str, FundYear] = {}
    savepoint: Any = None

    async def _hold(needed: set[str]) -> bool:
        """Lock what is held and needed, in key order; True when ``run`` saw what is locked."""
        nonlocal held, savepoint
        if savepoint is not None:
            await savepoint.rollback()  # gives up the rows held, to take them again in order
        savepoint = conn.transaction()
        await savepoint.start()
        held = await lock(conn, needed | held.keys())
        return all(held[k] == ledger.read[k] for k in needed)

    while True:
        start = {**snapshot.funds, **held}
        ledger = TrackingLedger(dict(start))
        result = run(ledger)
        needed = {k for k in ledger.read if k in budgeted_keys}
        if needed <= held.keys() or (needed and await _hold(needed)):
            if savepoint is not None:
                await savepoint.commit()  # the rows stay locked until the batch commits
            return result, ledger, start
        snapshot.funds.update(held)


async def store(conn: asyncpg.Connection, ledger: BudgetLedger,
                start: dict[str, FundYear]) -> BudgetLedger:
    """Add what the batch changed to each fund year (one statement, key order); returns the
    changed fund years as stored. Budgeted rows are held by the batch, so adding is the same as
    setting them."""
    changed = sorted((k for k, v in ledger.funds.items() if start.get(k, FundYear()) != v),
                     key=_split)
    if not changed:
        return BudgetLedger()
    rows: list[tuple[Any, ...]] = []
    for k in changed:
        before, after = start.get(k, FundYear()), ledger.funds[k]
        rows.append((*_split(k), after.committed_fen - before.committed_fen,
                     list(after.thresholds_emitted_bp)))
    stored = await conn.fetch(
        "INSERT INTO fund_year AS f (agency, fund, year, committed_fen, thresholds_bp) "
        "SELECT a, fu, y, c, ARRAY(SELECT jsonb_array_elements_text(t)::int) "
        "FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::jsonb[]) "
        "AS s(a, fu, y, c, t) ORDER BY a, fu, y "
        "ON CONFLICT (agency, fund, year) DO UPDATE SET "
        "committed_fen = f.committed_fen + excluded.committed_fen, "
        "thresholds_bp = ARRAY(SELECT DISTINCT t FROM unnest(f.thresholds_bp || "
        "excluded.thresholds_bp) t ORDER BY t) "
        f"RETURNING {COLUMNS}",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        [r[3] for r in rows], [_json_ints(r[4]) for r in rows],
    )
    return BudgetLedger(_ledger(stored))


def _json_ints(values: list[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"
