"""Query API of the enrollment service: the person's electronic training record (电子档案).

Every route needs a bearer token (shared.runtime.auth): an agency token reads its own
agency's enrollments only; an auditor's reads all (docs/SECURITY.md).
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
from services.enrollment.config import EnrollmentSettings


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
        if row is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        if not who.sees(row["agency"]):
            raise auth.Forbidden("this enrollment belongs to another agency")
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
        if not rows and not rejections:
            return JSONResponse({"error": "not_found"}, status_code=404)
        if not who.auditor:
            # An agency sees the person only through its own enrollments and rejections
            # (rejections stored before migration 0002 carry no agency: auditors only).
            rows = [r for r in rows if who.sees(r["agency"])]
            rejections = [r for r in rejections if r["agency"] is not None and who.sees(r["agency"])]
            if not rows and not rejections:
                raise auth.Forbidden("this person has no record in your agency")
        return JSONResponse({
            "person_id": pid,
            "enrollments": [_enrollment(r) for r in rows],
            "rejections": [dict(r) for r in rejections],
        })

    async def lookup(request: Request) -> JSONResponse:
        # The national id travels in the body, never in a URL (URLs end up in logs).
        who = auth.principal(request)
        try:
            body = await request.json()
            pid = person_id(str(body["national_id"]), settings.person_id_secret)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "invalid_national_id"}, status_code=422)
        if who.auditor:
            known = await pool.fetchval("SELECT 1 FROM trainee WHERE person_id = $1", pid)
        else:
            known = await pool.fetchval(
                "SELECT 1 FROM enrollment WHERE person_id = $1 AND agency = $2 LIMIT 1", pid, who.agency
            )
        return JSONResponse({"person_id": pid, "known": bool(known)})

    return [
        Route("/enrollments/{ref:path}", get_enrollment),
        Route("/persons/{person_id}/record", person_record),
        Route("/persons/lookup", lookup, methods=["POST"]),
    ]
