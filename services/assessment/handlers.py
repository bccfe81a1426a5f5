"""Batch handler of skills.assessment.upstream and skills.enrollment.events: load, decide, store, emit.

One call per Kafka batch inside the batch's transaction (see shared.runtime.consumer). A result
naming an enrollment not seen yet is parked in ``pending`` under ``enrollment:<ref>`` and a
revocation naming a certificate not issued yet under ``certificate:<id>``; both are replayed, in
arrival order, when what they wait for arrives, so the outputs are those of the natural order.
The sweep dead-letters them after the waiting period (``unknown_reference``).

Dead-letter codes of this service, beyond the envelope's: ``invalid_national_id``,
``level_required`` (a qualification / skill_level result without a level; a level on any other
certificate kind is ignored, POLICY.md §5), ``conflicting_duplicate`` (an assessment_ref seen before
with different content; the first result stands) and ``unknown_reference``.
Output event ids: ``assessment-passed/<assessment_ref>``, ``assessment-failed/<assessment_ref>``,
``certificate-issued/<certificate_id>``, ``certificate-revoked/<certificate_id>``.
"""

from __future__ import annotations

import datetime as dt

import logging
from collections.abc import Iterable

import asyncpg
import orjson

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.identity import person_id
from shared.runtime import crypto, db, pending
from shared.runtime.consumer import Handler, Incoming
from shared.runtime.outbox import Outbox
from services.assessment import domain
from services.assessment.config import AssessmentSettings
from services.assessment.domain import Assessment, Certificate, Enrollment, Refusal, Repeat, Result

log = logging.getLogger(__name__)

RESULT = "skills.assessment.AssessmentResultRecorded.v1"
REVOKED = "skills.assessment.CertificateRevoked.v1"
ACCEPTED = "skills.enrollment.EnrollmentAccepted.v1"
WITHDRAWN = "skills.enrollment.EnrollmentWithdrawn.v1"

# Batches hold it shared, the expiry sweep exclusively: a record is never replayed and expired
# at the same time.
SWEEP_LOCK = 7261003
ENROLLMENT = "enrollment:"
CERTIFICATE = "certificate:"


