"""The cyclic garbage collector's tuning for the services (``GC_THRESHOLD``): long-running,
allocation-heavy processes."""

from __future__ import annotations

import gc


def tune_gc(threshold: int) -> None:
    """Fewer cyclic garbage collections (``GC_THRESHOLD``): what is alive once the service is
    imported and built (modules, classes, settings, policies) is frozen out of every scan, and
    the first generation is collected every ``threshold`` net allocations instead of 700.
    Reference counting still frees almost everything a batch allocates the moment it is done."""
    if threshold <= 0:
        return
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)
