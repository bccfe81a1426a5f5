"""Review API of held grants (POLICY §6): the holds queue, one hold with its facts, reviews and
reviewers per agency, the review command, and the audit trail of who read and decided what.

Agency tokens and reviewers read their own agency's holds; only a ``reviewer`` of the hold's
agency may release or deny it; auditors read every agency's and decide nothing
(docs/SECURITY.md). Every route here writes a row to ``api_audit``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from shared.runtime.settings import ServiceSettings
from services.subsidy import holds, state_codec
from services.subsidy.engine.state import PersonState
from services.subsidy.store import ApiAuditRow, HoldReviewRow, HoldRow, PersonStateRow

MAX_NOTE = 2000
HOLD_COLUMNS = ("grant_id", "person_id", "agency", "rule", "stage", "amount_fen", "fund",
                "checks", "enrollment_ref", "held_on", "status", "held_at", "ended_at", "ended_by")


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def cell(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


async def audit(pool: asyncpg.Pool | asyncpg.Connection, who: auth.Principal, action: str,
                target: str | None) -> None:
    """Record who read or decided what (docs/SECURITY.md §5)."""
    await pool.execute(
        "INSERT INTO api_audit (role, agency, principal, action, target) VALUES ($1, $2, $3, $4, $5)",
        who.role, who.agency, who.name, action, target[:200] if target else None,
    )


def facts_of(state: PersonState, enrollment_ref: str, basis: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer looks at: the enrollment, its flags and the certificate the hold rests
    on (pseudonymous: the person's state holds no name or national id)."""
    enrollment = state.enrollments.get(enrollment_ref)
    found: dict[str, Any] = {"enrollment": None, "flags": [], "certificate": None}
    if enrollment is not None:
        course = enrollment.accepted.course
        found["enrollment"] = {
            "enrollment_ref": enrollment_ref, "agency": enrollment.accepted.agency,
            "institution_id": enrollment.accepted.institution_id, "course_id": course.course_id,
            "occupation_code": course.occupation_code, "occupation_name": course.occupation_name,
            "level": course.level, "training_type": course.training_type,
            "planned_hours": course.planned_hours, "start_date": course.start_date.isoformat(),
            "end_date": course.end_date.isoformat(), "status": enrollment.status.value,
            "hours_attended": enrollment.hours_attended,
            "days_attended": enrollment.days_attended,
            "closed_on": enrollment.closed_on.isoformat() if enrollment.closed_on else None,
            "accepted_on": enrollment.accepted.accepted_on.isoformat(),
        }
    found["flags"] = [{"check": f.check, "flagged_on": f.flagged_on.isoformat(), "detail": f.detail}
                      for f in state.flags.get(enrollment_ref, [])]
    certificate = state.certificates.get(basis.get("certificate_id") or "")
    if certificate is not None:
        issued = certificate.issued
        found["certificate"] = {
            "certificate_id": issued.certificate_id, "kind": issued.certificate_kind,
            "level": issued.level, "issued_on": issued.issued_on.isoformat(),
            "status": certificate.status.value}
    return found


def row(model: Any) -> dict[str, Any]:
    """A table row (model instance) as ``SELECT *`` gives it: every column, in table order."""
    return {c.name: getattr(model, c.name) for c in model.__table__.columns}


async def hold_views(session: AsyncSession, rows: list[HoldRow]) -> list[dict[str, Any]]:
    """Holds as the API and the console show them: the held payload (explanation included),
    checks, facts, age and the review, if any."""
    persons = sorted({r.person_id for r in rows})
    states = {
        person_id: state_codec.loads(state)
        for person_id, state in await session.exec(
            select(PersonStateRow.person_id, PersonStateRow.state)
            .where(col(PersonStateRow.person_id).in_(persons)))
    }
    reviews = {
        r.grant_id: {k: cell(v) for k, v in row(r).items()}
        for r in await session.exec(
            select(HoldReviewRow).where(col(HoldReviewRow.grant_id).in_([r.grant_id for r in rows])))
    }
    now = dt.datetime.now(dt.UTC)
    views = []
    for r in rows:
        payload = r.payload  # jsonb, decoded
        state = states.get(r.person_id) or PersonState.empty(r.person_id)
        grant = state.find_grant(r.grant_id)
        views.append({
            **{c: cell(getattr(r, c)) for c in HOLD_COLUMNS},
            "age_seconds": round((now - r.held_at).total_seconds()),
            "explanation": payload["explanation"], "payee": payload["payee"],
            "basis": payload["basis"], "policy": payload["policy"],
            "base_grant_id": grant.base_grant_id if grant else None,
            "facts": facts_of(state, r.enrollment_ref, payload["basis"]),
            "review": reviews.get(r.grant_id),
        })
    return views


