"""The demo's run report: this run's subsidy outcome per agency, in the terminal and as HTML with SVG charts."""

from __future__ import annotations

import bisect
import datetime as dt
import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

TEMPLATE = Path(__file__).with_name("report_template.html")
FUND_COLOURS = ("#2563eb", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d")
REJECTED, BEFORE, PRODUCED = "#dc2626", "#cbd5e1", "#64748b"


def cny(fen: int) -> str:
    """Integer fen as CNY for display, e.g. 123456 -> '¥1,234.56'."""
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}¥{fen // 100:,}.{fen % 100:02d}"


@dataclass
class Money:
    """A count of decisions and their amount in fen."""

    count: int = 0
    fen: int = 0

    def add(self, fen: int, count: int = 1) -> None:
        self.count += count
        self.fen += fen


@dataclass
class AgencyTally:
    """What one agency decided in this run, from its own events on skills.subsidy.events."""

    grants: Money = field(default_factory=Money)
    by_rule_fund: dict[tuple[str, str], Money] = field(default_factory=dict)
    by_fund: dict[str, Money] = field(default_factory=dict)
    rejections: Counter[str] = field(default_factory=Counter)
    reversals: dict[str, Money] = field(default_factory=dict)
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    exhausted: Counter[str] = field(default_factory=Counter)  # fund -> budget_exhausted rejections
    dead_letters: Counter[str] = field(default_factory=Counter)  # "service:code"
    holds: Money = field(default_factory=Money)  # SubsidyHeld: waiting for review (POLICY §6)
    held_checks: Counter[str] = field(default_factory=Counter)

    @property
    def reversed(self) -> Money:
        total = Money()
        for m in self.reversals.values():
            total.add(m.fen, m.count)
        return total


@dataclass
class Tally:
    """This run's outputs, fed record by record; a decision belongs to the run if its basis does."""

    run_tag: str  # "/<seed>-": every simulated enrollment and assessment ref of the run holds it
    agencies: dict[str, AgencyTally] = field(default_factory=dict)
    outputs: Counter[str] = field(default_factory=Counter)  # records seen per watched topic
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, code)
    grant_ids: set[str] = field(default_factory=set)
    years: set[int] = field(default_factory=set)
    others: int = 0  # subsidy events of other runs that happened to be published meanwhile
    # (agency, rule) -> fund, from the policy files: a rejection names its rule, not its fund.
    rule_funds: dict[tuple[str, str], str] = field(default_factory=dict)

    def agency(self, name: str) -> AgencyTally:
        return self.agencies.setdefault(name, AgencyTally())

    @property
    def decisions(self) -> int:
        return sum(a.grants.count + sum(a.rejections.values()) + a.reversed.count
                   for a in self.agencies.values())

    def _ours(self, data: dict[str, Any]) -> bool:
        basis = data.get("basis") or {}
        return any(self.run_tag in (basis.get(k) or "") for k in ("enrollment_ref", "assessment_ref"))

    def add_subsidy(self, event: dict[str, Any]) -> None:
        data, kind = event["data"], event["type"].rsplit(".", 2)[-2]
        if kind == "BudgetThresholdReached":
            self.agency(data["agency"]).thresholds.append(data)
            return
        ours = data["grant_id"] in self.grant_ids if kind == "SubsidyReversed" else self._ours(data)
        if not ours:
            self.others += 1
            return
        tally = self.agency(data["agency"])
        self.years.add(dt.datetime.fromisoformat(event["time"]).year)
        if kind == "SubsidyGranted":
            self.grant_ids.add(data["grant_id"])
            tally.grants.add(data["amount_fen"])
            tally.by_rule_fund.setdefault((data["rule"], data["fund"]), Money()).add(data["amount_fen"])
            tally.by_fund.setdefault(data["fund"], Money()).add(data["amount_fen"])
        elif kind == "SubsidyRejected":
            tally.rejections[data["reason"]] += 1
            if data["reason"] == "budget_exhausted":
                tally.exhausted[self.rule_funds.get((data["agency"], data["rule"]), "?")] += 1
        elif kind == "SubsidyReversed":
            tally.reversals.setdefault(data["reason"], Money()).add(data["amount_fen"])
        elif kind == "SubsidyHeld":
            tally.holds.add(data["amount_fen"])
            tally.held_checks.update(data["hold"]["checks"])

    def add_dead_letter(self, service: str, code: str, agency: str | None) -> None:
        self.dead_letters[(service, code)] += 1
        if agency in self.agencies:
            self.agencies[agency].dead_letters[f"{service}:{code}"] += 1


