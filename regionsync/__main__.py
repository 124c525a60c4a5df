"""``python -m regionsync`` and the ``regionsync`` console script (:func:`program`).

The process-wide settings that make every command cheaper are made here and nowhere else,
so that importing regionsync as a library changes nothing in its user's process:

- A command runs with the cyclic garbage collector off. A one-shot process frees its memory
  by reference counting, and all of it at exit; the collections would only walk the objects
  it still uses: the hundreds of thousands that importing SQLAlchemy, psycopg and structlog
  allocates, then a sync's records. The daemon, which runs for days, turns it back on
  (:func:`regionsync.daemon.loop.run_daemon`).
- At exit, every object still alive is frozen (``gc.freeze``): the interpreter's last
  collections, which run even with the collector off, would otherwise walk every module,
  class and function it loaded, for nothing.
- structlog imports ``rich`` and ``better_exceptions``, when they happen to be installed
  (``rich`` comes with dlt, the benchmark's peer), to render tracebacks. regionsync renders
  its own, plainly and never with frame locals (see :mod:`regionsync.logs`), so the program
  tells Python they are absent and spares itself their import.
"""

import gc
import sys

#: Imported by structlog for traceback renderers regionsync never uses.
UNUSED_RENDERERS = ("rich", "better_exceptions")


def program() -> int:
    for name in UNUSED_RENDERERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    gc.disable()  # a one-shot command frees its memory by reference counting, and at exit
    from regionsync.cli.program import main

    status = main()
    gc.freeze()  # the last collections at exit would walk every object loaded, for nothing
    return status


if __name__ == "__main__":
    raise SystemExit(program())
