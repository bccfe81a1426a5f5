"""Business metrics of the subsidy service: money granted, rejections, reversals, budgets."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

GRANTS = Counter("subsidy_grants_total", "Grants published", ["agency", "rule", "fund"])
GRANTED_FEN = Counter("subsidy_granted_fen_total", "Money granted, in fen", ["agency", "rule", "fund"])
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
