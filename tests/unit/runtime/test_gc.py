"""GC_THRESHOLD and GC_PAUSE_IN_BATCH: the services' cyclic garbage collector tuning
(shared/runtime/gc_tuning.py, shared/runtime/service.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.runtime.gc_tuning import _on_gc, measure_gc, paused, tune_gc
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
    assert EnrollmentSettings().gc_pause_in_batch is True
    monkeypatch.setenv("ENROLLMENT_GC_PAUSE_IN_BATCH", "false")
    assert EnrollmentSettings().gc_pause_in_batch is False


def test_paused_turns_the_collector_off_for_the_batch_and_back_on_after_it() -> None:
    assert gc.isenabled()
    with paused():
        assert not gc.isenabled()
        with paused():  # nested (a batch split by isolate): still off, on only at the end
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), paused():
        raise KeyError("a failed batch")
    assert gc.isenabled()


def test_paused_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collectors_seconds_are_counted_per_generation() -> None:
    measure_gc()
    measure_gc()  # once only
    assert gc.callbacks.count(_on_gc) == 1

    def seconds() -> float:
        return REGISTRY.get_sample_value("skills_gc_seconds_total", {"generation": "2"}) or 0.0

    before = seconds()
    cycles = []
    for _ in range(20_000):  # something for the collector to walk
        a: list[Any] = []
        a.append(a)
        cycles.append(a)
    del cycles
    gc.collect()
    assert seconds() > before
