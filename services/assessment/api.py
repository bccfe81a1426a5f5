"""Query API of the assessment service: public certificate verification and a person's certificates.

Verification is public and carries no personal data; a person's certificates need a bearer
token, and an agency token sees the certificates of its own agency's assessments only (a person
without any answers 404, as an unknown one does).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from services.assessment.config import AssessmentSettings


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _verification(row: asyncpg.Record) -> dict[str, Any]:
    """What anyone holding a certificate id may learn: no person_id, no personal data."""
    return {
        "certificate_id": row["certificate_id"],
        "status": row["status"],
        "certificate_kind": row["certificate_kind"],
        "occupation_code": row["occupation_code"],
        "level": row["level"],
        "issued_on": _iso(row["issued_on"]),
        "revoked_on": _iso(row["revoked_on"]),
    }


def _certificate(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **_verification(row),
        "assessment_ref": row["assessment_ref"],
        "enrollment_ref": row["enrollment_ref"],
        "revoke_reason": row["revoke_reason"],
        "agency": row["agency"],
    }


def routes(pool: asyncpg.Pool, settings: AssessmentSettings) -> list[BaseRoute]:
    async def verify(request: Request) -> JSONResponse:
        row = await pool.fetchrow(
            "SELECT * FROM certificate WHERE certificate_id = $1", request.path_params["certificate_id"]
        )
        if row is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(_verification(row))

    async def person_certificates(request: Request) -> JSONResponse:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        # A certificate belongs to the agency of the assessment it was issued on.
        rows = await pool.fetch(
            "SELECT c.*, a.agency FROM certificate c JOIN assessment a USING (assessment_ref)"
            " WHERE c.person_id = $1 ORDER BY c.issued_on, c.certificate_id", pid
        )
        rows = [r for r in rows if who.sees(r["agency"])]
        if not rows:  # unknown, or no certificate of this agency: the same answer
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse({"person_id": pid, "certificates": [_certificate(r) for r in rows]})

    return [
        Route("/certificates/{certificate_id}", verify),
        Route("/persons/{person_id}/certificates", person_certificates),
    ]
