"""The daemon's metrics as an operator alerts on them: failure reasons from real failures, the
database's count of consecutive failures, rejected records and changes, in-progress and
last-attempt times, ``process_*`` and build info, ``HEAD /metrics``; and the shipped alert
rules and Grafana dashboard checked against a real daemon's ``/metrics`` (and by promtool,
when it is installed; CI installs it)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.daemon.metrics import FAILURE_REASONS, DaemonMetrics, MetricsServer, failure_reason
from regionsync.errors import RegionSyncError
from regionsync.source.kaleyra import RetryPolicy
from regionsync.status import StatusReport, gather
from regionsync.store.runs import Counts
from regionsync.sync import Guard, run_sync
from regionsync.testing.fakeapi import FakeKaleyra, sample_regions
from tests.support import settings_for
from tests.support.daemon import DaemonProcess, count, http_get, metric_samples
from tests.support.fakeapi_fixtures import FAST, client_for_fake
from tests.support.monitoring import (
    ALERT_TESTS,
    ALERTS,
    PROMTOOL,
    missing_names,
    needs_promtool,
    queries,
)

#: One attempt, short timeouts: a failure is classified within a second or two.
ONCE = RetryPolicy(attempts=1, total_seconds=2.0, connect_timeout=1.0, read_timeout=0.5)


def samples(text: str) -> dict[str, float]:
    return metric_samples(text)


def scrape(port: int) -> str:
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    return body.decode()


# failure_reason, from real failures -------------------------------------------------------


def fetch_error(fake: FakeKaleyra, fault: str, policy: RetryPolicy = FAST) -> RegionSyncError:
    fake.fail(fault)
    with pytest.raises(RegionSyncError) as caught:
        client_for_fake(fake, policy).fetch()
    return caught.value


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("http401", "auth"),
        ("http403", "auth"),
        ("rcs601", "channel_disabled"),
        ("rcs601-200", "channel_disabled"),
        ("rcs405", "rejected"),
        ("http404", "rejected"),
        ("malformed", "rejected"),
        ("http503", "transient"),
        ("rcs502", "transient"),
        ("drop", "transient"),
    ],
)
def test_a_failed_fetch_is_labelled_by_its_class(
    fake: FakeKaleyra, fault: str, reason: str
) -> None:
    assert failure_reason(fetch_error(fake, fault)) == reason


def test_a_fetch_that_runs_out_of_time_is_a_timeout(fake: FakeKaleyra) -> None:
    assert failure_reason(fetch_error(fake, "slow:5", ONCE)) == "timeout"


def test_the_guard_the_database_and_bugs_have_their_own_reasons(
    pg_engine: Engine, fake: FakeKaleyra
) -> None:
    source = client_for_fake(fake)
    run_sync(pg_engine, source)
    fake.set_regions(sample_regions()[:1])
    with pytest.raises(RegionSyncError) as guarded:
        run_sync(pg_engine, source, guard=Guard(0.5))
    down = store.create_engine(settings_for(f"postgresql://postgres@127.0.0.1:{closed_port()}/x"))
    try:
        with pytest.raises(RegionSyncError) as unreachable:
            run_sync(down, source)
    finally:
        down.dispose()
    assert failure_reason(guarded.value) == "guard"
    assert failure_reason(unreachable.value) == "database"
    assert failure_reason(ZeroDivisionError("a bug")) == "internal"
    assert set(FAILURE_REASONS) >= {"auth", "guard", "database", "internal", "timeout"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# DaemonMetrics and its HTTP server, in-process --------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def report(*, failures: int = 0, enabled: int = 5) -> StatusReport:
    at = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
    return StatusReport(
        recent_runs=[],
        active_regions=7,
        removed_regions=2,
        last_success_at=at,
        checked_at=at,
        consecutive_failures=failures,
        enabled_regions=enabled,
    )


@pytest.fixture
def served() -> Iterator[tuple[DaemonMetrics, Clock, int]]:
    clock = Clock()
    metrics = DaemonMetrics(
        max_age=timedelta(minutes=45), period=timedelta(minutes=15), clock=clock
    )
    server = MetricsServer(metrics, 0, host="127.0.0.1").start()
    try:
        yield metrics, clock, server.port
    finally:
        server.stop()


def test_consecutive_failures_are_the_databases_count_plus_those_not_yet_seen_there(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, _, port = served
    metrics.record_status(report(failures=4))  # e.g. a daemon that crashed 4 times
    assert samples(scrape(port))["regionsync_consecutive_failures"] == 4
    metrics.record_run("failed", 1.0, reason="transient")
    assert samples(scrape(port))["regionsync_consecutive_failures"] == 5
    assert metrics.health()[1]["consecutive_failures"] == 5
    metrics.record_status(report(failures=5))  # the database recorded that one: not twice
    assert samples(scrape(port))["regionsync_consecutive_failures"] == 5
    metrics.record_run("succeeded", 1.0, counts=Counts())
    assert samples(scrape(port))["regionsync_consecutive_failures"] == 0


def test_failures_are_counted_by_reason_and_timed_apart_from_successes(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, _, port = served
    metrics.record_run("failed", 90.0, reason="timeout")
    metrics.record_run("failed", 0.2, reason="auth")
    metrics.record_run("failed", 0.3, reason="auth")
    metrics.record_run("succeeded", 0.4, counts=Counts())
    metrics.record_run("skipped", None)
    found = samples(scrape(port))
    assert {
        r: found[f'regionsync_sync_failures_total{{reason="{r}"}}'] for r in FAILURE_REASONS
    } == {
        **dict.fromkeys(FAILURE_REASONS, 0.0),
        "timeout": 1.0,
        "auth": 2.0,
    }
    assert found['regionsync_sync_duration_seconds_count{status="failed"}'] == 3
    assert found['regionsync_sync_duration_seconds_sum{status="failed"}'] == pytest.approx(90.5)
    assert found['regionsync_sync_duration_seconds_count{status="succeeded"}'] == 1
    assert found['regionsync_sync_duration_seconds_bucket{le="0.5",status="succeeded"}'] == 1
    assert not any('status="skipped"' in name for name in found if "duration" in name)


def test_rejected_records_and_changes_are_counted_from_each_run(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, _, port = served
    metrics.record_run("succeeded", 1.0, counts=Counts(added=3, changed=2, rejected=4))
    metrics.record_run("succeeded", 1.0, counts=Counts(removed=1, restored=1, rejected=1))
    metrics.record_status(report(enabled=6))
    found = samples(scrape(port))
    assert found["regionsync_records_rejected_total"] == 5
    changes = {
        k: found[f'regionsync_region_changes_total{{change="{k}"}}']
        for k in ("added", "changed", "removed", "restored")
    }
    assert changes == {"added": 3, "changed": 2, "removed": 1, "restored": 1}
    assert found["regionsync_regions_enabled"] == 6
    assert found["regionsync_schedule_period_seconds"] == 900


def test_a_sync_in_progress_shows_its_start_and_the_last_attempt_its_end(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    metrics, clock, port = served
    found = samples(scrape(port))
    assert found["regionsync_sync_started_timestamp_seconds"] == 0
    assert found["regionsync_last_attempt_timestamp_seconds"] == 0
    started = clock.now
    metrics.sync_started()
    clock.now += timedelta(minutes=20)  # hung: /metrics still answers, with the start time
    assert samples(scrape(port))["regionsync_sync_started_timestamp_seconds"] == started.timestamp()
    metrics.record_run("failed", 1200.0, reason="database")
    found = samples(scrape(port))
    assert found["regionsync_sync_started_timestamp_seconds"] == 0
    assert found["regionsync_last_attempt_timestamp_seconds"] == clock.now.timestamp()


def test_metrics_have_process_and_build_info_and_no_created_series(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    _, _, port = served
    text = scrape(port)
    found = samples(text)
    assert found[f'regionsync_build_info{{version="{version("regionsync")}"}}'] == 1
    assert found["process_start_time_seconds"] > 0
    assert found["process_resident_memory_bytes"] > 0
    assert "_created" not in text


def test_head_metrics_answers_200_with_headers_and_no_body(
    served: tuple[DaemonMetrics, Clock, int],
) -> None:
    _, _, port = served
    for path in ("/metrics", "/healthz"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(
                f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *headers = head.decode().split("\r\n")
        fields = dict(h.split(": ", 1) for h in headers)
        assert status_line.split()[1] == ("200" if path == "/metrics" else "503")
        assert int(fields["Content-Length"]) > 0
        assert body == b""
    assert scrape(port).startswith("# HELP")  # GET still has its body afterwards


# gather(): what the daemon reads from the database ---------------------------------------


def test_status_counts_consecutive_failures_as_the_sync_health_view_does(
    engine: Engine, fake: FakeKaleyra
) -> None:
    source = client_for_fake(fake)
    run_sync(engine, source)
    fake.fail("http401")
    for _ in range(2):
        with pytest.raises(RegionSyncError):
            run_sync(engine, source)
    found = gather(engine)
    with engine.connect() as connection:
        view = connection.execute(sa.text("SELECT consecutive_failures FROM sync_health")).scalar()
    assert found.consecutive_failures == view == 2
    enabled = sum(1 for r in sample_regions() if r["carrier_enabled"])
    assert 0 < found.enabled_regions == enabled < found.active_regions

    fake.clear_faults()
    run_sync(engine, source)
    assert gather(engine).consecutive_failures == 0


# A real daemon's /metrics, promtool, the rules and the dashboard --------------------------


def live_metrics(start_daemon: Callable[..., DaemonProcess], url: URL, fake: FakeKaleyra) -> str:
    daemon = start_daemon(url, fake)
    daemon.wait_until(lambda: daemon.runs_counted("succeeded") >= 1, "a successful sync")
    text = scrape(daemon.port)
    daemon.send(signal.SIGTERM)
    assert daemon.exit_code(timeout=15) == 0
    return text


@pytest.mark.slow
def test_a_live_daemons_metrics_pass_promtool_and_have_every_name_the_rules_and_dashboard_use(
    start_daemon: Callable[..., DaemonProcess],
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
) -> None:
    text = live_metrics(start_daemon, pg_url, fake)
    used = queries("daemon")
    assert len(used) >= 20
    assert missing_names(text, used) == []
    if PROMTOOL is not None:
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@pytest.mark.slow
def test_consecutive_failures_survive_a_restart_and_name_their_reason(
    start_daemon: Callable[..., DaemonProcess],
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
) -> None:
    fake.fail("http401")
    first = start_daemon(pg_url, fake)
    first.wait_until(lambda: first.runs_counted("failed") >= 2, "two failed syncs")
    first.send(signal.SIGTERM)
    assert first.exit_code(timeout=15) == 0
    recorded = count(pg_engine, "failed")

    again = start_daemon(pg_url, fake)  # a crash loop: each process fails from scratch
    again.wait_until(lambda: again.runs_counted("failed") >= 1, "a failed sync")
    found = again.metrics()
    assert found["regionsync_consecutive_failures"] >= recorded + 1 > 2
    assert found['regionsync_sync_failures_total{reason="auth"}'] >= 1
    assert found['regionsync_sync_failures_total{reason="transient"}'] == 0
    again.send(signal.SIGTERM)
    assert again.exit_code(timeout=15) == 0


@needs_promtool
def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run([PROMTOOL, *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = []
    for index, (where, expr) in enumerate(queries("all")):
        if where.startswith("panel"):
            concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*")
            rules.append(
                {"record": f"dashboard:query_{index}", "expr": concrete.replace("$instance", ".*")}
            )
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
