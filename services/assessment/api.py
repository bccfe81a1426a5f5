"""Query API of the assessment service: public certificate verification and a person's certificates.

Verification is public and carries no personal data; a person's certificates need a bearer
token, and an agency token sees the certificates of its own agency's assessments only (a person
without any answers 404, as an unknown one does).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.runtime import auth
from services.assessment.config import AssessmentSettings
from services.assessment.store import AssessmentRow, CertificateRow


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _verification(row: CertificateRow) -> dict[str, Any]:
    """What anyone holding a certificate id may learn: no person_id, no personal data."""
    return {
        "certificate_id": row.certificate_id,
        "status": row.status,
        "certificate_kind": row.certificate_kind,
        "occupation_code": row.occupation_code,
        "level": row.level,
        "issued_on": _iso(row.issued_on),
        "revoked_on": _iso(row.revoked_on),
    }


def _certificate(row: CertificateRow, agency: str) -> dict[str, Any]:
    return {
        **_verification(row),
        "assessment_ref": row.assessment_ref,
        "enrollment_ref": row.enrollment_ref,
        "revoke_reason": row.revoke_reason,
        "agency": agency,
    }


def routes(pool: asyncpg.Pool, settings: AssessmentSettings,
           sessions: async_sessionmaker[AsyncSession]) -> list[BaseRoute]:
    async def verify(request: Request) -> JSONResponse:
        async with sessions() as session:
            row = await session.get(CertificateRow, request.path_params["certificate_id"])
        if row is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse(_verification(row))

    async def person_certificates(request: Request) -> JSONResponse:
        who = auth.principal(request)
        pid = request.path_params["person_id"]
        # A certificate belongs to the agency of the assessment it was issued on.
        query = (
            select(CertificateRow, AssessmentRow.agency)
            .join(AssessmentRow, col(AssessmentRow.assessment_ref) == CertificateRow.assessment_ref)
            .where(CertificateRow.person_id == pid)
            .order_by(col(CertificateRow.issued_on), col(CertificateRow.certificate_id))
        )
        async with sessions() as session:
            rows = [(c, agency) for c, agency in await session.exec(query) if who.sees(agency)]
        if not rows:  # unknown, or no certificate of this agency: the same answer
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse({"person_id": pid,
                             "certificates": [_certificate(c, agency) for c, agency in rows]})

    return [
        Route("/certificates/{certificate_id}", verify),
        Route("/persons/{person_id}/certificates", person_certificates),
    ]
