"""Generates deploy/grafana/dashboards/skills.json (run: .venv/bin/python deploy/grafana/dashboard.py).

One row per service (throughput, batch latency, lag, dead letters, outbox, readiness) and a
business row for finance (grants and money by agency and fund, budget burn-down, rejections).
The JSON is checked in; tests/unit/test_deploy_manifests.py checks it is what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("dashboards") / "skills.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICES = ("enrollment", "assessment", "subsidy")


class Layout:
    """Places panels left to right, 24 columns wide, rows of a fixed height."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.bottom = 0  # lowest edge of the current line of panels
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": self._id(),
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], *, kind: str = "timeseries",
              unit: str = "short", width: int = 8, height: int = 8, description: str = "",
              stack: bool = False, thresholds: list[dict[str, Any]] | None = None) -> None:
        if self.x + width > 24:
            self._newline()
        custom: dict[str, Any] = {}
        if kind == "timeseries":
            custom = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never",
                      "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        defaults: dict[str, Any] = {"unit": unit, "custom": custom}
        if thresholds is not None:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
            defaults["color"] = {"mode": "thresholds"}
        self.panels.append({
            "type": kind, "title": title, "description": description, "id": self._id(),
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries"
            else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                  "colorMode": "background", "textMode": "value_and_name"} if kind == "stat"
            else {"showHeader": True},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                 "legendFormat": legend, **({"instant": True, "format": "table"} if kind == "table" else {})}
                for i, (expr, legend) in enumerate(targets)
            ],
        })
        self.x += width
        self.bottom = max(self.bottom, self.y + height)

    def _newline(self) -> None:
        if self.x:
            self.y, self.x = self.bottom, 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def service_row(layout: Layout, service: str) -> None:
    s = f'service="{service}"'
    layout.row(f"{service}: runtime")
    layout.panel("Up and ready", [
        (f'up{{job="skills", {s}}}', "up {{instance}}"),
        (f"skills_ready{{{s}}}", "ready {{instance}}"),
    ], kind="stat", width=4, description="up: Prometheus reaches /metrics; ready: /readyz passes",
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    layout.panel("Records consumed / s by type", [
        (f"sum by (type) (rate(skills_records_consumed_total{{{s}}}[$__rate_interval]))", "{{type}}"),
    ], unit="ops", width=10, stack=True)
    layout.panel("Records published / s by type", [
        (f"sum by (type) (rate(skills_records_published_total{{{s}}}[$__rate_interval]))", "{{type}}"),
    ], unit="ops", width=10, stack=True)
    layout.panel("Batch processing latency", [
        (f"histogram_quantile({q}, sum by (le) (rate(skills_batch_processing_seconds_bucket{{{s}}}[$__rate_interval])))",
         f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ], unit="s", width=6, description="from a batch's arrival to its database commit")
    layout.panel("Batch size (mean) and inbox duplicates / s", [
        (f"sum(rate(skills_batch_size_sum{{{s}}}[$__rate_interval])) / sum(rate(skills_batch_size_count{{{s}}}[$__rate_interval]))",
         "records per batch"),
        (f"sum(rate(skills_inbox_duplicates_total{{{s}}}[$__rate_interval]))", "duplicates / s"),
    ], width=6)
    layout.panel("Consumer lag by topic", [
        (f"sum by (topic) (skills_consumer_lag{{{s}}})", "{{topic}}"),
    ], width=6, description="records behind the high watermark, summed over partitions")
    layout.panel("Dead letters by code (per 5 min)", [
        (f"sum by (code) (increase(skills_dlq_records_total{{{s}}}[5m]))", "{{code}}"),
    ], width=6, stack=True)
    layout.panel("Outbox: oldest unpublished row age", [
        (f"max(skills_outbox_oldest_age_seconds{{{s}}})", "oldest age"),
    ], unit="s", width=8, description="over 60 s raises OutboxStale")
    layout.panel("Outbox backlog and parked records", [
        (f"sum(skills_outbox_backlog{{{s}}})", "outbox rows"),
        (f"sum(skills_pending_records{{{s}}})", "parked records"),
    ], width=8)
    layout.panel("Lag per partition", [
        (f"skills_consumer_lag{{{s}}}", "{{topic}}/{{partition}}"),
    ], width=8)


def business_row(layout: Layout) -> None:
    layout.row("subsidy: money (finance)")
    layout.panel("Grants / h by agency and fund", [
        ("sum by (agency, fund) (rate(subsidy_grants_total[$__rate_interval])) * 3600", "{{agency}} {{fund}}"),
    ], width=8, stack=True)
    layout.panel("Money granted (yuan) in range, by agency and fund", [
        ("sum by (agency, fund) (increase(subsidy_granted_fen_total[$__range])) / 100", "{{agency}} {{fund}}"),
    ], kind="table", unit="currencyCNY", width=8,
        description="amounts are integer fen in the metrics; divided by 100 for display only")
    layout.panel("Money granted (yuan) by rule, in range", [
        ("sum by (agency, rule) (increase(subsidy_granted_fen_total[$__range])) / 100", "{{agency}} {{rule}}"),
    ], kind="table", unit="currencyCNY", width=8)
    layout.panel("Budget burn-down: remaining (yuan)", [
        ("sum by (agency, fund, year) (subsidy_budget_remaining_fen) / 100", "{{agency}} {{fund}} {{year}}"),
    ], unit="currencyCNY", width=12)
    layout.panel("Budget used", [
        ("max by (agency, fund, year) (subsidy_budget_used_ratio)", "{{agency}} {{fund}} {{year}}"),
    ], unit="percentunit", width=12, description="committed / budget; BudgetNearlySpent past 90%",
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.75},
                    {"color": "red", "value": 0.9}])
    layout.panel("Committed (yuan) per agency, fund, year", [
        ("sum by (agency, fund, year) (subsidy_budget_committed_fen) / 100", "{{agency}} {{fund}} {{year}}"),
    ], kind="table", unit="currencyCNY", width=8)
    layout.panel("Rejections by reason (per hour)", [
        ("sum by (agency, reason) (increase(subsidy_rejections_total[1h]))", "{{agency}} {{reason}}"),
    ], width=8, stack=True)
    layout.panel("Reversals: count and money taken back (yuan) per hour", [
        ("sum by (agency, reason) (increase(subsidy_reversals_total[1h]))", "{{agency}} {{reason}}"),
        ("sum by (agency) (increase(subsidy_reversed_fen_total[1h])) / 100", "{{agency}} yuan"),
    ], width=8)
    layout.panel("Holds waiting for review, by agency", [
        ("max by (agency) (subsidy_holds_open)", "{{agency}}"),
    ], width=8, description="grants held because they rest on a flagged enrollment (POLICY §6)")
    layout.panel("Oldest open hold (age)", [
        ("max by (agency) (subsidy_hold_oldest_age_seconds)", "{{agency}}"),
    ], unit="s", width=8, description="HoldsWaitingForReview past 7 days",
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 3 * 86400},
                    {"color": "red", "value": 7 * 86400}])
    layout.panel("Money held for review (yuan)", [
        ("max by (agency) (subsidy_held_fen) / 100", "{{agency}}"),
    ], unit="currencyCNY", width=8, description="committed against the budget, not paid")
    layout.panel("Pending items by kind", [
        ("sum by (kind) (subsidy_pending_items)", "{{kind}}"),
    ], width=24, height=6,
        description="certificates waiting for their training to complete or to be linked, revocations waiting for their certificate (POLICY §3.10)")


def dashboard() -> dict[str, Any]:
    layout = Layout()
    for service in SERVICES:
        service_row(layout, service)
    business_row(layout)
    return {
        "uid": "skills-subsidy", "title": "Skills-training subsidies", "tags": ["skills"],
        "timezone": "Asia/Shanghai", "schemaVersion": 39, "version": 1, "editable": True,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []}, "templating": {"list": []},
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
