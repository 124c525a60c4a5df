"""Pausing Python's cyclic garbage collector while the daemon's sync builds and stages its
records.

A large snapshot allocates container objects by the million, none in a cycle, and every
few hundred allocations start a collection whose older generations walk every object alive
(SQLAlchemy's and the records). Reference counting still frees everything at once;
the collector runs again when the sync is over. Only the daemon, which keeps the collector
on between syncs, pauses it: a one-shot command runs without it altogether
(:mod:`regionsync.__main__`), and the library leaves it alone.
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
