"""Pure rules of assessments and certificates: level checks, duplicates, certificate ids, revocation.

Standard library only, no I/O. The handler loads a snapshot through the store, `Decider`
decides the batch on it (these rules, in event order) and the handler records what it returns;
EVENTS.md §4.2/§5.2 and POLICY.md §5 ("Each passed assessment issues one certificate",
revocation) are what they implement.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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


# ---- deciding a batch on a loaded snapshot ------------------------------------------------------
#
# The handler turns each record into one of the commands below (the person_id needs the secret),
# the store loads a `Snapshot` of everything they touch, waiting records included, and `Decider`
# applies the commands in order without reading anything more: it returns the `Changes` to record
# and the `effects` to send (events and dead letters, in order). ``cause`` is the record a
# command came from: opaque here, handed back in effects and parked records.

ENROLLMENT = "enrollment:"
CERTIFICATE = "certificate:"


@dataclass(frozen=True)
class Command:
    cause: Any
    agency: str


@dataclass(frozen=True)
class RecordResult(Command):
    """AssessmentResultRecorded; ``person_id`` None and ``refusal`` set for an invalid national id."""

    assessment_ref: str
    evaluator_id: str
    person_id: str | None
    refusal: tuple[str, str] | None
    enrollment_ref: str | None
    occupation_code: str
    level: str | None
    certificate_kind: str
    passed: bool
    theory_score: float | None
    practical_score: float | None
    assessed_on: dt.date


@dataclass(frozen=True)
class Revoke(Command):
    certificate_id: str
    revoked_on: dt.date
    reason: str


@dataclass(frozen=True)
class EnrollmentAccepted(Command):
    enrollment_ref: str
    person_id: str
    occupation_code: str
    level: str | None
    start_date: dt.date


@dataclass(frozen=True)
class EnrollmentWithdrawn(Command):
    enrollment_ref: str
    withdrawn_on: dt.date


@dataclass(frozen=True)
class Ignored(Command):
    """Enrollment events that are the subsidy service's concern (completion, rejection, months)."""


def keys(commands: Any) -> list[str]:
    """The enrollment and certificate keys (and assessment refs) commands touch: what a batch
    locks and loads."""
    found = []
    for c in commands:
        if isinstance(c, RecordResult):
            found.append(CERTIFICATE + certificate_id(c.assessment_ref))
            found.append("assessment:" + c.assessment_ref)
            if c.enrollment_ref is not None:
                found.append(ENROLLMENT + c.enrollment_ref)
        elif isinstance(c, Revoke):
            found.append(CERTIFICATE + c.certificate_id)
        elif isinstance(c, (EnrollmentAccepted, EnrollmentWithdrawn)):
            found.append(ENROLLMENT + c.enrollment_ref)
    return found


def awaited(commands: Any) -> list[str]:
    """The keys whose parked records these commands may release: the enrollments they accept
    and the certificates their results may issue."""
    commands = list(commands)
    return ([ENROLLMENT + c.enrollment_ref for c in commands if isinstance(c, EnrollmentAccepted)]
            + [CERTIFICATE + certificate_id(c.assessment_ref)
               for c in commands if isinstance(c, RecordResult)])


@dataclass
class Snapshot:
    """What a batch's decisions read, loaded under the batch's locks: the enrollments,
    assessments and certificates the commands (and the waiting ones) name, and ``waiting``:
    for every key whose parked records were taken, those records as (pending seq, command) in
    arrival order (an empty list: taken, none waiting)."""

    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    assessments: dict[str, Assessment] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    waiting: dict[str, list[tuple[int, Command]]] = field(default_factory=dict)


@dataclass
class Changes:
    """What a batch writes: new or changed rows, ``consumed`` pending seqs, records ``parked``
    as (key, cause)."""

    enrollments: list[Enrollment] = field(default_factory=list)
    assessments: list[Assessment] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    parked: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Publish:
    """An event to publish: the contract payload ``event`` with ``fields``, at its cause's time."""

    event: str
    fields: dict[str, Any]
    id: str
    subject: str
    agency: str
    cause: Any


@dataclass(frozen=True)
class DeadLetter:
    cause: Any
    code: str
    detail: str


Effect = Publish | DeadLetter


