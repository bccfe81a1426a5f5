"""Batch handler of skills.assessment.upstream and skills.enrollment.events: load -> decide -> record.

One call per Kafka batch inside the batch's transaction (see shared.runtime.consumer): the
records become domain commands (`translate`), the store locks and loads everything they touch
(services.assessment.store), the pure domain decides the batch on that snapshot
(services.assessment.domain.Decider), its events and dead letters go to the outbox and its
changes to the store. A result
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
from typing import Any

import asyncpg
import orjson

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.identity import person_id
from shared.runtime import crypto, pending
from shared.runtime.consumer import Handler, Incoming
from shared.runtime.outbox import Outbox
from services.assessment import domain
from services.assessment.config import AssessmentSettings
from services.assessment.domain import ENROLLMENT
from services.assessment.store import SWEEP_LOCK, AssessmentStore, PostgresAssessmentStore

log = logging.getLogger(__name__)

RESULT = "skills.assessment.AssessmentResultRecorded.v1"
REVOKED = "skills.assessment.CertificateRevoked.v1"
ACCEPTED = "skills.enrollment.EnrollmentAccepted.v1"
WITHDRAWN = "skills.enrollment.EnrollmentWithdrawn.v1"


def translate(settings: AssessmentSettings, item: Incoming) -> domain.Command:
    """A record as the domain's command (the person pseudonymised; an invalid national id is
    the command's refusal). ``cause`` is the record itself (for dead letters, parking and the
    published events' time and trace)."""
    event = item.event
    data: Any = event.data
    if event.type == RESULT:
        pid: str | None = None
        refusal = None
        try:
            pid = person_id(data.national_id, settings.person_id_secret)
        except ValueError as exc:
            refusal = ("invalid_national_id", str(exc))
        return domain.RecordResult(
            item, event.agencyid, assessment_ref=data.assessment_ref,
            evaluator_id=data.evaluator_id, person_id=pid, refusal=refusal,
            enrollment_ref=data.enrollment_ref, occupation_code=data.occupation_code,
            level=data.level.value if data.level is not None else None,
            certificate_kind=data.certificate_kind.value, passed=data.passed,
            theory_score=data.theory_score, practical_score=data.practical_score,
            assessed_on=data.assessed_on,
        )
    if event.type == REVOKED:
        return domain.Revoke(item, event.agencyid, data.certificate_id, data.revoked_on,
                             data.reason)
    if event.type == ACCEPTED:
        return domain.EnrollmentAccepted(
            item, event.agencyid, data.enrollment_ref, data.person_id,
            data.course.occupation_code,
            data.course.level.value if data.course.level is not None else None,
            data.course.start_date,
        )
    if event.type == WITHDRAWN:
        return domain.EnrollmentWithdrawn(item, event.agencyid, data.enrollment_ref,
                                          data.withdrawn_on)
    # Other enrollment events (completion, rejection, work months) are the subsidy service's
    # concern, not this one's.
    return domain.Ignored(item, event.agencyid)


def send(out: Outbox, effects: list[domain.Effect]) -> None:
    """The decisions' events and dead letters, in order, into the batch's outbox."""
    for effect in effects:
        cause: Incoming = effect.cause
        if isinstance(effect, domain.DeadLetter):
            out.dead_letter(cause.record, effect.code, effect.detail)
            continue
        out.publish(
            topics.ASSESSMENT_EVENTS, getattr(ev, effect.event)(**effect.fields), id=effect.id,
            subject=effect.subject, agencyid=effect.agency, time=cause.event.time,
            traceparent=cause.event.traceparent,
        )


def make_handler(settings: AssessmentSettings, store: AssessmentStore | None = None) -> Handler:
    """Load -> decide -> record, one batch in one transaction. ``store``: the unit of work
    (default: the service's PostgreSQL store; tests pass `store.MemoryAssessmentStore`)."""
    uow: AssessmentStore = store if store is not None else PostgresAssessmentStore(settings.topic_prefix)

    def command(item: Incoming) -> domain.Command:
        return translate(settings, item)

    async def handle_batch(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        commands = [translate(settings, item) for item in items]
        snapshot = await uow.load(conn, commands, command)
        changes, effects = domain.Decider(snapshot).decide(commands)
        send(out, effects)
        await uow.record(conn, changes)

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
        rows = await pending.expire(conn, cutoff, out, settings.pending_wait_seconds,  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
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
        await out.flush(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
