"""``python -m regionsync`` and the ``regionsync`` console script (:func:`program`).

Two things make the start of every command cheaper, both measured on ``python -c``:

- The command's modules are imported with the cyclic garbage collector paused: importing
  SQLAlchemy, psycopg and structlog allocates a few hundred thousand objects, none of them
  garbage, and the collections they would trigger cost about a tenth of the start-up
  (0.28 s with them, 0.25 s without).
- structlog imports ``rich`` and ``better_exceptions``, when they happen to be installed
  (``rich`` comes with dlt, the benchmark's peer), to render tracebacks. regionsync renders
  its own, plainly and never with frame locals (see :mod:`regionsync.logs`), so the program
  tells Python they are absent: ``import structlog`` takes 0.06 s instead of 0.09 s.
"""

import sys

from regionsync import gc_pause

#: Imported by structlog for traceback renderers regionsync never uses.
UNUSED_RENDERERS = ("rich", "better_exceptions")


def program() -> int:
    for name in UNUSED_RENDERERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    with gc_pause.paused():
        from regionsync.cli import entry
    return entry()


if __name__ == "__main__":
    raise SystemExit(program())
