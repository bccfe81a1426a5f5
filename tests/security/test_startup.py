"""Outside development a service refuses development secrets and an empty token table at start."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from shared.runtime.settings import DEV_PERSON_ID_SECRET
from services.enrollment.config import DEV_DATA_KEY
from tests.harness import ServiceProcess, Stack, wait_for

from .conftest import API_TOKENS

pytestmark = [pytest.mark.security, pytest.mark.integration]

@pytest.fixture(scope="module")
async def scratch() -> AsyncIterator[Stack]:
    stack = Stack()
    yield stack
    await stack.drop()


async def refusal(service: ServiceProcess) -> str:
    """Start the service, wait for it to exit, and return its last words; it must exit non-zero."""
    service.start()
    assert service.proc is not None
    await wait_for(lambda: service.proc.poll() is not None, 30, f"{service.name} to exit")  # type: ignore[union-attr]  # started above
    assert service.proc.returncode != 0
    return service.log_tail(1)  # the log file is the stack's: earlier starts wrote above


async def test_production_with_every_development_default_refuses_to_start_and_names_each(scratch) -> None:
    said = await refusal(ServiceProcess("enrollment", scratch, env={
        "ENVIRONMENT": "production", "PERSON_ID_SECRET": DEV_PERSON_ID_SECRET,
        "DATA_ENCRYPTION_KEY": DEV_DATA_KEY, "API_TOKENS": ""}))
    assert "refusing to start" in said
    for setting in ("PERSON_ID_SECRET", "DATA_ENCRYPTION_KEY", "API_TOKENS"):
        assert setting in said


async def test_production_with_only_the_development_data_key_left_refuses_to_start(scratch) -> None:
    said = await refusal(ServiceProcess("enrollment", scratch, env={
        "ENVIRONMENT": "production", "DATA_ENCRYPTION_KEY": DEV_DATA_KEY, "API_TOKENS": API_TOKENS,
        "PERSON_ID_SECRET": "Vq3x-Jk9Lm2Pz7Rt5Wy8Nb4Hc6Df1Gs0Ae_Qu", "ALLOW_INSECURE_TRANSPORT": "true"}))
    assert "DATA_ENCRYPTION_KEY" in said
    assert "PERSON_ID_SECRET" not in said and "API_TOKENS" not in said


async def test_production_without_api_tokens_refuses_to_start(scratch) -> None:
    said = await refusal(ServiceProcess("subsidy", scratch, env={
        "ENVIRONMENT": "production", "API_TOKENS": ""}))
    assert "API_TOKENS is empty" in said


async def test_a_token_table_holding_a_plain_token_refuses_to_start_even_in_development(scratch) -> None:
    plain = orjson.dumps({"my-secret-token-value": {"role": "auditor"}}).decode()
    said = await refusal(ServiceProcess("assessment", scratch, env={"API_TOKENS": plain}))
    assert "store hashes, never tokens" in said
    assert "my-secret-token-value" not in said