class Batch:
    """The state of one batch: everything its keys refer to, and the writes collected for the end."""

    def __init__(self, conn: asyncpg.Connection, out: Outbox, settings: AssessmentSettings) -> None:
        self.conn = conn
        self.out = out
        self.settings = settings
        self.enrollments: dict[str, Enrollment] = {}
        self.assessments: dict[str, Assessment] = {}
        self.certificates: dict[str, Certificate] = {}
        self.stored_pending: dict[str, list[tuple[int, Incoming]]] = {}
        self.consumed: list[int] = []
        self.parked: list[tuple[str, Incoming]] = []

    # ---- loading ----------------------------------------------------------------------

    async def load(self, items: list[Incoming]) -> None:
        """Lock the batch's keys, take the records waiting for them, load their state."""
        await self._lock(_keys(items), sweep=True)
        waiting = await self._take_pending(
            [ENROLLMENT + i.event.data.enrollment_ref for i in items if i.event.type == ACCEPTED]  # type: ignore[attr-defined]
            + [CERTIFICATE + domain.certificate_id(i.event.data.assessment_ref)  # type: ignore[attr-defined]
               for i in items if i.event.type == RESULT]
        )
        # Results waiting for an enrollment that arrives now may issue certificates whose
        # revocations wait too.
        more = [CERTIFICATE + domain.certificate_id(i.event.data.assessment_ref)  # type: ignore[attr-defined]
                for i in waiting if i.event.type == RESULT]
        more = [k for k in more if k not in self.stored_pending]
        if more:
            await self._lock(more)
            waiting += await self._take_pending(more)
        everything = items + waiting
        keys = _keys(everything)
        enrollment_refs = [k.removeprefix(ENROLLMENT) for k in keys if k.startswith(ENROLLMENT)]
        certificate_ids = [k.removeprefix(CERTIFICATE) for k in keys if k.startswith(CERTIFICATE)]
        assessment_refs = [i.event.data.assessment_ref for i in everything if i.event.type == RESULT]  # type: ignore[attr-defined]
        for row in await db.fetch_for(
            self.conn, enrollment_refs,
            "SELECT * FROM enrollment WHERE enrollment_ref = ANY($1::text[])",
        ):
            self.enrollments[row["enrollment_ref"]] = Enrollment(
                row["enrollment_ref"], row["person_id"], row["occupation_code"], row["level"],
                row["start_date"], row["agency"], row["status"], row["withdrawn_on"],
            )
        for row in await db.fetch_for(
            self.conn, assessment_refs,
            "SELECT assessment_ref, digest, status, agency FROM assessment "
            "WHERE assessment_ref = ANY($1::text[])",
        ):
            self.assessments[row["assessment_ref"]] = Assessment(
                row["assessment_ref"], bytes(row["digest"]), row["status"], row["agency"]
            )
        for row in await db.fetch_for(
            self.conn, certificate_ids,
            "SELECT * FROM certificate WHERE certificate_id = ANY($1::text[])",
        ):
            self.certificates[row["certificate_id"]] = Certificate(
                row["certificate_id"], row["assessment_ref"], row["person_id"],
                row["enrollment_ref"], row["occupation_code"], row["level"],
                row["certificate_kind"], row["issued_on"], row["status"], row["revoked_on"],
                row["revoke_reason"],
            )

    async def _lock(self, keys: Iterable[str], sweep: bool = False) -> None:
        # Consumers of other partitions may touch the same enrollment or certificate; per-key
        # locks, taken in one sorted pass, keep a record from being parked just after the
        # thing it waits for was stored and its waiting records taken. ``sweep``: first the
        # shared side of the sweep's lock, in the same statement (one round trip).
        per_key = (
            "(SELECT count(pg_advisory_xact_lock(k)) FROM "
            "(SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest($1::text[]) x ORDER BY 1) s)"
        )
        if sweep:
            await self.conn.execute(
                f"SELECT pg_advisory_xact_lock_shared($2), {per_key}", sorted(set(keys)), SWEEP_LOCK
            )
        else:
            await self.conn.execute(f"SELECT {per_key}", sorted(set(keys)))

    async def _take_pending(self, refs: list[str]) -> list[Incoming]:
        if not refs:
            return []
        rows = await self.conn.fetch(
            "SELECT seq, ref, topic, partition, \"offset\", key, value FROM pending "
            "WHERE ref = ANY($1::text[]) ORDER BY seq FOR UPDATE",
            refs,
        )
        taken = []
        for r in rows:
            item = pending.incoming(r, self.settings.topic_prefix)
            self.stored_pending.setdefault(r["ref"], []).append((r["seq"], item))
            taken.append(item)
        for ref in refs:
            self.stored_pending.setdefault(ref, [])
        return taken

    # ---- deciding -----------------------------------------------------------------------

    def handle(self, item: Incoming, *, replayed: bool = False) -> None:
        try:
            if item.event.type == RESULT:
                self.result_recorded(item, replayed)
            elif item.event.type == REVOKED:
                self.certificate_revoked(item)
            elif item.event.type == ACCEPTED:
                self.enrollment_accepted(item)
            elif item.event.type == WITHDRAWN:
                self.enrollment_withdrawn(item)
            # Other enrollment events (completion, rejection, work months) are the subsidy
            # service's concern, not this one's.
        except Refusal as refusal:
            self.out.dead_letter(item.record, refusal.code, refusal.detail)

    def result_recorded(self, item: Incoming, replayed: bool) -> None:
        """Validate, keep the first result per assessment_ref, wait for a named enrollment, decide."""
        data: ev.AssessmentResultRecorded = item.event.data  # type: ignore[assignment]
        try:
            pid = person_id(data.national_id, self.settings.person_id_secret)
        except ValueError as exc:
            raise Refusal("invalid_national_id", str(exc)) from None
        level = domain.certificate_level(data.certificate_kind.value,
                                         data.level.value if data.level is not None else None)
        result = Result(
            assessment_ref=data.assessment_ref, evaluator_id=data.evaluator_id, person_id=pid,
            enrollment_ref=data.enrollment_ref, occupation_code=data.occupation_code,
            level=level, certificate_kind=data.certificate_kind.value, passed=data.passed,
            theory_score=data.theory_score, practical_score=data.practical_score,
            assessed_on=data.assessed_on,
        )
        digest = result.digest()
        known = self.assessments.get(result.assessment_ref)
        owner = replayed and known is not None and known.status == "waiting" and known.digest == digest
        if not owner:
            repeat = domain.compare(known.digest if known else None, digest)
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
                result.assessment_ref, digest, "waiting", item.event.agencyid, result, dirty=True
            )
            self.parked.append((ENROLLMENT + result.enrollment_ref, item))
            return
        self.decide(result, digest, item)

    def decide(self, result: Result, digest: bytes, item: Incoming) -> None:
        """Passed: AssessmentPassed then CertificateIssued; failed: AssessmentFailed."""
        self.assessments[result.assessment_ref] = Assessment(
            result.assessment_ref, digest, "decided", item.event.agencyid, result, dirty=True
        )
        outcome = dict(
            assessment_ref=result.assessment_ref, person_id=result.person_id,
            enrollment_ref=result.enrollment_ref, occupation_code=result.occupation_code,
            level=result.level, certificate_kind=result.certificate_kind,
            assessed_on=result.assessed_on,
        )
        certificate = domain.issue(result)
        if certificate is None:
            self.emit(ev.AssessmentFailed(**outcome), f"assessment-failed/{result.assessment_ref}",
                      result.person_id, item)
            return
        self.emit(ev.AssessmentPassed(**outcome), f"assessment-passed/{result.assessment_ref}",
                  result.person_id, item)
        self.certificates[certificate.certificate_id] = certificate
        issued = ev.CertificateIssued(
            certificate_id=certificate.certificate_id, assessment_ref=result.assessment_ref,
            person_id=result.person_id, enrollment_ref=result.enrollment_ref,
            occupation_code=result.occupation_code, level=result.level,
            certificate_kind=result.certificate_kind, issued_on=certificate.issued_on,
        )
        self.emit(issued, f"certificate-issued/{certificate.certificate_id}", result.person_id, item)
        self.replay(CERTIFICATE + certificate.certificate_id)

    def certificate_revoked(self, item: Incoming) -> None:
        """A known certificate is revoked once; one not issued yet waits for its issuance."""
        data: ev.CertificateRevokedUpstream = item.event.data  # type: ignore[assignment]
        certificate = self.certificates.get(data.certificate_id)
        if certificate is None:
            self.parked.append((CERTIFICATE + data.certificate_id, item))
            return
        if not domain.revoke(certificate, data.revoked_on, data.reason):
            log.info("certificate already revoked; no second effect",
                     extra={"certificate_id": data.certificate_id})
            return
        revoked = ev.CertificateRevoked(
            certificate_id=certificate.certificate_id, person_id=certificate.person_id,
            revoked_on=data.revoked_on, reason=data.reason,
        )
        self.emit(revoked, f"certificate-revoked/{certificate.certificate_id}",
                  certificate.person_id, item)

    def enrollment_accepted(self, item: Incoming) -> None:
        data: ev.EnrollmentAccepted = item.event.data  # type: ignore[assignment]
        if data.enrollment_ref in self.enrollments:
            return
        self.enrollments[data.enrollment_ref] = Enrollment(
            enrollment_ref=data.enrollment_ref, person_id=data.person_id,
            occupation_code=data.course.occupation_code,
            level=data.course.level.value if data.course.level is not None else None,
            start_date=data.course.start_date, agency=item.event.agencyid, dirty=True,
        )
        self.replay(ENROLLMENT + data.enrollment_ref)

    def enrollment_withdrawn(self, item: Incoming) -> None:
        data: ev.EnrollmentWithdrawn = item.event.data  # type: ignore[assignment]
        enrollment = self.enrollments.get(data.enrollment_ref)
        if enrollment is None:
            log.info("withdrawal of an enrollment never accepted here is ignored",
                     extra={"enrollment_ref": data.enrollment_ref})
            return
        if enrollment.status != "withdrawn":
            enrollment.status, enrollment.withdrawn_on = "withdrawn", data.withdrawn_on
            enrollment.dirty = True

    def replay(self, key: str) -> None:
        """Apply, in arrival order, the records that waited for ``key``: stored first, then this batch's."""
        stored = self.stored_pending.get(key, [])
        self.consumed += [seq for seq, _ in stored]
        self.stored_pending[key] = []
        earlier = [i for k, i in self.parked if k == key]
        self.parked = [(k, i) for k, i in self.parked if k != key]
        for item in [i for _, i in stored] + earlier:
            self.handle(item, replayed=True)

    def emit(self, payload: ev.Payload, event_id: str, subject: str, item: Incoming) -> None:
        self.out.publish(
            topics.ASSESSMENT_EVENTS, payload, id=event_id, subject=subject,
            agencyid=item.event.agencyid, time=item.event.time, traceparent=item.event.traceparent,
        )

    # ---- storing ------------------------------------------------------------------------

    async def store(self) -> None:
        enrollments = [e for e in self.enrollments.values() if e.dirty]
        if enrollments:
            await self.conn.execute(
                "INSERT INTO enrollment (enrollment_ref, person_id, occupation_code, level,"
                " start_date, agency, status, withdrawn_on) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[],"
                " $6::text[], $7::text[], $8::date[]) "
                "ON CONFLICT (enrollment_ref) DO UPDATE SET status = excluded.status,"
                " withdrawn_on = excluded.withdrawn_on",
                *_columns(enrollments, "enrollment_ref", "person_id", "occupation_code", "level",
                          "start_date", "agency", "status", "withdrawn_on"),
            )
        assessments = [a for a in self.assessments.values() if a.dirty]
        if assessments:
            results = [a.result for a in assessments]
            assert all(r is not None for r in results)
            await self.conn.execute(
                "INSERT INTO assessment (assessment_ref, digest, status, agency, person_id,"
                " evaluator_id, enrollment_ref, occupation_code, level, certificate_kind, passed,"
                " assessed_on) "
                "SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[],"
                " $12::date[]) "
                "ON CONFLICT (assessment_ref) DO UPDATE SET status = excluded.status",
                *_columns(assessments, "assessment_ref", "digest", "status", "agency"),
                *_columns(results, "person_id", "evaluator_id", "enrollment_ref",
                          "occupation_code", "level", "certificate_kind", "passed", "assessed_on"),
            )
        certificates = [c for c in self.certificates.values() if c.dirty]
        if certificates:
            await self.conn.execute(
                "INSERT INTO certificate (certificate_id, assessment_ref, person_id, enrollment_ref,"
                " occupation_code, level, certificate_kind, issued_on, status, revoked_on,"
                " revoke_reason) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::date[], $9::text[], $10::date[], $11::text[]) "
                "ON CONFLICT (certificate_id) DO UPDATE SET status = excluded.status,"
                " revoked_on = excluded.revoked_on, revoke_reason = excluded.revoke_reason",
                *_columns(certificates, "certificate_id", "assessment_ref", "person_id",
                          "enrollment_ref", "occupation_code", "level", "certificate_kind",
                          "issued_on", "status", "revoked_on", "revoke_reason"),
            )
        if self.consumed:
            await self.conn.execute("DELETE FROM pending WHERE seq = ANY($1::bigint[])", self.consumed)
        await pending.park(self.conn, self.parked)