@dataclass
class ApiTotals:
    """One agency's totals as the subsidy service's /agencies/{agency}/summary reports them."""

    grants: int = 0
    granted_fen: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    reversals: int = 0
    reversed_fen: int = 0
    budgets: dict[tuple[str, int], tuple[int | None, int]] = field(default_factory=dict)  # (fund, year)

    def add_summary(self, summary: dict[str, Any]) -> None:
        self.grants += summary["grants"]
        self.granted_fen += summary["granted_fen"]
        self.rejections.update(summary["rejections_by_reason"])
        self.reversals += summary["reversals"]
        self.reversed_fen += summary["reversed_fen"]
        for fund, b in summary["budgets"].items():
            self.budgets[(fund, summary["year"])] = (b["budget_fen"], b["committed_fen"])

    def minus(self, before: ApiTotals) -> ApiTotals:
        return ApiTotals(self.grants - before.grants, self.granted_fen - before.granted_fen,
                         +(self.rejections - before.rejections), self.reversals - before.reversals,
                         self.reversed_fen - before.reversed_fen)

    def matches(self, tally: AgencyTally) -> bool:
        return (self.grants, self.granted_fen, +self.rejections, self.reversals, self.reversed_fen) == (
            tally.grants.count, tally.grants.fen, +tally.rejections, tally.reversed.count, tally.reversed.fen)


@dataclass
class BudgetLine:
    """One agency's fund: (year, budget, committed now, committed before the run) per budgeted
    year, the thresholds this run reached as (year, basis points), its budget_exhausted rejections."""

    agency: str
    fund: str
    years: list[tuple[int, int, int, int]]
    reached: list[tuple[int, int]]
    exhausted: int

    def budget_text(self) -> str:
        return "; ".join(f"{y}: {cny(cap)}" for y, cap, _c, _b in self.years) or "none"

    def committed_text(self) -> str:
        # Rounded down: 99.99% must not read as the 100% the budget never reached.
        return "; ".join(f"{y}: {cny(c)} ({c * 1000 // cap / 10:.1f}%)" if cap else f"{y}: {cny(c)}"
                         for y, cap, c, _b in self.years) or "-"

    def reached_text(self) -> str:
        return ", ".join(f"{y} {bp / 100:.0f}%" for y, bp in self.reached) or "none"


@dataclass
class Sample:
    """Cumulative counts at one moment of the run (seconds since its start)."""

    at: float
    produced: int
    enrollment: int
    assessment: int
    decisions: int