def routes(pool: asyncpg.Pool, settings: ServiceSettings,
           sessions: async_sessionmaker[AsyncSession]) -> list[BaseRoute]:
    tokens = auth.parse_tokens(settings.api_tokens, settings.agencies)

    async def agency_holds(request: Request) -> Response:
        agency = request.path_params["agency"]
        who = auth.require_agency(request, agency)
        status = request.query_params.get("status", "open")
        if status not in ("open", "released", "denied", "voided", "all"):
            return _error(422, "invalid_status", "status is open, released, denied, voided or all")
        query = select(HoldRow).where(HoldRow.agency == agency)
        if status != "all":
            query = query.where(HoldRow.status == status)
        async with sessions() as session:
            rows = list(await session.exec(
                query.order_by(col(HoldRow.held_at), col(HoldRow.grant_id)).limit(1000)))
            views = await hold_views(session, rows)
        await audit(pool, who, "GET /agencies/{agency}/holds", agency)
        return JSONResponse({"agency": agency, "status": status, "holds": views})

    async def one_hold(request: Request) -> Response:
        who = auth.principal(request)
        grant_id = request.path_params["grant_id"]
        async with sessions() as session:
            found = await session.get(HoldRow, grant_id)
            if found is None:
                return _error(404, "not_found", f"no hold for grant {grant_id[:60]}")
            if not who.sees(found.agency):
                raise auth.Forbidden("this hold belongs to another agency")
            await audit(pool, who, "GET /holds/{grant_id}", grant_id)
            [view] = await hold_views(session, [found])
        return JSONResponse(view)

    async def review(request: Request) -> Response:
        who = auth.principal(request)
        if who.role != "reviewer":
            raise auth.Forbidden("only an agency's reviewer may release or deny a hold")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(422, "invalid_body", 'the body is JSON: {"decision": "release"|"deny", "note": "..."}')
        if not isinstance(body, dict) or body.get("decision") not in ("release", "deny"):
            return _error(422, "invalid_decision", "decision is release or deny")
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            return _error(422, "invalid_note", f"note is text of at most {MAX_NOTE} characters")
        grant_id = request.path_params["grant_id"]
        try:
            accepted = await submit(grant_id, body["decision"], note, who)
        except holds.Refused as refused:
            await audit(pool, who, f"POST /holds/{{grant_id}}/review {refused.status}", grant_id)
            return _error(refused.status, refused.code, refused.detail)
        return JSONResponse(accepted, status_code=202)

    async def submit(grant_id: str, decision: str, note: str, who: auth.Principal) -> dict[str, str]:
        accepted = await holds.submit_review(
            pool, settings.topic_prefix, grant_id=grant_id, decision=decision, note=note,
            reviewer=who.name, may_review=who.may_review, now=dt.datetime.now(dt.UTC))
        await audit(pool, who, f"POST /holds/{{grant_id}}/review {decision}", grant_id)
        return accepted

    async def agency_reviews(request: Request) -> Response:
        agency = request.path_params["agency"]
        who = auth.require_agency(request, agency)
        async with sessions() as session:
            rows = [{**row(review), "hold_status": status, "amount_fen": amount_fen, "rule": rule}
                    for review, status, amount_fen, rule in await session.exec(
                        select(HoldReviewRow, HoldRow.status, HoldRow.amount_fen, HoldRow.rule)
                        .join(HoldRow, col(HoldRow.grant_id) == HoldReviewRow.grant_id)
                        .where(HoldReviewRow.agency == agency)
                        .order_by(col(HoldReviewRow.reviewed_at).desc()).limit(1000))]
        await audit(pool, who, "GET /agencies/{agency}/reviews", agency)
        return JSONResponse({"agency": agency, "reviews": [
            {k: cell(v) for k, v in r.items()} for r in rows]})

    async def agency_reviewers(request: Request) -> Response:
        agency = request.path_params["agency"]
        who = auth.require_agency(request, agency)
        r = HoldReviewRow
        async with sessions() as session:
            counts = {c.reviewer: c._asdict() for c in await session.exec(
                select(r.reviewer, func.count().label("reviews"),
                       func.count().filter(r.decision == "release").label("released"),
                       func.count().filter(r.decision == "deny").label("denied"),
                       func.max(r.reviewed_at).label("last_review"))
                .where(r.agency == agency).group_by(col(r.reviewer)))}
        configured = sorted(p.name for p in tokens.values()
                            if p.role == "reviewer" and p.agency == agency)
        names = sorted(set(configured) | set(counts))
        await audit(pool, who, "GET /agencies/{agency}/reviewers", agency)
        return JSONResponse({"agency": agency, "reviewers": [
            {"name": n, "configured": n in configured, "reviews": counts.get(n, {}).get("reviews", 0),
             "released": counts.get(n, {}).get("released", 0),
             "denied": counts.get(n, {}).get("denied", 0),
             "last_review": cell(counts.get(n, {}).get("last_review"))} for n in names]})

    async def audit_trail(request: Request) -> Response:
        auth.require_auditor(request)
        async with sessions() as session:
            rows = [row(a) for a in await session.exec(
                select(ApiAuditRow).order_by(col(ApiAuditRow.seq).desc()).limit(1000))]
        return JSONResponse([{k: cell(v) for k, v in r.items()} for r in rows])

    return [
        Route("/agencies/{agency}/holds", agency_holds),
        Route("/agencies/{agency}/reviews", agency_reviews),
        Route("/agencies/{agency}/reviewers", agency_reviewers),
        Route("/holds/{grant_id}", one_hold),
        Route("/holds/{grant_id}/review", review, methods=["POST"]),
        Route("/audit", audit_trail),
    ]


