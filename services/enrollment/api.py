"""Query API of the enrollment service: the person's electronic training record (电子档案).

Every route needs a bearer token (shared.runtime.auth): an agency token reads its own
agency's enrollments only; an auditor's reads all (docs/SECURITY.md). What is not the asker's
answers exactly as what does not exist (404), so no answer tells an agency about another's.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.contract.identity import person_id
from shared.runtime import auth
from shared.runtime.http import json_body
from services.enrollment.config import EnrollmentSettings
from services.enrollment.store import (
    AttendanceRow,
    EnrollmentRejectionRow,
    EnrollmentRow,
    TraineeRow,
    WorkMonthRow,
)

NOT_FOUND = {"error": "not_found"}
# What /openapi.json says beyond the routes' paths.
OPENAPI: dict[str, dict[str, Any]] = {
    "/persons/lookup": {
        "summary": "national id -> person_id, for tokens granted lookups; audited, rate-limited",
        "body": {"type": "object", "required": ["national_id"],
                 "properties": {"national_id": {"type": "string"}}},
    },
}


def _enrollment(row: EnrollmentRow, recorded_days: int, work_months: int) -> dict[str, Any]:
    accepted = row.accepted  # jsonb, decoded
    return {
        "enrollment_ref": row.enrollment_ref,
        "agency": row.agency,
        "person_id": row.person_id,
        "institution_id": row.institution_id,
        "course": accepted["course"],
        "categories": accepted["categories"],
        "accepted_on": accepted["accepted_on"],
        "status": row.status,
        "closed_on": row.closed_on.isoformat() if row.closed_on else None,
        "hours_attended": float(row.hours_attended) if row.hours_attended is not None else None,
        "days_attended": row.days_attended,
        "attendance_days_recorded": recorded_days,
        "work_months": work_months,
    }


# An enrollment with the number of attendance days and work months recorded for it.
QUERY = select(
    EnrollmentRow,
    select(func.count()).where(AttendanceRow.enrollment_ref == EnrollmentRow.enrollment_ref)
    .scalar_subquery().label("recorded_days"),
    select(func.count()).where(WorkMonthRow.enrollment_ref == EnrollmentRow.enrollment_ref)
    .scalar_subquery().label("work_months"),
)


def routes(pool: asyncpg.Pool, settings: EnrollmentSettings,
           sessions: async_sessionmaker[AsyncSession]) -> list[BaseRoute]:
    async def get_enrollment(request: Request) -> JSONResponse:
        who = auth.principal(request)
        async with sessions() as session:
            row = (await session.exec(
                QUERY.where(EnrollmentRow.enrollment_ref == request.path_params["ref"]))).first()
        if row is None or not who.sees(row[0].agency):
            return JSONResponse(NOT_FOUND, status_code=404)  # another agency's: as if absent
        return JSONResponse(_enrollment(*row))

    async def person_record(request: Request) -> JSONResponse:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        async with sessions() as session:
            rows = list(await session.exec(
                QUERY.where(EnrollmentRow.person_id == pid)
                .order_by(col(EnrollmentRow.start_date), col(EnrollmentRow.enrollment_ref))))
            rejections = [r._asdict() for r in await session.exec(
                select(EnrollmentRejectionRow.enrollment_ref, EnrollmentRejectionRow.agency,
                       EnrollmentRejectionRow.reason, EnrollmentRejectionRow.detail)
                .where(EnrollmentRejectionRow.person_id == pid))]
        if not who.auditor:
            # An agency sees the person only through its own enrollments and rejections
            # (rejections stored before their agency was recorded carry none: auditors only).
            rows = [r for r in rows if who.sees(r[0].agency)]
            rejections = [r for r in rejections if r["agency"] is not None and who.sees(r["agency"])]
        if not rows and not rejections:
            return JSONResponse(NOT_FOUND, status_code=404)  # unknown, or not in this agency
        return JSONResponse({
            "person_id": pid,
            "enrollments": [_enrollment(*r) for r in rows],
            "rejections": rejections,
        })

    limiter = auth.RateLimiter(settings.lookup_rate_per_minute)

    async def audit(who: auth.Principal, pid: str | None, outcome: str) -> None:
        await pool.execute(
            "INSERT INTO lookup_audit (role, agency, token, person_id, outcome) VALUES ($1, $2, $3, $4, $5)",
            who.role, who.agency, who.token, pid, outcome,
        )

    async def lookup(request: Request) -> JSONResponse:
        # The national id travels in the body, never in a URL (URLs end up in logs); only
        # tokens granted lookups may ask, each at most LOOKUP_RATE_PER_MINUTE times a minute,
        # and every question is recorded with the person_id, never the national id.
        who = auth.require_lookup(request)
        wait = limiter.allow(who.token)
        if wait is not None:
            await audit(who, None, "rate_limited")
            return JSONResponse(
                {"error": "rate_limited", "detail": "too many lookups; try again later"},
                status_code=429, headers={"retry-after": str(max(1, round(wait)))},
            )
        body = await json_body(request)
        try:
            pid = person_id(str(body["national_id"]), settings.person_id_secret)
        except (ValueError, KeyError, TypeError):
            await audit(who, None, "invalid")
            return JSONResponse({"error": "invalid_national_id"}, status_code=422)
        async with sessions() as session:
            if who.auditor:
                known = (await session.exec(
                    select(TraineeRow.person_id).where(TraineeRow.person_id == pid))).first()
            else:
                known = (await session.exec(
                    select(EnrollmentRow.person_id)
                    .where(EnrollmentRow.person_id == pid, EnrollmentRow.agency == who.agency)
                    .limit(1))).first()
        await audit(who, pid, "found" if known else "not_found")
        return JSONResponse({"person_id": pid, "known": bool(known)})

    return [
        Route("/enrollments/{ref:path}", get_enrollment),
        Route("/persons/{person_id}/record", person_record),
        Route("/persons/lookup", lookup, methods=["POST"]),
    ]
