"""``python -m regionsync`` and the ``regionsync`` console script (:func:`program`).

Two things make every command cheaper:

- A command runs with the cyclic garbage collector off. A one-shot process frees its memory
  by reference counting, and all of it at exit; the collections would only walk the objects
  it still uses: importing SQLAlchemy, psycopg and structlog allocates a few hundred
  thousand (``python -c 'import ...'`` takes 0.28 s with the collector on, 0.25 s off), and
  the collection set off when a 100,000-region ``run`` turned it back on walked its records
  for 35-40 ms. The daemon, which runs for days, turns it back on
  (:func:`regionsync.daemon.loop.run_daemon`).
- structlog imports ``rich`` and ``better_exceptions``, when they happen to be installed
  (``rich`` comes with dlt, the benchmark's peer), to render tracebacks. regionsync renders
  its own, plainly and never with frame locals (see :mod:`regionsync.logs`), so the program
  tells Python they are absent: ``import structlog`` takes 0.06 s instead of 0.09 s
  (measured on ``python -c``).
"""

import gc
import sys

#: Imported by structlog for traceback renderers regionsync never uses.
UNUSED_RENDERERS = ("rich", "better_exceptions")


def program() -> int:
    for name in UNUSED_RENDERERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    gc.disable()
    from regionsync.cli.commands import entry

    return entry()


if __name__ == "__main__":
    raise SystemExit(program())
