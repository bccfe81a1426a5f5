"""Batch handler of skills.training.upstream: load -> decide -> record.

One call per Kafka batch inside the batch's transaction (see shared.runtime.consumer): the
records become domain commands (`translate`), the store loads and locks everything they touch
(services.enrollment.store), the pure domain decides the batch on that snapshot
(services.enrollment.domain.Decider), its events and dead letters go to the outbox and its
changes to the store. Records that refer to an enrollment not seen yet are parked in
``pending`` and replayed, in arrival order, when the enrollment arrives; the sweep
dead-letters them after the waiting period. Attendance runs the integrity checks of POLICY.md
§6 (``EnrollmentFlagged``, once per enrollment and check): the person's hours on other
enrollments, which may be on other partitions and other replicas, are read under a per-person
advisory lock.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import asyncpg

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.identity import normalise_national_id, person_id
from shared.runtime import crypto, pending
from shared.runtime.consumer import Handler, Incoming
from shared.runtime.outbox import Outbox
from services.enrollment import domain
from services.enrollment.config import EnrollmentSettings
from services.enrollment.store import EnrollmentStore, PostgresEnrollmentStore

log = logging.getLogger(__name__)

ENROLLED = "skills.training.TraineeEnrolled.v1"
ATTENDANCE = "skills.training.AttendanceRecorded.v1"
FINISHED = "skills.training.TrainingFinished.v1"
WITHDRAWN = "skills.training.EnrollmentWithdrawn.v1"
MONTH = "skills.training.WorkTrainingMonthRecorded.v1"


def translate(settings: EnrollmentSettings, item: Incoming) -> domain.Command:
    """A record as the domain's command: identity validated and pseudonymised, the
    EnrollmentAccepted payload built (published and kept as it is if the enrollment is
    accepted), hours as a decimal. ``cause`` is the record itself (for dead letters, parking
    and the published events' time and trace)."""
    event = item.event
    data: Any = event.data
    if event.type == ENROLLED:
        pid: str | None = None
        refusal = accepted = None
        nid = ""
        try:
            nid = normalise_national_id(data.trainee.national_id)
            pid = person_id(nid, settings.person_id_secret)
        except ValueError as exc:
            refusal = ("invalid_national_id", str(exc))
        if pid is not None:
            accepted = ev.EnrollmentAccepted(
                enrollment_ref=data.enrollment_ref, person_id=pid,
                institution_id=data.institution_id, categories=data.trainee.categories,
                rural=data.trainee.rural, hukou_agency=data.trainee.hukou_agency,
                insured_months=data.trainee.insured_months, hired_on=data.trainee.hired_on,
                employer=data.employer, course=data.course, fee=data.fee,
                accepted_on=event.time.date(),
            )
        return domain.Enrol(
            item, data.enrollment_ref, data.institution_id, agency=event.agencyid,
            source=event.source, id=event.id, event_time=event.time, person_id=pid,
            refusal=refusal, national_id=nid, name=data.trainee.name,
            course_id=data.course.course_id, start_date=data.course.start_date,
            end_date=data.course.end_date, planned_hours=data.course.planned_hours,
            accepted=accepted, accepted_json=ev.dump(accepted) if accepted is not None else None,
        )
    if event.type == ATTENDANCE:
        return domain.Attend(item, data.enrollment_ref, data.institution_id, data.date,
                             Decimal(str(data.hours)))
    if event.type == FINISHED:
        return domain.Finish(item, data.enrollment_ref, data.institution_id, data.finished_on)
    if event.type == WITHDRAWN:
        return domain.Withdraw(item, data.enrollment_ref, data.institution_id, data.withdrawn_on)
    if event.type == MONTH:
        return domain.Month(item, data.enrollment_ref, data.institution_id, data.month,
                            data.wages_fen)
    return domain.Other(item, getattr(data, "enrollment_ref", ""),
                        getattr(data, "institution_id", ""), event.type)


def send(out: Outbox, effects: list[domain.Effect]) -> None:
    """The decisions' events and dead letters, in order, into the batch's outbox."""
    for effect in effects:
        cause: Incoming = effect.cause
        if isinstance(effect, domain.DeadLetter):
            out.dead_letter(cause.record, effect.code, effect.detail)
            continue
        payload = (effect.payload if effect.fields is None
                   else getattr(ev, effect.event)(**effect.fields))
        out.publish(
            topics.ENROLLMENT_EVENTS, payload, id=effect.id, subject=effect.subject,
            agencyid=effect.agency, time=cause.event.time, traceparent=cause.event.traceparent,
        )


def make_handler(settings: EnrollmentSettings, store: EnrollmentStore | None = None) -> Handler:
    """Load -> decide -> record, one batch in one transaction. ``store``: the unit of work
    (default: the service's PostgreSQL store; tests pass `store.MemoryEnrollmentStore`)."""
    if store is None:
        fernet = crypto.Keyring.of(settings.data_keys).fernet  # current key, previous ones readable
        store = PostgresEnrollmentStore(fernet, settings.topic_prefix)
    catalogues = domain.Catalogues.load(settings.catalogue_dir)
    uow: EnrollmentStore = store

    def command(item: Incoming) -> domain.Command:
        return translate(settings, item)

    async def handle_batch(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        commands = [translate(settings, item) for item in items]
        snapshot = await uow.load(conn, commands, command)
        changes, effects = domain.Decider(
            snapshot, catalogues, settings.plan_slack_days, settings.daily_hours_limit,
        ).decide(commands)
        send(out, effects)
        await uow.record(conn, changes)

    return handle_batch


async def expire_pending(pool: asyncpg.Pool, settings: EnrollmentSettings, cutoff: dt.datetime) -> None:
    """Dead-letter records whose enrollment did not arrive in time (unknown_reference)."""
    async with pool.acquire() as conn, conn.transaction():
        out = Outbox(source="/services/enrollment", topic_prefix=settings.topic_prefix,
                     dlq_topic=settings.topic(topics.dlq("enrollment")))
        await pending.expire(conn, cutoff, out, settings.pending_wait_seconds,  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
                             describe=lambda ref: f"enrollment {ref}")
        await out.flush(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
