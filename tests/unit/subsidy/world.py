"""A scripted world for engine tests: builds contract event payloads, validates them with the
contract's models and runs them through decide (facts from the models, as the service does)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

from shared.contract.events import TOPIC_TYPES
from services.subsidy.contract import fact_from_model
from services.subsidy.engine.domain import (
    BudgetLedger,
    BudgetThresholdReached,
    Fact,
    Output,
    PersonState,
    SubsidyGranted,
    SubsidyHeld,
    SubsidyRejected,
    SubsidyReversed,
    decide,
)
from services.subsidy.engine.policy import PolicySet
from services.subsidy.policy_files import load_policy_dir

POLICY_DIR = Path(__file__).parents[3] / "services" / "subsidy" / "policies"
DEFAULT_POLICIES = load_policy_dir(POLICY_DIR)
ENR = "skills.enrollment."
ASM = "skills.assessment."
MODELS = {name: model for types in TOPIC_TYPES.values() for name, model in types.items()
          if not name.startswith(("skills.training.", "skills.assessment.Assessment"
                                  "ResultRecorded"))}
MODELS[ASM + "CertificateRevoked.v1"] = TOPIC_TYPES["skills.assessment.events"][
    ASM + "CertificateRevoked.v1"]
# The contract's person ids are p_ and 32 hex digits; these tests name persons p_1, p_2...:
# a payload is validated with a well-formed stand-in, then carries the test's own name.
STAND_IN = "p_" + "0" * 32


def employer(id: str = "EMP-1", *, insured: bool = True, hardship: bool = False,
             sector: str | None = None, domestic: bool = False) -> dict[str, Any]:
    return {"id": id, "insured": insured, "hardship_certified": hardship, "sector": sector,
            "employee_model_domestic": domestic}


def summary(outputs: list[Output]) -> list[tuple[Any, ...]]:
    """Outputs as short tuples: (kind, rule, stage or reason, amount_fen, payee kind)."""
    rows: list[tuple[Any, ...]] = []
    for o in outputs:
        if isinstance(o, SubsidyGranted):
            rows.append(("granted", o.rule, o.stage.value, o.amount_fen, o.payee_kind))
        elif isinstance(o, SubsidyHeld):
            rows.append(("held", o.grant.rule, o.grant.stage.value, o.grant.amount_fen,
                         o.grant.payee_kind))
        elif isinstance(o, SubsidyRejected):
            rows.append(("rejected", o.rule, o.reason.value))
        elif isinstance(o, SubsidyReversed):
            rows.append(("reversed", o.rule, o.reason.value, o.amount_fen))
        else:
            assert isinstance(o, BudgetThresholdReached)
            rows.append(("threshold", o.fund, o.threshold_bp))
    return rows


class World:
    """Facts for one or more persons, decided in the order the test sends them."""

    def __init__(self, policies: PolicySet = DEFAULT_POLICIES,
                 budgets: BudgetLedger | None = None, *, record_only: bool = False) -> None:
        self.policies = policies
        self.record_only = record_only
        self.budgets = budgets or BudgetLedger()
        self.states: dict[str, PersonState] = {}
        self.outputs: list[Output] = []
        self.facts: list[Fact] = []
        self._ids = itertools.count(1)
        self.enrollments: dict[str, dict[str, Any]] = {}

    def send(self, event_type: str, data: dict[str, Any], agency: str = "suqian",
             time: str = "2026-01-01T09:00:00+08:00") -> list[Output]:
        payload = MODELS[event_type].model_validate({**data, "person_id": STAND_IN})
        payload = payload.model_copy(update={"person_id": data["person_id"]})
        fact = fact_from_model(payload, agency, dt.datetime.fromisoformat(time))
        assert fact is not None
        return self.apply(fact)

    def apply(self, fact: Fact) -> list[Output]:
        self.facts.append(fact)
        if self.record_only:
            return []
        state = self.states.get(fact.person_id) or PersonState.empty(fact.person_id)
        self.states[fact.person_id], outputs = decide(self.policies, state, fact, self.budgets)
        self.outputs.extend(outputs)
        return outputs

    def state(self, person: str = "p_1") -> PersonState:
        return self.states[person]

    def enroll(self, agency: str, *, person: str = "p_1", ref: str | None = None,
               categories: tuple[str, ...] = (), rural: bool | None = None,
               insured_months: int | None = None, hired_on: str | None = None,
               employer: dict[str, Any] | None = None, occupation: str = "6-31-01-03",
               level: str | None = "intermediate", training_type: str = "skill_upgrade",
               start: str = "2026-03-01", end: str | None = None,
               project_based: bool | None = None, program_years: int | None = None,
               fee: int = 150000, payer: str = "person", accepted_on: str = "2026-03-01",
               institution: str = "INST-1") -> str:
        ref = ref or f"{institution}/2026/{next(self._ids):06d}"
        end = end or max(start, "2026-03-20")  # a course ends on or after its start
        data: dict[str, Any] = {
            "enrollment_ref": ref, "person_id": person, "institution_id": institution,
            "categories": list(categories), "hukou_agency": agency, "employer": employer,
            "course": {"course_id": "C-1", "occupation_code": occupation,
                       "occupation_name": "电工", "level": level, "training_type": training_type,
                       "planned_hours": 80, "start_date": start, "end_date": end,
                       "project_based": project_based or False, "program_years": program_years},
            "fee": {"amount_fen": fee, "payer": payer}, "accepted_on": accepted_on,
        }
        for key, value in (("rural", rural), ("insured_months", insured_months),
                           ("hired_on", hired_on)):
            if value is not None:
                data[key] = value
        self.enrollments[ref] = data
        self.last_outputs = self.send(ENR + "EnrollmentAccepted.v1", data, agency,
                                      f"{accepted_on}T09:00:00+08:00")
        return ref

    def complete(self, ref: str, *, days: int = 10, hours: int = 80,
                 on: str = "2026-03-20") -> list[Output]:
        data = self.enrollments[ref]
        return self.send(ENR + "TrainingCompleted.v1", {
            "enrollment_ref": ref, "person_id": data["person_id"], "course": data["course"],
            "hours_attended": hours, "days_attended": days, "attendance_rate": 1,
            "completed_on": on})

    def withdraw(self, ref: str, *, on: str = "2026-03-10", days: int = 3) -> list[Output]:
        data = self.enrollments[ref]
        return self.send(ENR + "EnrollmentWithdrawn.v1", {
            "enrollment_ref": ref, "person_id": data["person_id"], "withdrawn_on": on,
            "days_attended": days})

    def month(self, ref: str, month: str, index: int, wages: int = 400000) -> list[Output]:
        data = self.enrollments[ref]
        return self.send(ENR + "WorkTrainingMonthAccepted.v1", {
            "enrollment_ref": ref, "person_id": data["person_id"], "month": month,
            "wages_fen": wages, "month_index": index})

    def _assessment(self, ref: str | None, person: str, occupation: str | None,
                    level: str | None, kind: str, on: str, linked: bool) -> dict[str, Any]:
        data = self.enrollments.get(ref or "", {})
        course = data.get("course", {})
        return {
            "assessment_ref": f"EV-1/{next(self._ids)}", "person_id": data.get("person_id", person),
            "enrollment_ref": ref if linked else None,
            "occupation_code": occupation or course.get("occupation_code"),
            "level": level if level != "course" else course.get("level"),
            "certificate_kind": kind, "assessed_on": on,
        }

    def certify(self, ref: str | None, *, kind: str = "skill_level", level: str | None = "course",
                on: str = "2026-03-25", cert_id: str | None = None, person: str = "p_1",
                occupation: str | None = None, linked: bool = True) -> list[Output]:
        """An AssessmentPassed followed by its CertificateIssued, as the assessment service emits."""
        passed = self._assessment(ref, person, occupation, level, kind, on, linked)
        outputs = self.send(ASM + "AssessmentPassed.v1", passed)
        cert = dict(passed, certificate_id=cert_id or f"CERT-{next(self._ids)}", issued_on=on)
        del cert["assessed_on"]
        self.last_certificate = cert["certificate_id"]
        return outputs + self.send(ASM + "CertificateIssued.v1", cert)

    def fail(self, ref: str, *, kind: str = "skill_level", on: str = "2026-03-25") -> list[Output]:
        data = self._assessment(ref, "p_1", None, "course", kind, on, True)
        return self.send(ASM + "AssessmentFailed.v1", data)

    def revoke(self, cert_id: str, *, person: str = "p_1", on: str = "2026-06-01") -> list[Output]:
        return self.send(ASM + "CertificateRevoked.v1", {
            "certificate_id": cert_id, "person_id": person, "revoked_on": on,
            "reason": "fraud: attendance falsified"})

    def flag(self, ref: str, *, check: str = "daily_hours_exceeded", on: str = "2026-03-05",
             person: str = "p_1") -> list[Output]:
        """An EnrollmentFlagged (POLICY §6), as the enrollment service emits it."""
        data = self.enrollments.get(ref, {"person_id": person})
        return self.send(ENR + "EnrollmentFlagged.v1", {
            "enrollment_ref": ref, "person_id": data["person_id"], "check": check,
            "detail": "13 hours attended on 2026-03-05 over 2 enrollments (more than 12)",
            "flagged_on": on})

    def review(self, grant_id: str, decision: str, *, agency: str | None = None,
               person: str = "p_1", review_id: str | None = None,
               at: str = "2026-04-01T10:00:00+08:00") -> list[Output]:
        """A HoldReviewed from skills.subsidy.reviews (EVENTS.md §5.4)."""
        if agency is None:
            grant = self.state(person).find_grant(grant_id)
            agency = grant.event.agency if grant is not None else "suqian"
        return self.send("skills.subsidy.HoldReviewed.v1", {
            "grant_id": grant_id, "person_id": person, "agency": agency, "decision": decision,
            "reviewer": "clerk-1", "note": "checked the sign-in sheets",
            "reviewed_at": at, "review_id": review_id or f"review-{next(self._ids)}"}, agency)