@dataclass
class Report:
    seed: int
    persons: int
    agencies: tuple[str, ...]
    disorder: bool
    topic_prefix: str
    started: dt.datetime
    tally: Tally
    produced: dict[str, int] = field(default_factory=dict)  # per upstream topic
    intended_dead_letters: Counter[str] = field(default_factory=Counter)  # "service:code"
    phases: dict[str, float] = field(default_factory=dict)  # name -> seconds to settle
    samples: list[Sample] = field(default_factory=list)
    api_before: dict[str, ApiTotals] = field(default_factory=dict)
    api_after: dict[str, ApiTotals] = field(default_factory=dict)
    parked: int = 0
    problem: str = ""  # empty when every phase settled before its deadline
    notes: list[str] = field(default_factory=list)  # what the reader should know about the stack

    def budgets(self) -> list[BudgetLine]:
        """Per agency and fund: its budgets, committed money, thresholds reached and
        budget_exhausted rejections in this run (funds with a budget or an exhaustion only)."""
        lines = []
        for agency in self.agencies:
            tally, after = self.tally.agencies.get(agency, AgencyTally()), self.api_after.get(agency, ApiTotals())
            before = self.api_before.get(agency, ApiTotals())
            funds = {f for (f, _y), (cap, _c) in after.budgets.items() if cap is not None} | set(tally.exhausted)
            for fund in sorted(funds):
                years = sorted((y, cap, committed, before.budgets.get((f, y), (None, 0))[1])
                               for (f, y), (cap, committed) in after.budgets.items() if f == fund and cap is not None)
                reached = sorted((t["year"], t["threshold_bp"]) for t in tally.thresholds if t["fund"] == fund)
                lines.append(BudgetLine(agency, fund, years, reached, tally.exhausted[fund]))
        return lines

    @property
    def duration(self) -> float:
        return self.samples[-1].at if self.samples else 0.0

    def api_delta(self, agency: str) -> ApiTotals:
        return self.api_after.get(agency, ApiTotals()).minus(self.api_before.get(agency, ApiTotals()))

    def peak_rate(self) -> float:
        return max((r for _t, r in rates(self.samples, "decisions")), default=0.0)


def run_line(report: Report) -> str:
    """One sentence on volume and timing, for the terminal and the HTML."""
    t = report.tally
    phases = ", ".join(f"{p} settled in {s:.1f} s" for p, s in report.phases.items())
    parked = f" {report.parked:,} records still parked, waiting for what they refer to." if report.parked else ""
    return (f"{sum(report.produced.values()):,} upstream records produced; {t.outputs['enrollment']:,} enrollment "
            f"and {t.outputs['assessment']:,} assessment events; {t.decisions:,} subsidy decisions "
            f"(peak {report.peak_rate():,.0f}/s); {phases}.{parked}")


def rates(samples: list[Sample], series: str, buckets: int = 60) -> list[tuple[float, float]]:
    """(bucket start, records per second) of one cumulative series, in at most ``buckets`` buckets.

    Samples come at uneven intervals, so the series is interpolated linearly at bucket edges.
    """
    if len(samples) < 2:
        return []
    times = [s.at for s in samples]
    values = [float(getattr(s, series)) for s in samples]

    def at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        if i == 0:
            return values[0]
        if i == len(times):
            return values[-1]
        t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    width = max(1.0, math.ceil(times[-1] / buckets))
    edges = [n * width for n in range(math.ceil(times[-1] / width) + 1)]
    return [(a, (at(b) - at(a)) / width) for a, b in zip(edges, edges[1:], strict=False)]


def dead_letter_codes(report: Report) -> list[tuple[str, str]]:
    """(service, code) of every dead letter seen or injected, sorted."""
    injected = {(k.split(":", 1)[0], k.split(":", 1)[1]) for k in report.intended_dead_letters}
    return sorted(set(report.tally.dead_letters) | injected)


# --- terminal -------------------------------------------------------------------------------------

