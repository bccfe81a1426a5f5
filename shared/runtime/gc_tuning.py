"""The cyclic garbage collector's tuning for the services (``GC_THRESHOLD``,
``GC_PAUSE_IN_BATCH``): long-running, allocation-heavy processes."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.runtime import metrics

_paused = 0  # batches inside `paused` right now (one per consumer; nested calls count too)
_disabled_here = False  # whether `paused` turned the collector off (and so must turn it on)
_started = 0.0


def tune_gc(threshold: int) -> None:
    """Fewer cyclic garbage collections (``GC_THRESHOLD``): what is alive once the service is
    imported and built (modules, classes, settings, policies) is frozen out of every scan, and
    the first generation is collected every ``threshold`` net allocations instead of 700.
    Reference counting still frees almost everything a batch allocates the moment it is done."""
    measure_gc()
    if threshold <= 0:
        return
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)


def measure_gc() -> None:
    """Count the collector's seconds per generation in ``skills_gc_seconds_total`` (once)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        metrics.GC_SECONDS.labels(generation=str(info["generation"])).inc(
            time.perf_counter() - _started)


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection while a batch is handled (``GC_PAUSE_IN_BATCH``).

    A batch's objects (decoded records, person states, rows) stay alive until it ends, and a
    first-generation collection walks every one of them that was allocated since the last: at
    a threshold of 50,000 the subsidy's collections took about 30 ms each, some 10 % of its
    time per record, and found almost nothing (reference counting frees the batch). Paused,
    the collector runs after the batch, when what it would walk has been freed. Cycles made
    meanwhile wait for that collection; a collector that was off stays off."""
    global _paused, _disabled_here
    if _paused == 0:
        _disabled_here = gc.isenabled()
        gc.disable()
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0 and _disabled_here:
            gc.enable()