class Decider:
    """One batch's decisions on a snapshot (which it updates as the batch goes)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.enrollments = snapshot.enrollments
        self.assessments = snapshot.assessments
        self.certificates = snapshot.certificates
        self.waiting = snapshot.waiting
        self.parked: list[tuple[str, Command]] = []
        self.consumed: list[int] = []
        self.effects: list[Effect] = []

    def decide(self, commands: list[Command]) -> tuple[Changes, list[Effect]]:
        for command in commands:
            self.handle(command)
        changes = Changes(
            enrollments=[e for e in self.enrollments.values() if e.dirty],
            assessments=[a for a in self.assessments.values() if a.dirty],
            certificates=[c for c in self.certificates.values() if c.dirty],
            consumed=self.consumed,
            parked=[(key, c.cause) for key, c in self.parked],
        )
        return changes, self.effects

    def handle(self, command: Command, *, replayed: bool = False) -> None:
        try:
            if isinstance(command, RecordResult):
                self.result_recorded(command, replayed)
            elif isinstance(command, Revoke):
                self.certificate_revoked(command)
            elif isinstance(command, EnrollmentAccepted):
                self.enrollment_accepted(command)
            elif isinstance(command, EnrollmentWithdrawn):
                self.enrollment_withdrawn(command)
        except Refusal as refusal:
            self.effects.append(DeadLetter(command.cause, refusal.code, refusal.detail))

    def result_recorded(self, c: RecordResult, replayed: bool) -> None:
        """Validate, keep the first result per assessment_ref, wait for a named enrollment, decide."""
        if c.refusal is not None:
            raise Refusal(*c.refusal)
        assert c.person_id is not None
        level = certificate_level(c.certificate_kind, c.level)
        result = Result(
            assessment_ref=c.assessment_ref, evaluator_id=c.evaluator_id, person_id=c.person_id,
            enrollment_ref=c.enrollment_ref, occupation_code=c.occupation_code, level=level,
            certificate_kind=c.certificate_kind, passed=c.passed, theory_score=c.theory_score,
            practical_score=c.practical_score, assessed_on=c.assessed_on,
        )
        digest = result.digest()
        known = self.assessments.get(result.assessment_ref)
        owner = replayed and known is not None and known.status == "waiting" and known.digest == digest
        if not owner:
            repeat = compare(known.digest if known else None, digest)
            if repeat is Repeat.SAME:
                log.info("result repeated with the same content has no effect",
                         extra={"assessment_ref": result.assessment_ref})
                return
            if repeat is Repeat.CONFLICT:
                raise Refusal("conflicting_duplicate",
                              f"assessment {result.assessment_ref} was recorded before with "
                              "different content; the first result stands")
        if result.enrollment_ref is not None and result.enrollment_ref not in self.enrollments:
            self.assessments[result.assessment_ref] = Assessment(
                result.assessment_ref, digest, "waiting", c.agency, result, dirty=True
            )
            self.parked.append((ENROLLMENT + result.enrollment_ref, c))
            return
        self.decide_result(result, digest, c)

    def decide_result(self, result: Result, digest: bytes, c: Command) -> None:
        """Passed: AssessmentPassed then CertificateIssued; failed: AssessmentFailed."""
        self.assessments[result.assessment_ref] = Assessment(
            result.assessment_ref, digest, "decided", c.agency, result, dirty=True
        )
        outcome = dict(
            assessment_ref=result.assessment_ref, person_id=result.person_id,
            enrollment_ref=result.enrollment_ref, occupation_code=result.occupation_code,
            level=result.level, certificate_kind=result.certificate_kind,
            assessed_on=result.assessed_on,
        )
        certificate = issue(result)
        if certificate is None:
            self.emit("AssessmentFailed", outcome, f"assessment-failed/{result.assessment_ref}",
                      result.person_id, c)
            return
        self.emit("AssessmentPassed", outcome, f"assessment-passed/{result.assessment_ref}",
                  result.person_id, c)
        self.certificates[certificate.certificate_id] = certificate
        self.emit("CertificateIssued", dict(
            certificate_id=certificate.certificate_id, assessment_ref=result.assessment_ref,
            person_id=result.person_id, enrollment_ref=result.enrollment_ref,
            occupation_code=result.occupation_code, level=result.level,
            certificate_kind=result.certificate_kind, issued_on=certificate.issued_on,
        ), f"certificate-issued/{certificate.certificate_id}", result.person_id, c)
        self.replay(CERTIFICATE + certificate.certificate_id)

    def certificate_revoked(self, c: Revoke) -> None:
        """A known certificate is revoked once; one not issued yet waits for its issuance."""
        certificate = self.certificates.get(c.certificate_id)
        if certificate is None:
            self.parked.append((CERTIFICATE + c.certificate_id, c))
            return
        if not revoke(certificate, c.revoked_on, c.reason):
            log.info("certificate already revoked; no second effect",
                     extra={"certificate_id": c.certificate_id})
            return
        self.emit("CertificateRevoked", dict(
            certificate_id=certificate.certificate_id, person_id=certificate.person_id,
            revoked_on=c.revoked_on, reason=c.reason,
        ), f"certificate-revoked/{certificate.certificate_id}", certificate.person_id, c)

    def enrollment_accepted(self, c: EnrollmentAccepted) -> None:
        if c.enrollment_ref in self.enrollments:
            return
        self.enrollments[c.enrollment_ref] = Enrollment(
            enrollment_ref=c.enrollment_ref, person_id=c.person_id,
            occupation_code=c.occupation_code, level=c.level, start_date=c.start_date,
            agency=c.agency, dirty=True,
        )
        self.replay(ENROLLMENT + c.enrollment_ref)

    def enrollment_withdrawn(self, c: EnrollmentWithdrawn) -> None:
        enrollment = self.enrollments.get(c.enrollment_ref)
        if enrollment is None:
            log.info("withdrawal of an enrollment never accepted here is ignored",
                     extra={"enrollment_ref": c.enrollment_ref})
            return
        if enrollment.status != "withdrawn":
            enrollment.status, enrollment.withdrawn_on = "withdrawn", c.withdrawn_on
            enrollment.dirty = True

    def replay(self, key: str) -> None:
        """Apply, in arrival order, the records that waited for ``key``: stored first, then this batch's."""
        stored = self.waiting.get(key, [])
        self.consumed += [seq for seq, _ in stored]
        self.waiting[key] = []
        earlier = [c for k, c in self.parked if k == key]
        self.parked = [(k, c) for k, c in self.parked if k != key]
        for command in [c for _, c in stored] + earlier:
            self.handle(command, replayed=True)

    def emit(self, event: str, fields: dict[str, Any], event_id: str, subject: str,
             c: Command) -> None:
        self.effects.append(Publish(event, fields, event_id, subject, c.agency, c.cause))