def terminal_summary(report: Report, html_path: Path | None = None) -> RenderableType:
    t = report.tally
    head = Text.assemble(
        (f"Demo run seed {report.seed}", "bold"),
        f" · {report.persons:,} persons · {', '.join(report.agencies)} · disorder "
        f"{'on' if report.disorder else 'off'} · {report.duration:.1f} s · ",
        ("settled" if not report.problem else f"INCOMPLETE: {report.problem}",
         "green" if not report.problem else "bold red"),
    )
    overview = Table(title="This run, per agency (its own events on skills.subsidy.events)",
                     caption="API Δ: change of the subsidy service's /agencies/<agency>/summary over the run",
                     title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("agency", "grants", "granted", "held", "rejected", "reversed", "DLQ", "API Δ"):
        overview.add_column(col, justify="left" if col == "agency" else "right")
    parts: list[RenderableType] = [head, overview]
    for name in report.agencies:
        a = t.agencies.get(name, AgencyTally())
        delta = report.api_delta(name)
        overview.add_row(
            name, f"{a.grants.count:,}", cny(a.grants.fen), f"{a.holds.count:,} ({cny(a.holds.fen)})",
            f"{sum(a.rejections.values()):,}",
            f"{a.reversed.count:,}", f"{sum(a.dead_letters.values()):,}",
            Text("equal", "green") if delta.matches(a) else Text("differs", "bold red"))
        grid = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("rule", "fund", "grants", "amount"):
            grid.add_column(col, justify="right" if col in ("grants", "amount") else "left")
        for (rule, fund), m in sorted(a.by_rule_fund.items(), key=lambda kv: -kv[1].fen):
            grid.add_row(rule, fund, f"{m.count:,}", cny(m.fen))
        parts += [Text(""), Text.assemble((name, "bold underline"), f"  granted {cny(a.grants.fen)} − reversed "
                                          f"{cny(a.reversed.fen)} = net {cny(a.grants.fen - a.reversed.fen)}")]
        if a.by_rule_fund:
            parts.append(grid)
        reasons = ", ".join(f"{r} {n:,}" for r, n in a.rejections.most_common()) or "none"
        reversals = ", ".join(f"{r} {m.count:,} ({cny(m.fen)})" for r, m in a.reversals.items()) or "none"
        dead = ", ".join(f"{c} {n:,}" for c, n in sorted(a.dead_letters.items())) or "none"
        checks = ", ".join(f"{c} {n:,}" for c, n in a.held_checks.most_common())
        parts.append(Text.assemble(("  held for integrity review: ", "bold"), (
            f"{a.holds.count:,} grants, {cny(a.holds.fen)} ({checks})" if a.holds.count else "none")))
        parts += [Text.assemble(("  rejections: ", "bold"), reasons), Text.assemble(
            ("  reversals: ", "bold"), reversals), Text.assemble(("  dead letters: ", "bold"), dead)]
    budgets = Table(title="Budgets: thresholds reached and budget_exhausted rejections (this run)",
                    title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("agency", "fund", "budget", "committed", "thresholds reached", "budget_exhausted"):
        budgets.add_column(col, justify="right" if col == "budget_exhausted" else "left")
    for line in report.budgets():
        budgets.add_row(line.agency, line.fund, line.budget_text(), line.committed_text(), line.reached_text(),
                        Text(f"{line.exhausted:,}", "bold red" if line.exhausted else ""))
    parts += [Text(""), budgets if report.budgets() else Text("Budgets: none configured (every fund unlimited)")]
    parts += [Text.assemble(("Note: ", "bold yellow"), note) for note in report.notes]
    dlq = Table(title="Dead letters by service and code (this run)", title_justify="left",
                box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("service", "code", "dead letters", "injected by the simulator"):
        dlq.add_column(col, justify="right" if col[0] in "di" else "left")
    for service, code in dead_letter_codes(report):
        dlq.add_row(service, code, f"{t.dead_letters[(service, code)]:,}",
                    f"{report.intended_dead_letters[f'{service}:{code}']:,}")
    parts += [Text(""), dlq, Text(""), Text("Throughput: " + run_line(report))]
    if html_path is not None:
        parts.append(Text.assemble(("HTML report: ", "bold"), str(html_path)))
    return Group(*parts)


# --- HTML and SVG ---------------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value))


def hbar_chart(rows: list[tuple[str, list[tuple[float, str, str]], str]], *, label: str,
               width: int = 860, marker: Sequence[float | None] | None = None) -> str:
    """Horizontal bars: each row (name, segments (value, colour, tooltip), value text), stacked."""
    if not rows:
        return '<p class="empty">none in this run</p>'
    # Label and value columns sized to their longest text (about 7 px a character at 12 px).
    left = min(360, 16 + 7 * max(len(name) for name, _s, _t in rows))
    right, row_h = 16 + 7 * max(len(text) for _n, _s, text in rows), 24
    top = max((sum(v for v, _c, _t in segs) for _n, segs, _l in rows), default=0.0)
    top = max([top] + [m for m in (marker or []) if m is not None]) or 1.0
    span = width - left - right
    out = [f'<svg class="chart" role="img" aria-label="{_e(label)}" width="{width}" '
           f'height="{row_h * len(rows) + 8}" viewBox="0 0 {width} {row_h * len(rows) + 8}">']
    for i, (name, segments, text) in enumerate(rows):
        y, x = 4 + i * row_h, float(left)
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(name)}</text>')
        for value, colour, tip in segments:
            w = span * value / top
            out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row_h - 8}" '
                       f'fill="{colour}"><title>{_e(tip)}</title></rect>')
            x += w
        cap = marker[i] if marker is not None else None
        if cap is not None:
            mx = left + span * cap / top
            out.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{y}" y2="{y + row_h}" class="cap"/>')
        out.append(f'<text x="{x + 6:.1f}" y="{y + 16}" class="value">{_e(text)}</text>')
    return "".join(out) + "</svg>"


