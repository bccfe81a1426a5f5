"""The review console: server-rendered pages of the subsidy service for an agency's staff,
reviewers and auditors (POLICY §6). No front-end build: Jinja2 templates, HTML forms.

Sign-in takes an API token (form body) and opens a server-side session (``console_session``
stores the SHA-256 of the session id) behind an HttpOnly, SameSite=Strict cookie, Secure
outside development; every form carries the session's CSRF token. Pages show pseudonymous
person ids only, each principal its own agency's data (docs/SECURITY.md §6); every page and
review is audited like the API (``api_audit``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from services.subsidy import holds
from services.subsidy.api import _budgets, mappings, person_state, read_budgets
from services.subsidy.config import SubsidySettings
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.rules import cny
from services.subsidy.engine.state import HoldStatus, PersonState
from services.subsidy.reviews import audit, hold_views
from services.subsidy.store import ConsoleSessionRow, DecisionRow, HoldReviewRow, HoldRow

COOKIE = "skills_console"
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:;"
                               " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True,
)
TEMPLATES.filters["cny"] = cny


class Session:
    def __init__(self, principal: auth.Principal, csrf: str) -> None:
        self.principal = principal
        self.csrf = csrf


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def routes(pool: asyncpg.Pool, settings: SubsidySettings, policies: PolicySet,
           sessions: async_sessionmaker[AsyncSession]) -> list[BaseRoute]:
    tokens = auth.token_table(settings.api_tokens, settings.agencies,
                              development=settings.development)

    def page(name: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
        html = TEMPLATES.get_template(name).render(
            who=session.principal if session else None, csrf=session.csrf if session else "",
            agencies=sorted(policies.agencies()), **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    async def session_of(request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        c = ConsoleSessionRow
        async with sessions() as session:
            row = (await session.exec(
                select(c.role, c.agency, c.principal, c.csrf)
                .where(c.id_hash == _digest(sid), col(c.expires_at) > func.now()))).first()
        if row is None:
            return None
        return Session(auth.Principal(row.role, row.agency, row.principal), row.csrf)

    async def form(request: Request, session: Session | None) -> dict[str, str] | None:
        """The posted form, if its CSRF token is the session's (None otherwise)."""
        if session is None:
            return None
        fields = {k: v[0] for k, v in urllib.parse.parse_qs(
            (await request.body()).decode("utf-8", "replace"), max_num_fields=10).items()}
        if not hmac.compare_digest(fields.get("csrf", ""), session.csrf):
            return None
        return fields

    def to_signin() -> Response:
        return RedirectResponse("/console/signin", status_code=303, headers=HEADERS)

    async def index(request: Request) -> Response:
        session = await session_of(request)
        return RedirectResponse("/console/holds" if session else "/console/signin",
                                status_code=303, headers=HEADERS)

    async def signin(request: Request) -> Response:
        if request.method == "GET":
            return page("signin.html", None)
        fields = {k: v[0] for k, v in urllib.parse.parse_qs(
            (await request.body()).decode("utf-8", "replace"), max_num_fields=5).items()}
        who = tokens.resolve(f"Bearer {fields.get('token', '').strip()}")
        if who is None or not fields.get("token", "").strip():
            return page("signin.html", None, 401, error="That token is not valid.")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        minutes = settings.console_session_minutes
        await pool.execute(
            "INSERT INTO console_session (id_hash, role, agency, principal, csrf, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))",
            _digest(sid), who.role, who.agency, who.name, csrf, minutes)
        await pool.execute("DELETE FROM console_session WHERE expires_at < now()")
        await audit(pool, who, "POST /console/signin", who.agency)
        response = RedirectResponse("/console/holds", status_code=303, headers=HEADERS)
        response.set_cookie(COOKIE, sid, max_age=minutes * 60, path="/console", httponly=True,
                            samesite="strict", secure=not settings.development)
        return response

    async def logout(request: Request) -> Response:
        session = await session_of(request)
        if await form(request, session) is None:
            return to_signin()
        await pool.execute("DELETE FROM console_session WHERE id_hash = $1",
                           _digest(request.cookies[COOKIE]))
        response = to_signin()
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict",
                               secure=not settings.development)
        return response

    def scope_of(request: Request, who: auth.Principal) -> str | None:
        """The agency a page is about: the principal's own, or the auditor's choice."""
        if who.agency is not None:
            return who.agency
        chosen = request.query_params.get("agency")
        return chosen if chosen in policies.agencies() else None

    async def holds_page(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return to_signin()
        who = session.principal
        agency = scope_of(request, who)
        scope = select(HoldRow) if agency is None else select(HoldRow).where(HoldRow.agency == agency)
        async with sessions() as db:
            rows = list(await db.exec(scope.where(HoldRow.status == "open")
                                      .order_by(col(HoldRow.held_at), col(HoldRow.grant_id)).limit(500)))
            ended = list(await db.exec(scope.where(HoldRow.status != "open")
                                       .order_by(col(HoldRow.ended_at).desc().nulls_last()).limit(50)))
            reviewed = set(await db.exec(select(HoldReviewRow.grant_id).where(
                col(HoldReviewRow.grant_id).in_([r.grant_id for r in rows]))))
            views, ended_views = await hold_views(db, rows), await hold_views(db, ended)
        await audit(pool, who, "GET /console/holds", agency)
        return page("holds.html", session, agency=agency, open=views, ended=ended_views,
                    reviewed=reviewed, message=request.query_params.get("message", "")[:200])

    async def review(request: Request) -> Response:
        session = await session_of(request)
        fields = await form(request, session)
        if session is None or fields is None:
            return page("error.html", session, 403, error="The form has expired: sign in again.")
        who, grant_id = session.principal, request.path_params["grant_id"]
        decision, note = fields.get("decision", ""), fields.get("note", "")[:2000]
        if decision not in ("release", "deny"):
            return page("error.html", session, 422, error="Choose release or deny.")
        try:
            accepted = await holds.submit_review(
                pool, settings.topic_prefix, grant_id=grant_id, decision=decision, note=note,
                reviewer=who.name, may_review=who.may_review, now=dt.datetime.now(dt.UTC))
        except holds.Refused as refused:
            await audit(pool, who, f"POST /console/holds/{{grant_id}}/review {refused.status}", grant_id)
            return page("error.html", session, refused.status, error=refused.detail)
        await audit(pool, who, f"POST /console/holds/{{grant_id}}/review {decision}", grant_id)
        message = f"Review {accepted['review_id']} recorded: {decision} {grant_id}"
        return RedirectResponse("/console/holds?" + urllib.parse.urlencode({"message": message}),
                                status_code=303, headers=HEADERS)

    async def person(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return to_signin()
        who, pid = session.principal, request.path_params["person_id"]
        async with sessions() as db:
            state = await person_state(db, pid)
        record = _record(state, who) if state is not None else None
        if record is None or not (record["decisions"] or record["enrollments"]):
            return page("error.html", session, 404, error="No record of this person in your agency.")
        await audit(pool, who, "GET /console/persons/{person_id}", pid)
        return page("person.html", session, person_id=pid, **record)

    async def agency_page(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return to_signin()
        who, agency = session.principal, request.path_params["agency"]
        if not who.sees(agency) or agency not in policies.agencies():
            return page("error.html", session, 403, error="Not your agency.")
        try:
            year = int(request.query_params.get("year", dt.date.today().year))
            first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
        except ValueError:
            return page("error.html", session, 422, error="The year is a number such as 2026.")
        fen = sa.cast(func.sum(DecisionRow.amount_fen), sa.BigInteger).label("fen")
        month = sa.cast(sa.extract("month", DecisionRow.decided_on), sa.Integer).label("month")
        in_year = (DecisionRow.agency == agency, col(DecisionRow.decided_on).between(first, last))
        async with sessions() as db:
            ledger = await read_budgets(db)
            held = {r.fund: (r.n, r.fen) for r in await db.exec(
                select(HoldRow.fund, func.count().label("n"),
                       sa.cast(func.sum(HoldRow.amount_fen), sa.BigInteger).label("fen"))
                .where(HoldRow.agency == agency, HoldRow.status == "open",
                       sa.extract("year", HoldRow.held_on) == year)
                .group_by(col(HoldRow.fund)))}
            months = await mappings(db, select(
                DecisionRow.fund, month, fen,
                func.count().filter(DecisionRow.event_type == "granted").label("grants"),
            ).where(*in_year, col(DecisionRow.event_type).in_(("granted", "reversed")))
             .group_by(col(DecisionRow.fund), month))
            totals = await mappings(db, select(DecisionRow.event_type, func.count().label("n"), fen)
                                    .where(*in_year).group_by(col(DecisionRow.event_type)))
        budgets = _budgets(policies, ledger, agency, year)
        await audit(pool, who, "GET /console/agencies/{agency}", agency)
        return page("agency.html", session, agency=agency, year=year,
                    funds=_burn_down(budgets, held, months),
                    totals={r["event_type"]: (r["n"], r["fen"]) for r in totals})

    return [
        Route("/console", index),
        Route("/console/", index),
        Route("/console/signin", signin, methods=["GET", "POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/holds", holds_page),
        Route("/console/holds/{grant_id}/review", review, methods=["POST"]),
        Route("/console/persons/{person_id}", person),
        Route("/console/agencies/{agency}", agency_page),
    ]


def _record(state: PersonState, who: auth.Principal) -> dict[str, Any]:
    """Every decision of the person the principal may see, with its explanation, and every
    flag and hold beside them (POLICY §6: the record shows the flag beside earlier grants)."""
    decisions: list[dict[str, Any]] = []
    for grant in state.grant_log:
        if not who.sees(grant.event.agency):
            continue
        if grant.hold is None:
            status = "paid" if grant.live else "reversed"
        elif grant.hold.status is HoldStatus.RELEASED:
            status = "released" if grant.live else "reversed"
        else:
            status = {HoldStatus.OPEN: "held", HoldStatus.DENIED: "denied",
                      HoldStatus.VOIDED: "voided"}[grant.hold.status]
        decisions.append({"kind": "grant", "status": status, "grant_id": grant.grant_id,
                          "rule": grant.event.rule, "stage": grant.event.stage.value,
                          "amount_fen": grant.event.amount_fen, "agency": grant.event.agency,
                          "enrollment_ref": grant.event.basis.enrollment_ref,
                          "checks": list(grant.hold.checks) if grant.hold else [],
                          "explanation": grant.event.explanation})
    for rejection in state.rejection_log:
        if who.sees(rejection.agency):
            decisions.append({"kind": "rejection", "status": rejection.reason.value,
                              "grant_id": rejection.grant_id, "rule": rejection.rule, "stage": "",
                              "amount_fen": 0, "agency": rejection.agency,
                              "enrollment_ref": rejection.basis.enrollment_ref, "checks": [],
                              "explanation": rejection.explanation})
    for reversal in state.reversal_log:
        if who.sees(reversal.agency):
            decisions.append({"kind": "reversal", "status": reversal.reason.value,
                              "grant_id": reversal.grant_id, "rule": reversal.rule, "stage": "",
                              "amount_fen": -reversal.amount_fen, "agency": reversal.agency,
                              "enrollment_ref": None, "checks": [],
                              "explanation": reversal.explanation})
    enrollments = [
        {"ref": ref, "agency": e.accepted.agency, "institution_id": e.accepted.institution_id,
         "course": f"{e.accepted.course.training_type} {e.accepted.course.occupation_code} "
                   f"{e.accepted.course.occupation_name} {e.accepted.course.level or ''}".strip(),
         "planned": f"{e.accepted.course.start_date} .. {e.accepted.course.end_date}",
         "status": e.status.value, "days": e.days_attended, "hours": e.hours_attended,
         "flags": state.flags.get(ref, [])}
        for ref, e in state.enrollments.items() if who.sees(e.accepted.agency)
    ]
    return {"decisions": decisions, "enrollments": enrollments}


def _burn_down(budgets: dict[str, dict[str, int | None]], held: dict[str, tuple[int, int]],
               months: list[Any]) -> list[dict[str, Any]]:
    """Per fund: budget, paid by the end of each month (grants less reversals), held, left."""
    by_fund: dict[str, dict[int, int]] = {}
    for r in months:
        by_fund.setdefault(r["fund"], {})[r["month"]] = int(r["fen"])
    funds = []
    for fund in sorted(set(budgets) | set(by_fund) | set(held)):
        budget = budgets.get(fund, {}).get("budget_fen")
        paid, rows = 0, []
        for month in range(1, 13):
            paid += by_fund.get(fund, {}).get(month, 0)
            rows.append({"month": month, "paid_fen": paid,
                         "left_fen": None if budget is None else budget - paid,
                         "share": None if not budget else min(1.0, max(0.0, paid / budget))})
        count, held_fen = held.get(fund, (0, 0))
        funds.append({"fund": fund, "budget_fen": budget, "paid_fen": paid, "held": count,
                      "held_fen": held_fen or 0,
                      "committed_fen": budgets.get(fund, {}).get("committed_fen"),
                      "remaining_fen": budgets.get(fund, {}).get("remaining_fen"),
                      "months": rows})
    return funds
