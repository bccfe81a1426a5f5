"""Issue #19 on the real Kafka and PostgreSQL: production starts and refusals, the person-id
secret's fingerprint, policy versions, migration credentials, sealed dead letters and parked
records with key rotation and the DLQ tool, audited and rate-limited lookups, and rejection
details that never name another agency's enrollment."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from shared.contract import topics
from shared.contract.envelope import encode_raw
from shared.runtime import crypto, db
from shared.runtime.auth import hash_token
from shared.runtime.service import secret_fingerprint
from tests import builders as b
from tests.harness import ROOT, SECRET, Collector, Producer, ServiceProcess, Stack, free_port, wait_for

from .conftest import API_TOKENS


async def refusal(service: ServiceProcess) -> str:
    """Start the service, wait for it to exit non-zero, and return what this start logged."""
    path = ROOT / ".state" / "test-logs" / f"{service.stack.prefix}{service.name}.log"
    before = path.stat().st_size if path.exists() else 0
    service.start()
    assert service.proc is not None and service.log_path is not None
    await wait_for(lambda: service.proc.poll() is not None, 60, f"{service.name} to exit")  # type: ignore[union-attr]  # started above
    assert service.proc.returncode != 0
    with service.log_path.open("rb") as log:
        log.seek(before)
        return log.read().decode(errors="replace")

pytestmark = [pytest.mark.security, pytest.mark.integration]

STRONG = "Vq3x-Jk9Lm2Pz7Rt5Wy8Nb4Hc6Df1Gs0Ae_Qu"
UP = topics.TRAINING_UPSTREAM
ENROLLED = "skills.training.TraineeEnrolled.v1"
ATTENDED = "skills.training.AttendanceRecorded.v1"


@pytest.fixture(scope="module")
async def scratch() -> AsyncIterator[Stack]:
    stack = Stack()
    await stack.create_topics()
    yield stack
    await stack.drop()


def production(**env: str) -> dict[str, str]:
    return {"ENVIRONMENT": "production", "PERSON_ID_SECRET": STRONG, "API_TOKENS": API_TOKENS,
            "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(), **env}


async def fetchval(service: ServiceProcess, sql: str, *args: object) -> object:
    conn = await service.db()
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


# ---- production: placeholders, transport, /metrics, catalogues -----------------------------------


async def test_production_refuses_the_k8s_placeholder_secret_and_plaintext_transport(scratch) -> None:
    said = await refusal(ServiceProcess("assessment", scratch, env=production(
        PERSON_ID_SECRET="replace-with-a-long-random-secret")))
    assert "PERSON_ID_SECRET is a known placeholder" in said
    assert "KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in said and "sslmode is unset" in said
    assert "replace-with-a-long-random-secret" not in said


async def test_production_refuses_an_enrollment_service_without_its_catalogues(scratch, tmp_path) -> None:
    said = await refusal(ServiceProcess("enrollment", scratch, env=production(
        ALLOW_INSECURE_TRANSPORT="true", ENROLLMENT_CATALOGUE_DIR=str(tmp_path / "missing"))))
    assert "ENROLLMENT_CATALOGUE_DIR" in said and "is not a directory" in said


async def test_production_with_the_transport_waived_serves_metrics_only_with_a_token_or_on_its_port(scratch) -> None:
    service = ServiceProcess("assessment", scratch, env=production(ALLOW_INSECURE_TRANSPORT="true"))
    service.start()
    try:
        await service.wait_ready()
        url = f"http://127.0.0.1:{service.port}"
        token = {"authorization": "Bearer test-token-auditor-0123456789abcdef"}
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{url}/metrics")).status_code == 401
            assert (await client.get(f"{url}/metrics", headers=token)).status_code == 200
            assert (await client.get(f"{url}/healthz")).status_code == 200
            document = (await client.get(f"{url}/openapi.json", headers=token)).json()
        assert {"/persons/{person_id}/certificates", "/certificates/{certificate_id}"} <= set(document["paths"])
        assert "ALLOW_INSECURE_TRANSPORT" in service.log_path.read_text()  # type: ignore[union-attr]  # started above
    finally:
        service.stop()
    metrics_port = free_port()
    service = ServiceProcess("assessment", scratch, env=production(
        ALLOW_INSECURE_TRANSPORT="true", ASSESSMENT_METRICS_PORT=str(metrics_port)))
    service.start()
    try:
        await service.wait_ready()
        async with httpx.AsyncClient(timeout=10) as client:
            separate = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert separate.status_code == 200 and "skills_" in separate.text
            assert (await client.get(f"http://127.0.0.1:{service.port}/metrics")).status_code == 401
    finally:
        service.stop()


# ---- the person-id secret's fingerprint -------------------------------------------------------------


async def test_a_database_built_with_one_person_id_secret_refuses_another(scratch) -> None:
    first = ServiceProcess("subsidy", scratch)
    first.start()
    try:
        await first.wait_ready()
    finally:
        first.stop()
    recorded = await fetchval(first, "SELECT fingerprint FROM secret_fingerprint")
    assert recorded == secret_fingerprint(SECRET) and SECRET not in str(recorded)
    said = await refusal(ServiceProcess("subsidy", scratch, env={"PERSON_ID_SECRET": STRONG}))
    assert "PERSON_ID_SECRET does not match" in said
    assert secret_fingerprint(STRONG)[:16] in said and secret_fingerprint(SECRET)[:16] in said
    assert STRONG not in said and SECRET not in said
    assert await fetchval(first, "SELECT fingerprint FROM secret_fingerprint") == recorded
    again = ServiceProcess("subsidy", scratch)  # the right secret starts again
    again.start()
    try:
        await again.wait_ready()
    finally:
        again.stop()
    # Rotation is a new generation (docs/SECURITY.md §4): a fresh database records the new
    # secret's fingerprint at its first start.
    generation = Stack()
    await generation.create_topics()
    try:
        rotated = ServiceProcess("subsidy", generation, env={"PERSON_ID_SECRET": STRONG})
        rotated.start()
        try:
            await rotated.wait_ready()
        finally:
            rotated.stop()
        assert await fetchval(rotated, "SELECT fingerprint FROM secret_fingerprint") == secret_fingerprint(STRONG)
    finally:
        await generation.drop()


# ---- policy versions --------------------------------------------------------------------------


async def test_a_policy_version_reloaded_with_other_content_refuses_to_start_naming_both_hashes(tmp_path) -> None:
    stack = Stack()
    await stack.create_topics()
    try:
        policies = tmp_path / "policies"
        shutil.copytree(ROOT / "services/subsidy/policies", policies, ignore=shutil.ignore_patterns("drafts"))
        env = {"SUBSIDY_POLICY_DIR": str(policies)}
        service = ServiceProcess("subsidy", stack, env=env)
        service.start()
        try:
            await service.wait_ready()
        finally:
            service.stop()
        path = policies / "suqian.json"
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        raw = json.loads(path.read_text())
        raw["description"] = "changed without a new version"
        path.write_text(json.dumps(raw, ensure_ascii=False))
        after = hashlib.sha256(path.read_bytes()).hexdigest()
        said = await refusal(ServiceProcess("subsidy", stack, env=env))
        assert f"suqian@{raw['version']}" in said and before in said and after in said
        # Closing the version's range to introduce the next one is no change of content.
        raw = json.loads((ROOT / "services/subsidy/policies/suqian.json").read_text())
        path.write_text(json.dumps({**raw, "valid_to": "2029-12-31"}, ensure_ascii=False))
        (policies / "suqian-2030.json").write_text(json.dumps(
            {**raw, "version": "2030-01", "valid_from": "2030-01-01"}, ensure_ascii=False))
        closed = ServiceProcess("subsidy", stack, env=env)
        closed.start()
        try:
            await closed.wait_ready()
        finally:
            closed.stop()
    finally:
        await stack.drop()


# ---- migrations with their own credentials ---------------------------------------------------------


async def test_migrate_uses_the_migration_database_url(scratch) -> None:
    service = ServiceProcess("assessment", scratch)
    env = service.environment()
    target = scratch.db_url("assessment") + "_migrated"
    env["ASSESSMENT_MIGRATION_DATABASE_URL"] = target
    env["ASSESSMENT_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/unreachable"
    subprocess.run([sys.executable, "-m", "services.assessment", "migrate"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    import asyncpg
    conn = await asyncpg.connect(target)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == db.head(
            ROOT / "services" / "assessment")
        assert await conn.fetchval("SELECT to_regclass('secret_fingerprint') IS NOT NULL")
    finally:
        await conn.close()


# ---- personal data sealed at rest, key rotation, the DLQ tool -------------------------------------


def tool(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)


async def test_dead_letters_and_parked_records_are_sealed_keys_rotate_and_the_dlq_tool_replays(scratch) -> None:
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stack = Stack()
    await stack.create_topics()
    keys = {"DATA_ENCRYPTION_KEY": first, "ENROLLMENT_PENDING_WAIT_SECONDS": "3600"}
    service = ServiceProcess("enrollment", stack, env=keys)
    try:
        nid, ref = b.national_id(), b.ref()
        enrolled = encode_raw(ENROLLED, b.enrolled(ref, nid), id=f"e-{ref}", source="/i",
                              subject=ref, agencyid="atlantis", time="2026-03-01T09:00:00+08:00")
        waiting = b.ref()
        attended = encode_raw(ATTENDED, b.attendance(waiting, "2026-03-02"), id=f"a-{waiting}",
                              source="/i", subject=waiting, agencyid="suqian",
                              time="2026-03-02T09:00:00+08:00")
        service.start()
        await service.wait_ready()
        async with Producer(stack) as producer, Collector(stack, [topics.dlq("enrollment"), UP]) as seen:
            await producer.raw(UP, enrolled, key=ref)
            await producer.raw(UP, attended, key=waiting)
            accepted = b.ref()  # an identity stored (sealed) in the trainee table
            await producer.event(UP, ENROLLED, b.enrolled(accepted, b.national_id()), subject=accepted)
            await wait_for(lambda: fetchval(service, "SELECT count(*) = 1 FROM trainee"), 60, "the identity")
            await wait_for(lambda: seen.dead_letters(topics.dlq("enrollment")), 60, "the dead letter")
            [letter] = seen.dead_letters(topics.dlq("enrollment"))
            assert letter.headers["error-code"] == "unknown_agency"
            assert letter.headers[crypto.KEY_ID_HEADER] == crypto.key_id(first)
            assert letter.sealed is not None
            assert nid.encode() not in letter.sealed and "张三".encode() not in letter.sealed
            assert crypto.Keyring.of([first]).open(letter.sealed) == enrolled
            await wait_for(lambda: fetchval(service, "SELECT count(*) FROM pending"), 30, "the parked record")
            parked = bytes(await fetchval(service, "SELECT value FROM pending"))  # type: ignore[call-overload]  # a bytea column
            assert waiting.encode() not in parked
            assert crypto.Keyring.of([first]).open(parked) == attended
            service.stop()

            # Rotation: the new key is current, the old one still opens; re-seal what rests.
            env = {**service.environment(), "DATA_ENCRYPTION_KEY": second,
                   "DATA_ENCRYPTION_PREVIOUS_KEYS": first}
            rotated = tool("shared.runtime.crypto", "rotate", "enrollment", env=env)
            assert rotated.returncode == 0, rotated.stderr
            assert "1 parked records" in rotated.stdout
            resealed = bytes(await fetchval(service, "SELECT value FROM pending"))  # type: ignore[call-overload]  # a bytea column
            assert crypto.Keyring.of([second]).open(resealed) == attended
            assert "1 identities" in rotated.stdout
            conn = await service.db()
            try:
                for row in await conn.fetch("SELECT national_id_enc, name_enc FROM trainee"):
                    crypto.Keyring.of([second]).open(bytes(row["national_id_enc"]))
                    crypto.Keyring.of([second]).open(bytes(row["name_enc"]))
            finally:
                await conn.close()

            service.start(DATA_ENCRYPTION_KEY=second, DATA_ENCRYPTION_PREVIOUS_KEYS=first)
            await service.wait_ready()
            nid2, ref2 = b.national_id(), b.ref()
            enrolled2 = encode_raw(ENROLLED, b.enrolled(ref2, nid2), id=f"e-{ref2}", source="/i",
                                   subject=ref2, agencyid="atlantis", time="2026-03-01T09:00:00+08:00")
            await producer.raw(UP, enrolled2, key=ref2)
            await wait_for(lambda: len(seen.dead_letters(topics.dlq("enrollment"))) >= 2, 60, "a second dead letter")
            newer = seen.dead_letters(topics.dlq("enrollment"))[1]
            assert newer.headers[crypto.KEY_ID_HEADER] == crypto.key_id(second)

            # The tool opens both (the old key as a previous one) and replays them byte for byte.
            shown = tool("tools.dlq", "show", "enrollment", env=env)
            assert shown.returncode == 0, shown.stderr
            assert "2 dead letter(s)" in shown.stdout and ref in shown.stdout and ref2 in shown.stdout
            refused = tool("tools.dlq", "show", "enrollment", env={**env, "DATA_ENCRYPTION_PREVIOUS_KEYS": ""})
            assert refused.returncode != 0 and crypto.key_id(first) in refused.stderr
            before = len([r for r in seen.records if r.topic == UP])
            replayed = tool("tools.dlq", "replay", "enrollment", "--code", "unknown_agency", "--yes", env=env)
            assert replayed.returncode == 0, replayed.stderr
            assert "replayed 2 dead letter(s)" in replayed.stdout
            await wait_for(lambda: len([r for r in seen.records if r.topic == UP]) >= before + 2, 30, "the replay")
            again = [r for r in seen.records if r.topic == UP][before:]
            assert {(r.key, r.value) for r in again} == {(ref, enrolled), (ref2, enrolled2)}
    finally:
        service.stop()
        await stack.drop()


# ---- lookups: granted, rate-limited, audited; rejection details ------------------------------------


async def test_lookups_are_granted_per_token_rate_limited_and_audited_without_the_national_id(scratch) -> None:
    service = ServiceProcess("enrollment", scratch, env={
        "API_TOKENS": API_TOKENS, "ENROLLMENT_LOOKUP_RATE_PER_MINUTE": "3"})
    service.start()
    try:
        await service.wait_ready()
        url = f"http://127.0.0.1:{service.port}/persons/lookup"
        nid = b.national_id()
        granted = {"authorization": "Bearer test-token-suqian-0123456789abcdef"}
        reader = {"authorization": "Bearer test-token-suqian-reader-0123456789"}
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(url, headers=reader, json={"national_id": nid})).status_code == 403
            answers = [(await client.post(url, headers=granted, json={"national_id": nid})).status_code
                       for _ in range(4)]
            assert answers == [200, 200, 200, 429]
            auditor = {"authorization": "Bearer test-token-auditor-0123456789abcdef"}
            assert (await client.post(url, headers=auditor, json={"national_id": nid})).status_code == 200
            hostile = await client.post(url, headers=auditor, content=b"[" * 50_000 + b"]" * 50_000)
            assert hostile.status_code in (400, 413)
        conn = await service.db()
        try:
            rows = [dict(r) for r in await conn.fetch("SELECT * FROM lookup_audit ORDER BY seq")]
        finally:
            await conn.close()
        suqian = hash_token("test-token-suqian-0123456789abcdef")[7:23]
        assert [(r["role"], r["agency"], r["token"], r["outcome"]) for r in rows[:4]] == [
            ("agency", "suqian", suqian, "not_found")] * 3 + [("agency", "suqian", suqian, "rate_limited")]
        assert rows[4]["role"] == "auditor" and rows[4]["person_id"] == b.pid(nid)
        assert all(r["at"] is not None for r in rows)
        assert nid not in orjson.dumps(rows, default=str).decode()
    finally:
        service.stop()


async def test_a_duplicate_enrollment_rejection_never_names_another_agencys_enrollment(scratch) -> None:
    service = ServiceProcess("enrollment", scratch)
    service.start()
    try:
        await service.wait_ready()
        nid = b.national_id()
        first, foreign, own = b.ref(), b.ref(), b.ref()
        async with Producer(scratch) as producer, Collector(scratch, [topics.ENROLLMENT_EVENTS]) as seen:
            await producer.event(UP, ENROLLED, b.enrolled(first, nid), subject=first, agency="suqian")
            await seen.wait_events(topics.ENROLLMENT_EVENTS, "EnrollmentAccepted.v1",
                                   where=lambda e: e["data"]["enrollment_ref"] == first)
            await producer.event(UP, ENROLLED, b.enrolled(foreign, nid), subject=foreign, agency="baoshan")
            await producer.event(UP, ENROLLED, b.enrolled(own, nid), subject=own, agency="suqian")
            found = await seen.wait_events(
                topics.ENROLLMENT_EVENTS, "EnrollmentRejected.v1", 2,
                where=lambda e: e["data"]["enrollment_ref"] in (foreign, own))
        detail = {e["data"]["enrollment_ref"]: e["data"]["detail"] for e in found}
        assert detail[foreign] and first not in detail[foreign]  # baoshan never learns suqian's ref
        assert first in detail[own]  # suqian is told which of its own enrollments it duplicates
        assert all(e["data"]["reason"] == "duplicate_enrollment" for e in found)
    finally:
        service.stop()
