"""/healthz fails when the consumer has records to handle but makes no progress, and recovers.

A batch that can never commit (here: blocked behind a lock held by the test) leaves a live
process that answers HTTP but moves nothing; after CONSUMER_STALL_SECONDS /healthz answers 503
so that an orchestrator restarts it. When the batch commits, /healthz is 200 again.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shared.contract import topics
from tests import builders as b
from tests.harness import Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

UP = topics.TRAINING_UPSTREAM
COLLECT = (topics.ENROLLMENT_EVENTS,)


@pytest.fixture(scope="module")
async def enrollment(stack: Stack) -> AsyncIterator[ServiceProcess]:
    # A group and a database of its own: no other module's enrollment service may take the
    # record this test blocks, and the lock it takes blocks only this service.
    service = ServiceProcess("enrollment", stack, env={
        "ENROLLMENT_CONSUMER_STALL_SECONDS": "2",
        "ENROLLMENT_CONSUMER_GROUP": stack.prefix + "stall-health",
        "ENROLLMENT_DATABASE_URL": stack.db_url("enrollment") + "_stall",
    })
    service.start()
    await service.wait_ready()
    yield service
    service.stop()


def healthz(service: ServiceProcess) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/healthz", timeout=2) as r:
            return int(r.status), orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), orjson.loads(exc.read())


async def test_healthz_fails_while_a_batch_makes_no_progress_and_recovers_when_it_commits(
    enrollment: ServiceProcess, producer: Producer, collector: Collector,
) -> None:
    assert healthz(enrollment)[0] == 200
    conn = await enrollment.db()
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE")
        ref = b.ref()
        await producer.event(UP, "skills.training.TraineeEnrolled.v1",
                             b.enrolled(ref, b.national_id()), subject=ref)
        _status, body = await wait_for(
            lambda: (s := healthz(enrollment))[0] == 503 and s, 30, "/healthz to fail")
        assert body["status"] == "stalled" and body["seconds_without_progress"] >= 2
        await lock.rollback()
    finally:
        await conn.close()
    await collector.wait_events(topics.ENROLLMENT_EVENTS, "EnrollmentAccepted.v1",
                                where=lambda e: e["data"]["enrollment_ref"] == ref)
    await wait_for(lambda: healthz(enrollment)[0] == 200, 30, "/healthz to recover")
