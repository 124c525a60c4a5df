"""``regionsync worker [--concurrency N]``: one replica of the fleet (docs/fleet.md).

Any number run at once against one PostgreSQL database; procrastinate hands each job to
one of them. ``--concurrency`` syncs run side by side in this process (threads: a sync is
mostly waiting on Kaleyra and PostgreSQL). Stopping: SIGTERM or SIGINT takes no new job and
lets the running syncs finish (each within its fetch budget and its apply), then exits 0.
A database outage: procrastinate stops its worker when its LISTEN connection or heartbeat
loses the database; the replica starts one again every :data:`RESTART_SECONDS` until the
database answers (:func:`serve`), and the syncs that failed meanwhile are retried by the
next dispatch, and jobs it left ``doing`` by stalled-job recovery. With
``REGIONSYNC_METRICS_PORT`` set it serves ``/healthz`` and ``/metrics``
(:mod:`regionsync.fleet.metrics`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import signal
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from regionsync.errors import ConfigError
from regionsync.settings import Settings

if TYPE_CHECKING:
    from procrastinate import App

logger = structlog.get_logger("regionsync.fleet.worker")

MAX_CONCURRENCY = 256
#: After procrastinate's worker stopped on a database error, the wait before the next one.
RESTART_SECONDS = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    from regionsync.fleet.metrics import serving
    from regionsync.store.engine import create_engine, translated_errors
    from regionsync.store.schema import require_current

    gc.enable()  # a process that runs for days (the program starts with it off)
    period = load_schedule(settings).period(now=datetime.now(UTC))
    # Each sync holds its lock's connection and may open one more to record its end.
    engine = create_engine(settings, pool_size=2 * concurrency + 2)
    try:
        with translated_errors("reading the schema revision"):
            require_current(engine)
        with serving(settings, concurrency=concurrency, period=period) as metrics:
            app, _stats = make_app(settings, engine, period=period, stats=metrics)
            logger.info(
                "worker.started",
                concurrency=concurrency,
                schedule=settings.schedule,
                database=settings.database_display,
                pid=os.getpid(),
                metrics_port=settings.metrics_port,
            )
            serve(
                app,
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


def serve(app: App, **options: Any) -> None:
    """Run procrastinate's worker with ``options`` until SIGTERM or SIGINT, starting it again
    whenever it stops on its own: it does when one of its side tasks (the LISTEN connection,
    the heartbeat) loses the database, and a replica waits out an outage as the daemon does
    (docs/fleet.md, *Faults*)."""
    asyncio.run(_serve(app, options))


async def _serve(app: App, options: dict[str, Any]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # procrastinate runs a sync task in the loop's default executor, whose threads number
    # the CPUs + 4 (6 on two cores): --concurrency syncs at once need as many threads,
    # plus a few for the periodic tasks.
    threads = int(options.get("concurrency", 1)) + 4
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="regionsync-job")
    )
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    async with app.open_async():
        while not stopping.is_set():
            worker = asyncio.create_task(
                app.run_worker_async(install_signal_handlers=False, **options)
            )
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({worker, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if stopping.is_set() and not worker.done():
                # procrastinate's graceful stop: no new job, the running ones finish.
                worker.cancel()
            error: BaseException | None = None
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await worker
                except Exception as failure:  # noqa: BLE001  # a database error: wait, retry
                    error = failure
            if stopping.is_set():
                if error is not None:
                    logger.warning("worker.stop_incomplete", error=_first_line(error))
                break
            logger.warning(
                "worker.restarting",
                error=_first_line(error) if error else "procrastinate stopped its worker",
                retry_in_s=RESTART_SECONDS,
                hint="the database is likely unreachable; the replica waits for it",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RESTART_SECONDS)
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)


def _first_line(error: BaseException) -> str:
    """procrastinate's ConnectorException says "Database error."; its cause says which."""
    text = str(error.__cause__ or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["run_worker", "serve"]