def _keys(items: Iterable[Incoming]) -> list[str]:
    """The enrollment and certificate keys the records touch (for locks and loading)."""
    keys = []
    for item in items:
        data = item.event.data
        if item.event.type == RESULT:
            keys.append(CERTIFICATE + domain.certificate_id(data.assessment_ref))  # type: ignore[attr-defined]
            keys.append("assessment:" + data.assessment_ref)  # type: ignore[attr-defined]
            if data.enrollment_ref is not None:  # type: ignore[attr-defined]
                keys.append(ENROLLMENT + data.enrollment_ref)  # type: ignore[attr-defined]
        elif item.event.type == REVOKED:
            keys.append(CERTIFICATE + data.certificate_id)  # type: ignore[attr-defined]
        elif item.event.type in (ACCEPTED, WITHDRAWN):
            keys.append(ENROLLMENT + data.enrollment_ref)  # type: ignore[attr-defined]
    return keys


def _columns(rows: list, *names: str) -> list[list]:  # type: ignore[type-arg]
    return [[getattr(r, n) for r in rows] for n in names]


def make_handler(settings: AssessmentSettings) -> Handler:
    async def handle_batch(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        batch = Batch(conn, out, settings)
        await batch.load(items)
        for item in items:
            batch.handle(item)
        await batch.store()

    return handle_batch


async def expire_pending(pool: asyncpg.Pool, settings: AssessmentSettings, cutoff: dt.datetime) -> None:
    """Dead-letter records that waited longer than the waiting period (unknown_reference).

    A result that expires gives up its claim on the assessment_ref, so a corrected record may
    be sent again later.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK)
        out = Outbox(source="/services/assessment", topic_prefix=settings.topic_prefix,
                     dlq_topic=settings.topic(topics.dlq("assessment")))
        rows = await pending.expire(conn, cutoff, out, settings.pending_wait_seconds,
                                    describe=lambda ref: ref.replace(":", " ", 1))
        released = [
            orjson.loads(crypto.open_stored(bytes(r["value"])))["data"]["assessment_ref"]
            for r in rows if r["ref"].startswith(ENROLLMENT)
        ]
        if released:
            await conn.execute(
                "DELETE FROM assessment WHERE assessment_ref = ANY($1::text[]) AND status = 'waiting'",
                released,
            )
        await out.flush(conn)
