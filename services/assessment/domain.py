"""Pure rules of assessments and certificates: level checks, duplicates, certificate ids, revocation.

Standard library only. The handler loads state, calls these functions in event order and stores
what they return; EVENTS.md §4.2/§5.2 and POLICY.md §5 ("Each passed assessment issues one
certificate", revocation) are what they implement.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from dataclasses import asdict, dataclass

# Kinds that carry a level (职业资格证书, 职业技能等级证书); every other kind has none.
LEVELLED_KINDS = frozenset({"qualification", "skill_level"})
UNLEVELLED_KINDS = frozenset(
    {"special_ability", "special_operation", "special_equipment", "training_completion"}
)


class Refusal(Exception):
    """A record that is an error (dead letter), with the service's documented code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def certificate_level(certificate_kind: str, level: str | None) -> str | None:
    """The level a result stands at (POLICY.md §5 "Certificate levels").

    Levelled kinds need one (``level_required``); on a level-less kind a level sent by the
    evaluator is ignored (``None``), not an error: evaluators fill it in where it means nothing.
    """
    if certificate_kind in LEVELLED_KINDS:
        if level is None:
            raise Refusal("level_required", f"a {certificate_kind} certificate needs a level")
        return level
    return None


def certificate_id(assessment_ref: str) -> str:
    """``CERT-`` + the first 20 hex digits of sha256(assessment_ref), upper-case.

    Derived from the assessment alone, so a replay or a fresh deployment issues the same id and
    one passed assessment can only ever issue one certificate.
    """
    return "CERT-" + hashlib.sha256(assessment_ref.encode("utf-8")).hexdigest()[:20].upper()


@dataclass(frozen=True)
class Result:
    """An assessment result after validation: the person as person_id, never the national id."""

    assessment_ref: str
    evaluator_id: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: str | None
    certificate_kind: str
    passed: bool
    theory_score: float | None
    practical_score: float | None
    assessed_on: dt.date

    def digest(self) -> bytes:
        """sha256 of the normalised result: what "same content" means for one assessment_ref."""
        fields = asdict(self)
        fields["assessed_on"] = self.assessed_on.isoformat()
        for score in ("theory_score", "practical_score"):
            if fields[score] is not None:
                fields[score] = float(fields[score])
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).digest()


class Repeat(enum.Enum):
    """How a result relates to what is already known under its assessment_ref."""

    NEW = "new"
    SAME = "same"  # redelivered under a new event id with the same content: no effect
    CONFLICT = "conflict"  # different content: the first result stands, this one is an error


def compare(known_digest: bytes | None, digest: bytes) -> Repeat:
    if known_digest is None:
        return Repeat.NEW
    return Repeat.SAME if known_digest == digest else Repeat.CONFLICT


@dataclass
class Certificate:
    certificate_id: str
    assessment_ref: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: str | None
    certificate_kind: str
    issued_on: dt.date
    status: str = "valid"
    revoked_on: dt.date | None = None
    revoke_reason: str | None = None
    dirty: bool = False

    @property
    def revoked(self) -> bool:
        return self.status == "revoked"


def issue(result: Result) -> Certificate | None:
    """Each passed assessment issues one certificate, issued on the day it was assessed."""
    if not result.passed:
        return None
    return Certificate(
        certificate_id=certificate_id(result.assessment_ref),
        assessment_ref=result.assessment_ref, person_id=result.person_id,
        enrollment_ref=result.enrollment_ref, occupation_code=result.occupation_code,
        level=result.level, certificate_kind=result.certificate_kind,
        issued_on=result.assessed_on, dirty=True,
    )


def revoke(certificate: Certificate, revoked_on: dt.date, reason: str) -> bool:
    """Revoke a valid certificate; True when this changed anything (a second revocation does not)."""
    if certificate.revoked:
        return False
    certificate.status = "revoked"
    certificate.revoked_on = revoked_on
    certificate.revoke_reason = reason
    certificate.dirty = True
    return True


@dataclass
class Enrollment:
    """What the assessment service keeps of an accepted enrollment (from EnrollmentAccepted)."""

    enrollment_ref: str
    person_id: str
    occupation_code: str
    level: str | None
    start_date: dt.date
    agency: str
    status: str = "accepted"
    withdrawn_on: dt.date | None = None
    dirty: bool = False


@dataclass
class Assessment:
    """The standing result of one assessment_ref: its digest and whether it was decided.

    ``waiting``: parked until its enrollment arrives; ``decided``: its outcome was published.
    ``result`` is set only when this batch recorded or decided it.
    """

    assessment_ref: str
    digest: bytes
    status: str
    agency: str
    result: Result | None = None
    dirty: bool = False
