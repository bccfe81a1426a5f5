"""Fixtures: the real stack (Kafka and PostgreSQL started by `make test`), isolated per session."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from tests.harness import KAFKA, Collector, Producer, Stack


def _reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    if not _reachable(KAFKA) or not _reachable("127.0.0.1:5432"):
        pytest.fail("Kafka (127.0.0.1:9092) and PostgreSQL (127.0.0.1:5432) must be running: "
                    "run the tests with `make test`, which starts them")
    world = Stack()
    await world.create_topics()
    yield world
    await world.drop()


@pytest.fixture(scope="module")
async def producer(stack: Stack) -> AsyncIterator[Producer]:
    async with Producer(stack) as p:
        yield p


@pytest.fixture(scope="module")
async def collector(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Collector]:
    """Reads, from the beginning, the topics the test module names in ``COLLECT``."""
    async with Collector(stack, request.module.COLLECT) as c:
        yield c
