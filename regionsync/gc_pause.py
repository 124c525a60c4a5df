"""Pausing Python's cyclic garbage collector while a sync builds and stages its records.

A 100,000-region snapshot allocates about a million container objects, none in a cycle.
Each 700 allocations start a collection, and the older generations' collections walk
every object alive (SQLAlchemy's and the records): measured on a 100,000-region ``run``,
the collector took 0.2-0.4 s of a 1.3 s process. Reference counting still frees
everything at once; the collector runs again when the sync is over.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (re-entrant; restores the old state)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["paused"]
