"""``regionsync worker [--concurrency N]``: one replica of the fleet (docs/fleet.md).

Any number run at once against one PostgreSQL database; procrastinate hands each job to
one of them. ``--concurrency`` syncs run side by side in this process (threads: a sync is
mostly waiting on Kaleyra and PostgreSQL). Stopping: SIGTERM or SIGINT takes no new job and
lets the running syncs finish (each within its fetch budget and its apply), then exits 0;
procrastinate handles the signals. A database outage: the worker's queries fail and are
retried by procrastinate's polling, the syncs' by the next dispatch.
"""

from __future__ import annotations

import gc
import os
from datetime import UTC, datetime

import structlog

from regionsync.errors import ConfigError
from regionsync.settings import Settings

logger = structlog.get_logger("regionsync.fleet.worker")

MAX_CONCURRENCY = 256


def run_worker(settings: Settings, *, concurrency: int) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Raises :class:`ConfigError` or
    :class:`~regionsync.errors.SchemaError` (exit 2) when it cannot start."""
    if settings.database_url.get_backend_name() != "postgresql":
        raise ConfigError(
            "REGIONSYNC_DATABASE_URL",
            "the fleet (regionsync worker) needs PostgreSQL: its task queue lives in the "
            "database; on the embedded SQLite file, run `regionsync daemon`",
        )
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError("--concurrency", f"must be from 1 to {MAX_CONCURRENCY}")
    from regionsync.daemon.schedule import load_schedule
    from regionsync.fleet.app import (
        HEARTBEAT_SECONDS,
        QUEUE,
        STALLED_AFTER_SECONDS,
        make_app,
        worker_name,
    )
    from regionsync.store.engine import create_engine, translated_errors
    from regionsync.store.schema import require_current

    gc.enable()  # a process that runs for days (the program starts with it off)
    period = load_schedule(settings).period(now=datetime.now(UTC))
    # Each sync holds its lock's connection and may open one more to record its end.
    engine = create_engine(settings, pool_size=2 * concurrency + 2)
    try:
        with translated_errors("reading the schema revision"):
            require_current(engine)
        app, _stats = make_app(settings, engine, period=period)
        logger.info(
            "worker.started",
            concurrency=concurrency,
            schedule=settings.schedule,
            database=settings.database_display,
            pid=os.getpid(),
        )
        app.run_worker(
            queues=[QUEUE],
            concurrency=concurrency,
            name=worker_name(),
            delete_jobs="always",
            update_heartbeat_interval=HEARTBEAT_SECONDS,
            stalled_worker_timeout=STALLED_AFTER_SECONDS,
        )
        logger.info("worker.stopped")
        return 0
    finally:
        engine.dispose()


__all__ = ["run_worker"]
