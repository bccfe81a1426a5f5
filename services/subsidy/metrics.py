"""Business metrics of the subsidy service: money granted, rejections, reversals, budgets, pending
items, and grants held for integrity review."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import asyncpg
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.runtime.settings import ServiceSettings
from services.subsidy.engine.state import PendingKind

GRANTS = Counter("subsidy_grants_total", "Grants published", ["agency", "rule", "fund"])
GRANTED_FEN = Counter("subsidy_granted_fen_total", "Money granted, in fen", ["agency", "rule", "fund"])
HOLDS = Counter("subsidy_holds_total", "SubsidyHeld events published (POLICY §6)",
                ["agency", "rule", "fund"])
REJECTIONS = Counter("subsidy_rejections_total", "Rejections published", ["agency", "reason"])
REVERSALS = Counter("subsidy_reversals_total", "Reversals published", ["agency", "reason"])
REVERSED_FEN = Counter("subsidy_reversed_fen_total", "Money taken back, in fen", ["agency", "reason"])
BUDGET_COMMITTED = Gauge(
    "subsidy_budget_committed_fen", "Committed money per fund and year", ["agency", "fund", "year"]
)
BUDGET_REMAINING = Gauge(
    "subsidy_budget_remaining_fen", "Budget left per fund and year (budgeted funds only)",
    ["agency", "fund", "year"],
)
PENDING_ITEMS = Gauge(
    "subsidy_pending_items", "Certificates and revocations waiting for a fact still to come "
    "(POLICY §3.10), by kind; refreshed by refresh_pending_items", ["kind"],
)
for _kind in PendingKind:
    PENDING_ITEMS.labels(_kind.value)  # every kind exported from the start, at 0

# Certificates still pending and revocations waiting for their certificate, by kind, from the
# person states (JSON text, see services/subsidy/store.py).
PENDING_SQL = """
SELECT kind, count(*) AS n FROM (
    SELECT CASE WHEN c.value->>'enrollment_ref' IS NULL THEN 'certificate_unlinked'
                ELSE 'certificate_awaiting_completion' END AS kind
    FROM person_state p, jsonb_each(p.state::jsonb->'certificates') c
    WHERE p.has_pending AND c.value->>'status' = 'pending'
    UNION ALL
    SELECT 'revocation_awaiting_certificate'
    FROM person_state p, jsonb_each(p.state::jsonb->'pending_revocations') r
    WHERE p.has_pending
) items GROUP BY kind
"""
PENDING_REFRESH_SECONDS = 30.0
_last_refresh = [float("-inf")]


async def refresh_pending_items(
    pool: asyncpg.Pool, settings: ServiceSettings, cutoff: dt.datetime
) -> None:
    """A service sweep (ServiceDefinition.sweeps) counting pending items, at most every 30 s.

    Only persons flagged ``has_pending`` (kept by the batch handler, partial index) are read.
    """
    now = time.monotonic()
    if now - _last_refresh[0] < PENDING_REFRESH_SECONDS:
        return
    _last_refresh[0] = now
    async with pool.acquire() as conn:
        counts = {r["kind"]: int(r["n"]) for r in await conn.fetch(PENDING_SQL)}
    for kind in PendingKind:
        PENDING_ITEMS.labels(kind.value).set(counts.get(kind.value, 0))


HOLDS_OPEN = Gauge(
    "subsidy_holds_open", "Grants held for integrity review and not reviewed yet (POLICY §6), "
    "by agency; refreshed by refresh_holds", ["agency"],
)
HOLD_OLDEST_AGE = Gauge(
    "subsidy_hold_oldest_age_seconds", "Age of the agency's oldest open hold (0 when none), "
    "refreshed by refresh_holds", ["agency"],
)
HELD_FEN = Gauge(
    "subsidy_held_fen", "Money held for review (committed against the budget, not paid), in "
    "fen, by agency; refreshed by refresh_holds", ["agency"],
)
HOLDS_SQL = """
SELECT agency, count(*) AS n, sum(amount_fen)::bigint AS fen,
       extract(epoch FROM now() - min(held_at))::float8 AS age
FROM hold WHERE status = 'open' GROUP BY agency
"""
HOLDS_REFRESH_SECONDS = 5.0
_last_holds_refresh = [float("-inf")]


async def refresh_holds(pool: asyncpg.Pool, settings: ServiceSettings, cutoff: dt.datetime) -> None:
    """A service sweep: open holds, the oldest one's age and the money held, at most every 5 s,
    from the ``hold`` table's open rows (a partial index). Every configured agency is exported,
    at 0 when it holds nothing, so the alert on old holds also sees them end."""
    now = time.monotonic()
    if now - _last_holds_refresh[0] < HOLDS_REFRESH_SECONDS:
        return
    _last_holds_refresh[0] = now
    async with pool.acquire() as conn:
        rows = await conn.fetch(HOLDS_SQL)
    found = {r["agency"]: r for r in rows}
    for agency in sorted(set(settings.agencies) | set(found)):
        row = found.get(agency)
        HOLDS_OPEN.labels(agency).set(int(row["n"]) if row else 0)
        HOLD_OLDEST_AGE.labels(agency).set(float(row["age"]) if row else 0.0)
        HELD_FEN.labels(agency).set(int(row["fen"]) if row else 0)


class BudgetTotals(Collector):
    """Budget and share used per budgeted (agency, fund, year), derived from the two gauges above.

    ``subsidy_budget_fen`` = committed + remaining; ``subsidy_budget_used_ratio`` = committed /
    budget (0 for a zero budget). Funds without a budget have neither.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        committed = _samples(BUDGET_COMMITTED)
        budget = GaugeMetricFamily(
            "subsidy_budget_fen", "Budget per fund and year (committed + remaining), in fen",
            labels=["agency", "fund", "year"],
        )
        used = GaugeMetricFamily(
            "subsidy_budget_used_ratio", "Share of the budget committed, 0..1 (above 1 when overspent)",
            labels=["agency", "fund", "year"],
        )
        for key, remaining in _samples(BUDGET_REMAINING).items():
            spent = committed.get(key, 0)
            total = spent + remaining
            budget.add_metric(list(key), total)
            used.add_metric(list(key), spent / total if total > 0 else 0.0)
        yield budget
        yield used


def _samples(gauge: Gauge) -> dict[tuple[str, str, str], int]:
    return {
        (s.labels["agency"], s.labels["fund"], s.labels["year"]): int(s.value)
        for family in gauge.collect() for s in family.samples
    }


REGISTRY.register(BudgetTotals())
