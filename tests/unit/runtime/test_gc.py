"""GC_THRESHOLD: the services' cyclic garbage collector tuning (shared/runtime/service.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.runtime.gc_tuning import tune_gc
from services.enrollment.config import EnrollmentSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_threshold_is_raised_and_what_is_alive_is_frozen(restored_gc: None) -> None:
    gc.unfreeze()
    second, third = gc.get_threshold()[1:]
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, second, third)
    assert gc.get_freeze_count() > 1000  # the modules and classes imported so far


def test_zero_keeps_pythons_defaults(restored_gc: None) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_setting_defaults_to_50000_and_reads_the_services_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert EnrollmentSettings().gc_threshold == 50_000
    monkeypatch.setenv("ENROLLMENT_GC_THRESHOLD", "0")
    assert EnrollmentSettings().gc_threshold == 0
