"""Holds for integrity review (POLICY §6) outside the engine: the reviewers' queue the batch
handler keeps, and the review command the API writes to skills.subsidy.reviews.

The engine decides (a hold, its release, denial or voiding) and the person's state is its
record; the ``hold`` table mirrors each hold's status, in the same transaction, so that the
queue, the metrics and the review API need not decode person states. A review is a command:
the API stores it once per hold (``hold_review``, so a second one is a 409) and writes the
``HoldReviewed`` event through the outbox in the same transaction; the service's own consumer
applies it in order with the person's facts, so a crash between the review and its decision
loses nothing and decides once (the inbox and the engine's once-per-hold rule).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
import orjson

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.vocabulary import RejectionReason
from shared.runtime.outbox import Outbox
from services.subsidy import contract, state_codec
from services.subsidy.engine.facts import HoldReviewed
from services.subsidy.engine.outputs import Output, SubsidyGranted, SubsidyHeld, SubsidyRejected

REVIEW_SOURCE = "/services/subsidy/reviews"
REVIEWED = "skills.subsidy.HoldReviewed.v1"


async def record(conn: asyncpg.Connection, outputs: list[Output], released: list[str],
                 reviews: list[HoldReviewed]) -> None:
    """Mirror the batch's holds and their ends into ``hold`` (``released``: the grant ids a
    HoldReviewed in this batch published as SubsidyGranted), and the batch's reviews into
    ``hold_review``, where the API stored them already, so that a rebuilt database lists them
    too (they are on skills.subsidy.reviews)."""
    if reviews:
        await conn.execute(
            "INSERT INTO hold_review (grant_id, review_id, person_id, agency, decision, reviewer,"
            " note, reviewed_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])"
            " ON CONFLICT DO NOTHING",
            [r.grant_id for r in reviews], [r.review_id for r in reviews],
            [r.person_id for r in reviews], [r.agency for r in reviews],
            [r.decision for r in reviews], [r.reviewer for r in reviews],
            [r.note for r in reviews], [dt.datetime.fromisoformat(r.reviewed_at) for r in reviews],
        )
    held = [o for o in outputs if isinstance(o, SubsidyHeld)]
    if held:
        await conn.execute(
            "INSERT INTO hold (grant_id, person_id, agency, rule, stage, amount_fen, fund, checks,"
            " enrollment_ref, held_on, payload) SELECT g, p, a, r, s, f, fu, string_to_array(c, ','),"
            " e, h, d::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::bigint[], $7::text[], $8::text[], $9::text[], $10::date[], $11::text[])"
            " AS x(g, p, a, r, s, f, fu, c, e, h, d) ON CONFLICT DO NOTHING",
            [o.grant.grant_id for o in held], [o.grant.person_id for o in held],
            [o.agency for o in held], [o.grant.rule for o in held],
            [o.grant.stage.value for o in held], [o.grant.amount_fen for o in held],
            [o.grant.fund for o in held], [",".join(o.checks) for o in held],
            [o.enrollment_ref for o in held], [o.held_on for o in held],
            [orjson.dumps(contract.data(o)).decode() for o in held],
        )
    ends: list[tuple[str, str, str]] = []
    for o in outputs:
        if isinstance(o, SubsidyGranted) and o.grant_id in released:
            ends.append((o.grant_id, "released", o.event_id))
        elif isinstance(o, SubsidyRejected) and o.grant_id is not None:
            status = "denied" if o.reason is RejectionReason.INTEGRITY_DENIED else "voided"
            ends.append((o.grant_id, status, o.event_id))
    if ends:
        await conn.execute(
            "UPDATE hold SET status = x.s, ended_at = now(), ended_by = x.e"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS x(g, s, e)"
            " WHERE hold.grant_id = x.g AND hold.status = 'open'",
            [e[0] for e in ends], [e[1] for e in ends], [e[2] for e in ends],
        )


@dataclass(frozen=True)
class Refused(Exception):
    """A review the API does not accept: HTTP status, error code and detail."""

    status: int
    code: str
    detail: str


async def submit_review(
    pool: asyncpg.Pool, topic_prefix: str, *, grant_id: str, decision: str, note: str,
    reviewer: str, may_review: object, now: dt.datetime,
) -> dict[str, str]:
    """Store a review of an open hold and write its HoldReviewed, in one transaction.

    ``may_review(agency)`` says whether the reviewer may decide the agency's holds (403 when
    not, before anything about the hold's state is revealed). 404 for an unknown grant, 409 for
    a hold reviewed or ended already, or a top-up whose base grant is still held (it follows
    its base's review)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT person_id, agency, status FROM hold WHERE grant_id = $1 FOR UPDATE", grant_id)
        if row is None:
            raise Refused(404, "not_found", f"no hold for grant {grant_id[:60]}")
        if not may_review(row["agency"]):  # type: ignore[operator]  # a callable (agency -> bool) from the API layer
            raise Refused(403, "forbidden", "this hold belongs to another agency")
        if row["status"] != "open":
            raise Refused(409, "already_reviewed" if row["status"] in ("released", "denied")
                          else "hold_ended", f"the hold is {row['status']}")
        raw = await conn.fetchval("SELECT state FROM person_state WHERE person_id = $1",
                                  row["person_id"])
        state = state_codec.loads(raw)
        grant = state.find_grant(grant_id)
        base = state.find_grant(grant.base_grant_id) if grant and grant.base_grant_id else None
        if base is not None and base.held:
            raise Refused(409, "follows_base", f"a top-up follows the review of its base "
                                               f"grant {base.grant_id}")
        review_id = f"hr_{uuid.uuid4().hex}"
        stored = await conn.fetchval(
            "INSERT INTO hold_review (grant_id, review_id, person_id, agency, decision, reviewer,"
            " note, reviewed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (grant_id) DO NOTHING RETURNING review_id",
            grant_id, review_id, row["person_id"], row["agency"], decision, reviewer, note, now,
        )
        if stored is None:
            raise Refused(409, "already_reviewed", "the hold has been reviewed")
        out = Outbox(source=REVIEW_SOURCE, topic_prefix=topic_prefix)
        payload = ev.HoldReviewed(
            grant_id=grant_id, person_id=row["person_id"], agency=row["agency"],
            decision=decision, reviewer=reviewer, note=note, reviewed_at=now,
            review_id=review_id,
        )
        out.publish(topics.SUBSIDY_REVIEWS, payload, id=review_id, subject=row["person_id"],
                    agencyid=row["agency"], time=now)
        await out.flush(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
    return {"review_id": review_id, "grant_id": grant_id, "decision": decision,
            "status": "accepted"}
