"""``status --json``, ``/healthz`` and the ``sync_health`` view report the same facts under
the same names."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from regionsync.daemon.metrics import DaemonMetrics
from regionsync.status import gather
from regionsync.store import runs
from tests.support import as_utc

SHARED = ("last_success_at", "consecutive_failures", "active_regions", "removed_regions")


def record(engine: Engine, *statuses: str) -> None:
    with engine.begin() as connection:
        for status in statuses:
            if status == "skipped":
                runs.open_run(connection, trigger="cli", source="test", skipped="held")
                continue
            run_id = runs.open_run(connection, trigger="cli", source="test")
            runs.finish_run(connection, run_id, status=status)


def view(engine: Engine) -> dict[str, object]:
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM sync_health")).mappings().one()
    return dict(row)


def test_status_healthz_and_the_view_agree(engine: Engine) -> None:
    for statuses, failures in [
        ((), 0),
        (("failed", "skipped", "failed"), 2),  # none succeeded yet: every failure counts
        (("succeeded",), 0),
        (("failed", "skipped", "failed", "running"), 2),
    ]:
        record(engine, *statuses)
        report = gather(engine).as_json()
        metrics = DaemonMetrics(max_age=timedelta(hours=1))
        metrics.record_status(gather(engine))
        _, health = metrics.health()
        expected = view(engine)
        assert expected["consecutive_failures"] == failures
        for name in SHARED:
            if name == "last_success_at":
                values = [as_utc(x) for x in (report[name], health[name], expected[name])]
            else:
                values = [report[name], health[name], expected[name]]
            assert values[0] == values[1] == values[2], (name, values)
        assert "last_success_age_seconds" in report
        assert "last_success_age_seconds" in health
