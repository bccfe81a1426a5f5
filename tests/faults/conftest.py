"""Fixtures of the fault tests: one private Kafka and PostgreSQL for the package, wiped after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.private import PrivateStack


@pytest.fixture(scope="package")
def private() -> Iterator[PrivateStack]:
    stack = PrivateStack()
    try:
        stack.start()
        yield stack
    finally:
        stack.wipe()
