"""The one adapter between the subsidy engine and the event contract.

In: the engine's facts are read, attribute by attribute, from the payload models that
``shared.contract.envelope.decode`` has already validated (no second parse of dicts, no
re-validation). Out: the engine's decisions become the contract's output models
(``shared.contract.events``), which the handler publishes with ``Outbox.publish`` like every
other service. Each output model is validated when it is built (tests/unit/subsidy/
test_contract_adapter.py and tests/integration/test_subsidy_output_bytes.py cover every kind);
its JSON is byte for byte what the engine's outputs published before the models carried them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from shared.contract import events as ev
from shared.contract.envelope import CloudEvent
from services.subsidy.engine import facts as f
from services.subsidy.engine import outputs as o


class FactError(ValueError):
    """An event the engine has no fact for (the caller dead-letters it)."""


# ---- in: contract models -> facts ---------------------------------------------------------


def fact_of(event: CloudEvent) -> f.Fact | None:
    """The fact of one decoded internal event; None for one without subsidy effect
    (EnrollmentRejected). Raises FactError for a payload the engine has no fact for."""
    return fact_from_model(event.data, event.agencyid, event.time)


def fact_from_model(data: ev.Payload, agency: str, time: dt.datetime) -> f.Fact | None:
    """Like :func:`fact_of`, for a payload model and its envelope's agency and time."""
    kind = type(data)
    if kind is ev.EnrollmentRejected:
        return None
    build = _BUILDERS.get(kind)
    if build is None:
        raise FactError(f"no subsidy fact for {kind.__name__}")
    return build(data, agency, time)


def _employer(e: ev.Employer | None) -> f.Employer | None:
    if e is None:
        return None
    return f.Employer(e.id, e.insured, e.hardship_certified, e.sector, e.employee_model_domestic)


def _course(c: ev.Course) -> f.Course:
    return f.Course(c.course_id, c.occupation_code, c.occupation_name, c.level, c.training_type,
                    c.planned_hours, c.start_date, c.end_date, c.project_based, c.program_years)


def _accepted(d: ev.EnrollmentAccepted, agency: str, time: dt.datetime) -> f.EnrollmentAccepted:
    return f.EnrollmentAccepted(
        enrollment_ref=d.enrollment_ref,
        person_id=d.person_id,
        agency=agency,
        institution_id=d.institution_id,
        categories=tuple(d.categories),
        rural=bool(d.rural),
        hukou_agency=d.hukou_agency,
        insured_months=d.insured_months or 0,
        hired_on=d.hired_on,
        employer=_employer(d.employer),
        course=_course(d.course),
        fee=f.Fee(d.fee.amount_fen, d.fee.payer),
        accepted_on=d.accepted_on,
    )


def _completed(d: ev.TrainingCompleted, agency: str, time: dt.datetime) -> f.TrainingCompleted:
    # Whole hours, rounded down: every threshold (min_hours) is a whole number, and
    # floor(h) >= n exactly when h >= n for a whole n, so no decision changes.
    return f.TrainingCompleted(d.enrollment_ref, d.person_id, math.floor(d.hours_attended),
                               d.days_attended, d.completed_on)


def _withdrawn(d: ev.EnrollmentWithdrawn, agency: str, time: dt.datetime) -> f.EnrollmentWithdrawn:
    return f.EnrollmentWithdrawn(d.enrollment_ref, d.person_id, d.withdrawn_on, d.days_attended)


def _month(d: ev.WorkTrainingMonthAccepted, agency: str, time: dt.datetime) -> f.WorkMonthAccepted:
    return f.WorkMonthAccepted(d.enrollment_ref, d.person_id, d.month, d.wages_fen, d.month_index)


def _assessment(passed: bool) -> Callable[[Any, str, dt.datetime], f.AssessmentResult]:
    def build(d: ev.AssessmentOutcome, agency: str, time: dt.datetime) -> f.AssessmentResult:
        return f.AssessmentResult(d.assessment_ref, d.person_id, d.enrollment_ref,
                                  d.occupation_code, d.level, d.certificate_kind, d.assessed_on,
                                  passed)

    return build


def _issued(d: ev.CertificateIssued, agency: str, time: dt.datetime) -> f.CertificateIssued:
    return f.CertificateIssued(d.certificate_id, d.assessment_ref, d.person_id, d.enrollment_ref,
                               d.occupation_code, d.level, d.certificate_kind, d.issued_on)


def _revoked(d: ev.CertificateRevoked, agency: str, time: dt.datetime) -> f.CertificateRevoked:
    return f.CertificateRevoked(d.certificate_id, d.person_id, d.revoked_on, d.reason)