def column_chart(points: list[tuple[float, float]], *, label: str, colour: str, unit: str,
                 marks: dict[str, float] | None = None, width: int = 900, height: int = 160) -> str:
    """Vertical bars over time (seconds since the run started), with labelled vertical marks."""
    if not points:
        return '<p class="empty">no samples</p>'
    left, bottom, top_pad, right_pad = 56, 22, 24, 28
    step = points[1][0] - points[0][0] if len(points) > 1 else 1.0
    end = points[-1][0] + step
    peak = max(v for _t, v in points) or 1.0
    plot_w, plot_h = width - left - right_pad, height - bottom - top_pad
    out = [f'<svg class="chart" role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">',
           f'<text x="{left - 6}" y="{top_pad + 4}" text-anchor="end">{peak:,.0f}</text>',
           f'<text x="{left - 6}" y="{top_pad + plot_h}" text-anchor="end">0</text>',
           f'<text x="{left - 6}" y="{top_pad + plot_h / 2 + 4}" text-anchor="end" class="unit">{_e(unit)}</text>']
    bar_w = plot_w * step / end
    for t, v in points:
        h = plot_h * v / peak
        out.append(f'<rect x="{left + plot_w * t / end:.1f}" y="{top_pad + plot_h - h:.1f}" '
                   f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="{colour}">'
                   f'<title>{t:.0f}-{t + step:.0f} s: {v:,.0f} {_e(unit)}</title></rect>')
    for name, at in (marks or {}).items():
        x = left + plot_w * at / end
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad - 18}" y2="{top_pad + plot_h}" class="mark"/>'
                   f'<text x="{x + 4:.1f}" y="{top_pad - 8}" class="mark">{_e(name)}</text>')
    base = top_pad + plot_h
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}" class="axis"/>')
    for frac in (0, 0.25, 0.5, 0.75, 1):
        out.append(f'<text x="{left + plot_w * frac:.1f}" y="{height - 6}" text-anchor="middle">'
                   f'{end * frac:.0f} s</text>')
    return "".join(out) + "</svg>"


def _fund_colours(report: Report) -> dict[str, str]:
    funds = sorted({f for a in report.tally.agencies.values() for f in a.by_fund}
                   | {f for t in report.api_after.values() for f, _y in t.budgets})
    return {f: FUND_COLOURS[i % len(FUND_COLOURS)] for i, f in enumerate(funds)}


