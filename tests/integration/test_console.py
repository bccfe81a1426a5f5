"""The review console in headless Chromium (POLICY.md §6): a reviewer signs in, releases one
hold and denies another and sees the grant and the rejection appear; another agency's reviewer
sees neither. The subsidy service runs on the real Kafka and PostgreSQL, fed internal events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.contract import topics
from shared.runtime.auth import hash_token
from tests import builders as b
from tests.browser import CHROMIUM, Browser
from tests.harness import Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

ENR = topics.ENROLLMENT_EVENTS
ASM = topics.ASSESSMENT_EVENTS
OUT = topics.SUBSIDY_EVENTS
COLLECT = (OUT,)
TOKENS = {
    "suqian-reviewer-token": {"role": "reviewer", "agency": "suqian", "name": "suqian-clerk-7"},
    "beijing-reviewer-token": {"role": "reviewer", "agency": "beijing", "name": "beijing-clerk-2"},
}


@pytest.fixture(scope="module")
async def subsidy(stack: Stack) -> AsyncIterator[ServiceProcess]:
    tokens = json.dumps({hash_token(t): e for t, e in TOKENS.items()})
    service = ServiceProcess("subsidy", stack, env={"API_TOKENS": tokens}).start()
    await service.wait_ready()
    yield service
    service.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is absent: deploy/local/bootstrap.sh installs the Debian package chromium")
    opened = await Browser(tmp_path / "profile").open()
    yield opened
    await opened.close()


async def two_holds(producer: Producer, collector) -> tuple[str, str, str]:  # noqa: ANN001
    """A Suqian trainee whose enrollment is flagged: SQ-LIVING (30 CNY x 10 days) held at
    completion, SQ-SAFETY (300 CNY, employer) held at the certificate."""
    pid, ref = b.pid(b.national_id()), b.ref()
    course = b.enrolled(ref, "x", course={"training_type": "safety", "level": None})["course"]
    accepted = {"enrollment_ref": ref, "person_id": pid, "institution_id": "INST-T",
                "categories": ["low_income"], "rural": False, "hukou_agency": "suqian",
                "insured_months": 14, "hired_on": None,
                "employer": {"id": "EMP-1", "insured": True, "hardship_certified": False,
                             "sector": None, "employee_model_domestic": False},
                "course": course, "fee": {"amount_fen": 50000, "payer": "employer"},
                "accepted_on": "2026-03-01"}
    cert = "CERT-" + uuid.uuid4().hex[:12]
    facts: list[tuple[str, str, dict[str, Any]]] = [
        (ENR, "EnrollmentAccepted.v1", accepted),
        (ENR, "EnrollmentFlagged.v1", {
            "enrollment_ref": ref, "person_id": pid, "check": "daily_hours_exceeded",
            "detail": "14 hours attended on 2026-03-05 over 2 enrollments (more than 12)",
            "flagged_on": "2026-03-05"}),
        (ENR, "TrainingCompleted.v1", {
            "enrollment_ref": ref, "person_id": pid, "course": course, "hours_attended": 80,
            "days_attended": 10, "attendance_rate": 1.0, "completed_on": "2026-03-20"}),
        (ASM, "CertificateIssued.v1", {
            "certificate_id": cert, "assessment_ref": f"EV/{cert}", "person_id": pid,
            "enrollment_ref": ref, "occupation_code": course["occupation_code"], "level": None,
            "certificate_kind": "training_completion", "issued_on": "2026-03-25"}),
    ]
    for topic, type, data in facts:
        prefix = "skills.enrollment." if topic == ENR else "skills.assessment."
        await producer.event(topic, prefix + type, data, subject=pid, agency="suqian",
                             source=f"/services/{prefix.split('.')[1]}")
    held = await collector.wait_events(OUT, "SubsidyHeld.v1", 2,
                                       where=lambda e: e["data"]["person_id"] == pid)
    by_rule = {h["data"]["rule"]: h["data"]["grant_id"] for h in held}
    return pid, by_rule["SQ-LIVING"], by_rule["SQ-SAFETY"]


async def sign_in(browser: Browser, base: str, token: str) -> str:
    await browser.goto(f"{base}/console/signin")
    await browser.eval(f"document.querySelector('#token').value = {json.dumps(token)}")
    return await browser.click("#signin", "/console/holds")


async def test_a_reviewer_releases_one_hold_and_denies_another_and_sees_the_grant_and_the_rejection(
    subsidy, producer, collector, browser
) -> None:
    pid, living, safety = await two_holds(producer, collector)
    base = f"http://127.0.0.1:{subsidy.port}"
    text = await browser.goto(f"{base}/console/holds", then="/console/signin")  # no session
    assert "Agency, reviewer or auditor token" in text

    text = await sign_in(browser, base, "suqian-reviewer-token")
    assert "suqian-clerk-7 (reviewer · suqian)" in text
    for grant in (living, safety):
        assert await browser.eval(f"!!document.getElementById('hold-{grant}')")
    assert "daily_hours_exceeded" in text and "300.00 CNY" in text
    cookies = (await browser.send("Network.getCookies"))["cookies"]
    [cookie] = [c for c in cookies if c["name"] == "skills_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert "skills_console" not in await browser.eval("document.cookie")
    # A form posted without the session's CSRF token is refused (and the page's CSP lets no
    # script fetch anything).
    assert await browser.eval(
        f"fetch('/console/holds/{living}/review', {{method: 'POST'}}).then(() => 'sent', () => 'blocked')"
    ) == "blocked"
    await browser.eval(
        "const f = document.createElement('form'); f.method = 'post';"
        f" f.action = '/console/holds/{living}/review'; const i = document.createElement('input');"
        " i.name = 'decision'; i.value = 'release'; f.appendChild(i); document.body.appendChild(f);"
        " window.__stale = 1; f.submit()")
    assert "The form has expired" in await browser.settle(f"/console/holds/{living}/review")
    text = await browser.goto(f"{base}/console/holds")
    assert await browser.eval(f"!!document.querySelector('#hold-{living} form.review')")

    await browser.eval(f"document.querySelector('#hold-{living} input[name=note]').value = 'sheets checked'")
    text = await browser.click(f"#hold-{living} button.release", "/console/holds")
    assert f"release {living}" in text
    await browser.eval(f"document.querySelector('#hold-{safety} input[name=note]').value = 'two places at once'")
    text = await browser.click(f"#hold-{safety} button.deny", "/console/holds")
    assert f"deny {safety}" in text

    async def decided() -> bool:
        await browser.goto(f"{base}/console/persons/{pid}")
        rows = await browser.eval(
            "[...document.querySelectorAll('tr.decision')].map(r => "
            "[r.classList.contains('grant') ? 'grant' : r.classList.contains('rejection') ? "
            "'rejection' : 'reversal', r.dataset.grant, r.dataset.status])")
        return ["grant", living, "released"] in rows and ["rejection", safety, "integrity_denied"] in rows
    await wait_for(decided, 60, "the release and the denial on the person's record")
    page = await browser.eval("document.body.innerText")
    assert "released on integrity review" in page and "denied on integrity review" in page
    assert "national" not in page.lower()
    [granted] = await collector.wait_events(OUT, "SubsidyGranted.v1",
                                            where=lambda e: e["data"]["grant_id"] == living)
    assert granted["data"]["amount_fen"] == 30000
    await collector.wait_events(OUT, "SubsidyRejected.v1",
                                where=lambda e: e["data"].get("grant_id") == safety)
    summary = await browser.goto(f"{base}/console/agencies/suqian")
    assert "Budget burn-down" in summary and "employment_subsidy" in summary

    await browser.goto(f"{base}/console/holds")
    await browser.click("#logout", "/console/signin")
    await browser.goto(f"{base}/console/holds", then="/console/signin")  # signed out

    # Beijing's reviewer sees neither hold, nor the person.
    text = await sign_in(browser, base, "beijing-reviewer-token")
    assert "beijing-clerk-2" in text
    html = await browser.eval("document.documentElement.outerHTML")
    assert living not in html and safety not in html and pid not in html
    text = await browser.goto(f"{base}/console/persons/{pid}")
    assert "No record of this person in your agency." in text
    assert pid not in await browser.eval("document.body.innerText")
