"""Query API of the enrollment service: the person's electronic training record (电子档案).

Every route needs a bearer token (shared.runtime.auth): an agency token reads its own
agency's enrollments only; an auditor's reads all (docs/SECURITY.md). What is not the asker's
answers exactly as what does not exist (404), so no answer tells an agency about another's.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.contract.identity import person_id
from shared.runtime import auth
from shared.runtime.http import json_body
from services.enrollment.config import EnrollmentSettings

NOT_FOUND = {"error": "not_found"}
# What /openapi.json says beyond the routes' paths.
OPENAPI: dict[str, dict[str, Any]] = {
    "/persons/lookup": {
        "summary": "national id -> person_id, for tokens granted lookups; audited, rate-limited",
        "body": {"type": "object", "required": ["national_id"],
                 "properties": {"national_id": {"type": "string"}}},
    },
}


def _enrollment(row: asyncpg.Record) -> dict[str, Any]:
    accepted = orjson.loads(row["accepted"])
    return {
        "enrollment_ref": row["enrollment_ref"],
        "agency": row["agency"],
        "person_id": row["person_id"],
        "institution_id": row["institution_id"],
        "course": accepted["course"],
        "categories": accepted["categories"],
        "accepted_on": accepted["accepted_on"],
        "status": row["status"],
        "closed_on": row["closed_on"].isoformat() if row["closed_on"] else None,
        "hours_attended": float(row["hours_attended"]) if row["hours_attended"] is not None else None,
        "days_attended": row["days_attended"],
        "attendance_days_recorded": row["recorded_days"],
        "work_months": row["work_months"],
    }


QUERY = (
    "SELECT e.*, (SELECT count(*) FROM attendance a WHERE a.enrollment_ref = e.enrollment_ref)"
    " AS recorded_days, (SELECT count(*) FROM work_month m"
    " WHERE m.enrollment_ref = e.enrollment_ref) AS work_months FROM enrollment e "
)


def routes(pool: asyncpg.Pool, settings: EnrollmentSettings) -> list[BaseRoute]:
    async def get_enrollment(request: Request) -> JSONResponse:
        who = auth.principal(request)
        row = await pool.fetchrow(QUERY + "WHERE e.enrollment_ref = $1", request.path_params["ref"])
        if row is None or not who.sees(row["agency"]):
            return JSONResponse(NOT_FOUND, status_code=404)  # another agency's: as if absent
        return JSONResponse(_enrollment(row))

    async def person_record(request: Request) -> JSONResponse:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        rows = await pool.fetch(QUERY + "WHERE e.person_id = $1 ORDER BY e.start_date, e.enrollment_ref", pid)
        rejections = await pool.fetch(
            "SELECT enrollment_ref, agency, reason, detail FROM enrollment_rejection"
            " WHERE person_id = $1",
            pid,
        )
        if not who.auditor:
            # An agency sees the person only through its own enrollments and rejections
            # (rejections stored before migration 0002 carry no agency: auditors only).
            rows = [r for r in rows if who.sees(r["agency"])]
            rejections = [r for r in rejections if r["agency"] is not None and who.sees(r["agency"])]
        if not rows and not rejections:
            return JSONResponse(NOT_FOUND, status_code=404)  # unknown, or not in this agency
        return JSONResponse({
            "person_id": pid,
            "enrollments": [_enrollment(r) for r in rows],
            "rejections": [dict(r) for r in rejections],
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
        if who.auditor:
            known = await pool.fetchval("SELECT 1 FROM trainee WHERE person_id = $1", pid)
        else:
            known = await pool.fetchval(
                "SELECT 1 FROM enrollment WHERE person_id = $1 AND agency = $2 LIMIT 1", pid, who.agency
            )
        await audit(who, pid, "found" if known else "not_found")
        return JSONResponse({"person_id": pid, "known": bool(known)})

    return [
        Route("/enrollments/{ref:path}", get_enrollment),
        Route("/persons/{person_id}/record", person_record),
        Route("/persons/lookup", lookup, methods=["POST"]),
    ]