def _legend(colours: dict[str, str]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{_e(n)}</span>' for n, c in colours.items()) + "</p>"


def _numeric(cell: object) -> bool:
    return str(cell).lstrip("-¥")[:1].isdigit()


def _table(head: tuple[str, ...], rows: list[tuple[object, ...]], cls: str = "") -> str:
    """An HTML table; numeric columns (judged by the first row) are right-aligned."""
    num = [bool(rows) and _numeric(c) for c in rows[0]] if rows else [False] * len(head)
    align = ['' if not n else ' class="num"' for n in num]
    body = "".join("<tr>" + "".join(f"<td{a}>{_e(c)}</td>" for a, c in zip(align, r, strict=True)) + "</tr>"
                   for r in rows)
    heads = "".join(f"<th{a}>{_e(h)}</th>" for a, h in zip(align, head, strict=True))
    return f'<table class="{cls}"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>'


def _budget_rows(before: ApiTotals, after: ApiTotals,
                 colours: dict[str, str]) -> list[tuple[str, list[tuple[float, str, str]], str]]:
    rows: list[tuple[str, list[tuple[float, str, str]], str]] = []
    for (fund, year), (cap, committed) in sorted(after.budgets.items()):
        earlier = before.budgets.get((fund, year), (None, 0))[1]
        text = cny(committed) + (f" of {cny(cap)} ({committed / cap:.0%})" if cap else " · no cap configured")
        rows.append((f"{fund} {year}", [(earlier, BEFORE, f"committed before this run: {cny(earlier)}"),
                                        (committed - earlier, colours.get(fund, PRODUCED),
                                         f"committed by this run: {cny(committed - earlier)}")], text))
    return rows


def _agency_section(report: Report, name: str, colours: dict[str, str]) -> str:
    a = report.tally.agencies.get(name, AgencyTally())
    before, after = report.api_before.get(name, ApiTotals()), report.api_after.get(name, ApiTotals())
    delta = after.minus(before)
    by_rule = sorted(a.by_rule_fund.items(), key=lambda kv: -kv[1].fen)
    money = hbar_chart([(f"{rule} · {fund}", [(m.fen, colours.get(fund, PRODUCED), f"{fund}: {cny(m.fen)}")],
                         f"{cny(m.fen)} ({m.count:,})") for (rule, fund), m in by_rule],
                       label=f"{name}: money granted by rule and fund")
    rejections = hbar_chart([(r, [(n, REJECTED, f"{r}: {n:,}")], f"{n:,}") for r, n in a.rejections.most_common()],
                            label=f"{name}: rejections by reason")
    budget_chart = hbar_chart(_budget_rows(before, after, colours), label=f"{name}: budget use",
                              marker=[cap for _k, (cap, _c) in sorted(after.budgets.items())])
    reversals = (_table(("reason", "reversals", "amount"), [(r, f"{m.count:,}", cny(m.fen))
                                                            for r, m in a.reversals.items()])
                 if a.reversals else '<p class="empty">none in this run</p>')
    thresholds = "".join(f"<li>{_e(t['fund'])} {t['year']}: {t['threshold']:.0%} of {cny(t['budget_fen'])}</li>"
                         for t in a.thresholds)
    lines = [line for line in report.budgets() if line.agency == name]
    exhaustion = (_table(("fund", "budget", "committed", "thresholds reached", "budget_exhausted rejections"),
                         [(line.fund, line.budget_text(), line.committed_text(), line.reached_text(),
                           f"{line.exhausted:,}") for line in lines], "budgets")
                  if lines else '<p class="empty">no budget configured: every fund unlimited</p>')
    dead = ", ".join(f"{c}: {n:,}" for c, n in sorted(a.dead_letters.items())) or "none"
    check = ('<span class="ok">equal to this run</span>' if delta.matches(a)
             else f'<span class="bad">differs: API Δ {delta.grants:,} grants, {cny(delta.granted_fen)}</span>')
    return f"""
<section class="agency" id="agency-{_e(name)}">
  <h2>{_e(name)}</h2>
  <div class="kpis">
    <div><b class="grants">{a.grants.count:,}</b>grants</div>
    <div><b class="granted">{cny(a.grants.fen)}</b>granted</div>
    <div><b>{sum(a.rejections.values()):,}</b>rejections</div>
    <div><b>{a.reversed.count:,} · {cny(a.reversed.fen)}</b>reversed</div>
    <div><b>{cny(a.grants.fen - a.reversed.fen)}</b>net</div>
    <div><b class="held">{a.holds.count:,} · {cny(a.holds.fen)}</b>held for review</div>
  </div>
  <p class="holds">Held for integrity review (POLICY §6; a reviewer of {_e(name)} releases or denies them in
  the subsidy service's console <code>/console/</code>): {a.holds.count:,} grants, {cny(a.holds.fen)}{
  " — checks: " + _e(", ".join(f"{c} {n:,}" for c, n in a.held_checks.most_common())) if a.holds.count else ""}.</p>
  <p class="api">Subsidy service query API (<code>/agencies/{_e(name)}/summary</code>): {after.grants:,} grants,
  {cny(after.granted_fen)} on the stack; change over this run {delta.grants:,} grants, {cny(delta.granted_fen)},
  {sum(delta.rejections.values()):,} rejections: {check}.</p>
  <h3>Money granted by rule and fund</h3>{money}
  <h3>Rejections by reason</h3>{rejections}
  <h3>Budget use (committed before this run in grey)</h3>{budget_chart}
  <h3>Budget exhaustion</h3>{exhaustion}
  {f"<h3>Budget thresholds reached</h3><ul>{thresholds}</ul>" if thresholds else ""}
  <h3>Reversals</h3>{reversals}
  <p>Dead letters attributed to {_e(name)}: {_e(dead)}.</p>
</section>"""


def render_html(report: Report) -> str:
    t, colours = report.tally, _fund_colours(report)
    overview = _table(
        ("agency", "grants", "granted", "held", "held amount", "rejections", "reversals", "reversed", "net",
         "API Δ equal"),
        [(n, f"{a.grants.count:,}", cny(a.grants.fen), f"{a.holds.count:,}", cny(a.holds.fen),
          f"{sum(a.rejections.values()):,}", f"{a.reversed.count:,}",
          cny(a.reversed.fen), cny(a.grants.fen - a.reversed.fen), "yes" if report.api_delta(n).matches(a) else "NO")
         for n in report.agencies for a in [t.agencies.get(n, AgencyTally())]], "overview")
    by_agency = hbar_chart(
        [(n, [(m.fen, colours[f], f"{f}: {cny(m.fen)}") for f, m in sorted(a.by_fund.items())], cny(a.grants.fen))
         for n in report.agencies for a in [t.agencies.get(n, AgencyTally())]],
        label="money granted per agency by fund")
    marks = {"assessment phase": report.phases["training"]} if "training" in report.phases else {}
    throughput = "".join(
        f"<h3>{title}</h3>" + column_chart(rates(report.samples, series), label=title, colour=colour,
                                           unit="per s", marks=marks)
        for title, series, colour in (("Upstream records produced per second", "produced", PRODUCED),
                                      ("Enrollment events per second", "enrollment", "#0891b2"),
                                      ("Subsidy decisions per second", "decisions", "#2563eb")))
    dead = _table(("service", "code", "dead letters", "injected by the simulator"),
                  [(s, c, f"{t.dead_letters[(s, c)]:,}", f"{report.intended_dead_letters[f'{s}:{c}']:,}")
                   for s, c in dead_letter_codes(report)])
    status = ('<span class="ok">settled</span>' if not report.problem
              else f'<span class="bad">INCOMPLETE: {_e(report.problem)}</span>')
    notes = "".join(f'<p class="meta bad">Note: {_e(note)}</p>' for note in report.notes)
    header = (f"{report.persons:,} persons · agencies {_e(', '.join(report.agencies))} · disorder "
              f"{'on' if report.disorder else 'off'} · topic prefix “{_e(report.topic_prefix)}” · started "
              f"{report.started:%Y-%m-%d %H:%M:%S %Z} · {report.duration:.1f} s · {status}")
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=f"Skills subsidy demo, seed {report.seed}", seed=report.seed, header=header,
        summary=_e(run_line(report)), notes=notes, overview=overview, legend=_legend(colours), by_agency=by_agency,
        throughput=throughput, dead_letters=dead,
        agencies="".join(_agency_section(report, n, colours) for n in report.agencies))