def _flagged(d: ev.EnrollmentFlagged, agency: str, time: dt.datetime) -> f.EnrollmentFlagged:
    return f.EnrollmentFlagged(d.enrollment_ref, d.person_id, d.check, d.flagged_on, d.detail)


_INSTANT = TypeAdapter(dt.datetime)


def _reviewed(d: ev.HoldReviewed, agency: str, time: dt.datetime) -> f.HoldReviewed:
    # The engine keeps the instant as the contract's RFC 3339 text (as the model writes it).
    return f.HoldReviewed(d.grant_id, d.person_id, d.agency, d.decision, d.reviewer, d.note,
                          _INSTANT.dump_python(d.reviewed_at, mode="json"), d.review_id or "")


_BUILDERS: dict[type[ev.Payload], Callable[[Any, str, dt.datetime], f.Fact]] = {
    ev.EnrollmentAccepted: _accepted,
    ev.TrainingCompleted: _completed,
    ev.EnrollmentWithdrawn: _withdrawn,
    ev.WorkTrainingMonthAccepted: _month,
    ev.AssessmentPassed: _assessment(True),
    ev.AssessmentFailed: _assessment(False),
    ev.CertificateIssued: _issued,
    ev.CertificateRevoked: _revoked,
    ev.EnrollmentFlagged: _flagged,
    ev.HoldReviewed: _reviewed,
}


# ---- out: decisions -> contract models ----------------------------------------------------


def _basis(b: o.Basis) -> dict[str, Any]:
    return b.to_payload()


def _policy(p: o.PolicyRef) -> dict[str, Any]:
    return {"agency": p.agency, "version": p.version, "hash": p.hash}


def _granted(g: o.SubsidyGranted) -> dict[str, Any]:
    return {
        "grant_id": g.grant_id,
        "person_id": g.person_id,
        "agency": g.agency,
        "subsidy_type": g.subsidy_type,
        "stage": g.stage.value,
        "amount_fen": g.amount_fen,
        "payee": {"kind": g.payee_kind, "id": g.payee_id},
        "fund": g.fund,
        "policy": _policy(g.policy),
        "rule": g.rule,
        "basis": _basis(g.basis),
        "explanation": g.explanation,
    }


def data(output: o.Output) -> dict[str, Any]:
    """The JSON object of one engine output's payload, in the contract's field order: what
    :func:`payload` validates, and what the decision ledger and the query API show. Not
    validated itself (the unit tests' short person ids would not pass)."""
    if isinstance(output, o.SubsidyGranted):
        return _granted(output)
    if isinstance(output, o.SubsidyRejected):
        return {
            "person_id": output.person_id,
            "agency": output.agency,
            "subsidy_type": output.subsidy_type,
            "rule": output.rule,
            "basis": _basis(output.basis),
            "reason": output.reason.value,
            "explanation": output.explanation,
            "policy": _policy(output.policy),
            **({"grant_id": output.grant_id} if output.grant_id is not None else {}),
        }
    if isinstance(output, o.SubsidyReversed):
        return {
            "grant_id": output.grant_id,
            "person_id": output.person_id,
            "agency": output.agency,
            "amount_fen": output.amount_fen,
            "reason": output.reason.value,
            "explanation": output.explanation,
            "rule": output.rule,
        }
    if isinstance(output, o.SubsidyHeld):
        return {
            **_granted(output.grant),
            "hold": {"checks": list(output.checks), "enrollment_ref": output.enrollment_ref,
                     "held_on": output.held_on.isoformat()},
        }
    # The contract's `threshold` is a JSON number (0.8, 0.9, 1.0); it is a ratio, not money,
    # and it is exact in basis points alongside.
    return {
        "agency": output.agency,
        "fund": output.fund,
        "year": output.year,
        "budget_fen": output.budget_fen,
        "committed_fen": output.committed_fen,
        "threshold": output.threshold_bp / 10_000,
        "threshold_bp": output.threshold_bp,
    }


MODELS: dict[type[Any], type[ev.Payload]] = {
    o.SubsidyGranted: ev.SubsidyGranted,
    o.SubsidyRejected: ev.SubsidyRejected,
    o.SubsidyReversed: ev.SubsidyReversed,
    o.SubsidyHeld: ev.SubsidyHeld,
    o.BudgetThresholdReached: ev.BudgetThresholdReached,
}


def payload(output: o.Output) -> ev.Payload:
    """The contract model of one engine output, validated (a decision the contract would refuse
    fails its batch, as a database error would, rather than reach the topic)."""
    return MODELS[type(output)].model_validate(data(output))
