"""Change notifications: the outbox, signed webhooks, Slack, NOTIFY, and what operators see.

Real parts only: a real HTTP receiver on loopback (``regionsync.testing.fakehook``) that checks
every signature with the ``standardwebhooks`` library, real databases, a real LISTEN.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from regionsync import cli
from regionsync.daemon.metrics import DaemonMetrics
from regionsync.errors import ConfigError, StoreError
from regionsync.notify import outbox
from regionsync.notify.delivery import DeliveryPolicy, Notifier
from regionsync.notify.outbox import OutboxPolicy
from regionsync.settings import DEFAULT_ACCOUNT, NotificationSettings, Settings
from regionsync.status import gather
from regionsync.store.grants import grant_readonly
from regionsync.store.tables import notification_deliveries
from regionsync.sync import run_sync
from regionsync.testing.fakeapi import FakeKaleyra
from regionsync.testing.fakehook import PATH, WebhookReceiver, WebhookServer
from tests.support import admin_url, clean_environ, settings_for
from tests.support.cli import Invoke
from tests.support.docs import page, section
from tests.support.sources import ListSource, region

#: Distinctive, so that a leak anywhere is easy to find.
SECRET = "whsec_" + base64.b64encode(b"LEAKCHECK-webhook-secret-32bytes").decode()
#: Fast enough for tests: passes end within 3 s, retries come due at once.
FAST = DeliveryPolicy(
    deadline=3.0,
    attempts_per_pass=2,
    backoff_initial=0.05,
    backoff_max=0.2,
    connect_timeout=1.0,
    read_timeout=2.0,
    retry_initial=timedelta(0),
    retry_max=timedelta(0),
)


def verifier(secret: str = SECRET) -> Any:
    """Verify with the Standard Webhooks reference library, not with our own code."""
    webhook = Webhook(secret)

    def verify(body: bytes, headers: dict[str, str]) -> bool:
        try:
            webhook.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    return verify


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    server = WebhookServer(WebhookReceiver(verify=verifier())).start()
    yield server
    server.stop()


def notifications(url: str, **env: str) -> NotificationSettings:
    values = {"REGIONSYNC_WEBHOOK_URL": url, "REGIONSYNC_WEBHOOK_SECRET": SECRET, **env}
    return Settings.from_env({k: v for k, v in values.items() if v}).notifications


def notifier(engine: Engine, url: str, policy: DeliveryPolicy = FAST, **env: str) -> Notifier:
    return Notifier(engine, notifications(url, **env), policy=policy)


def sync(engine: Engine, source: ListSource, account: str = DEFAULT_ACCOUNT, **policy: Any) -> int:
    result = run_sync(engine, source, account=account, notify=OutboxPolicy(**policy))
    assert result.run_id is not None
    return result.run_id


def deliveries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(
            sa.select(notification_deliveries).order_by(notification_deliveries.c.created_at)
        )
        return [dict(r) for r in rows.mappings()]


def test_a_committed_run_is_delivered_once_signed_per_standard_webhooks(
    engine: Engine, receiver: WebhookServer
) -> None:
    source = ListSource([region("a", enabled=True, name="United States: Tracfone"), region("b")])
    sync(engine, source)
    source.data = [region("a", enabled=False, name="United States: Tracfone"), region("c")]
    run_id = sync(engine, source)
    sender = notifier(engine, receiver.url)

    report = sender.deliver_pending()

    rows = deliveries(engine)
    assert [r["status"] for r in rows] == ["delivered", "delivered"]
    assert report.delivered == [r["id"] for r in rows]
    got = receiver.receiver.received
    assert [g.webhook_id for g in got] == [r["id"] for r in rows]
    assert all(g.verified is True and g.answered == 204 for g in got)
    data = got[1].body["data"]
    assert got[1].body["type"] == "regions.changed"
    assert data["account"] == DEFAULT_ACCOUNT
    assert [r["account"] for r in rows] == [DEFAULT_ACCOUNT, DEFAULT_ACCOUNT]
    assert data["run_id"] == run_id
    assert data["counts"]["changed"] == 1
    assert data["counts"]["added"] == 1
    assert data["counts"]["removed"] == 1
    assert {(c["region_id"], c["kind"]) for c in data["changes"]} == {
        ("a", "changed"),
        ("b", "removed"),
        ("c", "added"),
    }
    flip = next(c for c in data["changes"] if c["region_id"] == "a")
    assert flip["display_name"] == "United States: Tracfone"
    assert flip["carrier_enabled"] == {"before": True, "after": False}
    assert flip["hosting_region"] == {"before": "NORTH_AMERICA", "after": "NORTH_AMERICA"}

    assert sender.deliver_pending().delivered == []
    assert len(receiver.receiver.received) == 2


def test_receiver_down_then_up_every_delivery_arrives_exactly_once(
    pg_engine: Engine, receiver: WebhookServer
) -> None:
    url = receiver.url
    receiver.stop()  # down: connection refused
    source = ListSource([region("a")])
    sender = notifier(pg_engine, url)
    for enabled in (True, False, True):
        source.data = [region("a", enabled=enabled), region(f"r{enabled}{time.monotonic()}")]
        sync(pg_engine, source)
        sender.deliver_pending()
    queued = deliveries(pg_engine)
    assert len(queued) == 3
    assert all(r["status"] == "pending" for r in queued)
    assert queued[0]["attempts"] >= 2
    assert "Connection refused" in queued[0]["last_error"]

    receiver.start()  # up again on the same port, but struggling at first
    receiver.receiver.fail(503, times=2)
    passes = 0
    while any(r["status"] == "pending" for r in deliveries(pg_engine)):
        passes += 1
        assert passes <= 10, deliveries(pg_engine)
        if passes == 2:
            receiver.receiver.fail(429, times=1, retry_after="0")
        sender.deliver_pending()

    done = deliveries(pg_engine)
    assert {r["status"] for r in done} == {"delivered"}
    accepted = receiver.receiver.accepted_ids()
    assert collections.Counter(accepted) == collections.Counter(r["id"] for r in done)
    assert accepted == [r["id"] for r in done]  # in the order the runs committed
    assert all(g.verified for g in receiver.receiver.received)
    assert sum(r["attempts"] for r in done) > len(done)


def _cli_env(db_url: str, webhook_url: str, **extra: str) -> dict[str, str]:
    return {
        "REGIONSYNC_DATABASE_URL": db_url,
        "REGIONSYNC_WEBHOOK_URL": webhook_url,
        "REGIONSYNC_WEBHOOK_SECRET": SECRET,
        "REGIONSYNC_LOG_FORMAT": "json",
        **extra,
    }


@pytest.mark.slow
def test_a_run_killed_after_commit_is_delivered_by_the_next_run(
    pg_engine: Engine, receiver: WebhookServer, tmp_path: Path, invoke: Invoke
) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    sample = tmp_path / "regions.json"
    sample.write_text(json.dumps({"data": [region("a"), region("b")], "error": {}}))
    receiver.receiver.fail(503, hang=60)  # holds the first delivery: the run never hears back
    command = [sys.executable, "-m", "regionsync", "run", "--from-file", str(sample)]
    env = _cli_env(url, receiver.url)
    process = subprocess.Popen(
        command, env={**clean_environ(), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not receiver.receiver.received:
            assert time.monotonic() < deadline, "the run never tried to deliver"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    first = receiver.receiver.received[0].webhook_id
    assert receiver.receiver.accepted_ids() == []
    [row] = deliveries(pg_engine)
    assert (row["id"], row["status"]) == (first, "pending")  # committed, not delivered
    receiver.receiver.clear_faults()

    done = invoke(*command[3:], env=env)  # the next run, in-process

    assert done.returncode == 0, done.stderr
    assert "notifications: 1 delivered" in done.stdout
    assert receiver.receiver.accepted_ids() == [first]
    assert deliveries(pg_engine)[0]["status"] == "delivered"
    assert SECRET not in done.stdout + done.stderr
    assert SECRET.removeprefix("whsec_") not in done.stdout + done.stderr


@pytest.fixture
def failing_outbox(engine: Engine) -> Iterator[Engine]:
    """The outbox insert fails: at COMMIT on PostgreSQL (after NOTIFY), at once on SQLite."""
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'refused at commit'; END$$"
            )
            c.exec_driver_sql(
                "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON notification_deliveries"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        else:
            c.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON notification_deliveries"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    yield engine
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql("DROP TRIGGER refuse ON notification_deliveries")
            c.exec_driver_sql("DROP FUNCTION refuse()")
        else:
            c.exec_driver_sql("DROP TRIGGER refuse")


def _listener(engine: Engine) -> psycopg.Connection[Any]:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
    connection.execute("LISTEN regionsync_changes")
    return connection


def test_a_failed_apply_sends_nothing(failing_outbox: Engine, receiver: WebhookServer) -> None:
    engine = failing_outbox
    listener = _listener(engine) if engine.dialect.name == "postgresql" else None
    try:
        with pytest.raises(StoreError, match="refused"):
            sync(engine, ListSource([region("a"), region("b")]))
        notifier(engine, receiver.url).deliver_pending()
        if listener is not None:
            assert list(listener.notifies(timeout=1.0, stop_after=1)) == []
    finally:
        if listener is not None:
            listener.close()
    assert deliveries(engine) == []
    assert receiver.receiver.received == []
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM region_history").scalar_one() == 0
        assert c.exec_driver_sql("SELECT status FROM sync_runs").scalar_one() == "failed"


def test_notify_reaches_a_listening_connection_at_commit(pg_engine: Engine) -> None:
    listener = _listener(pg_engine)
    try:
        source = ListSource([region("a"), region("b")])
        run_id = run_sync(pg_engine, source).run_id  # no webhook configured: NOTIFY all the same
        [note] = list(listener.notifies(timeout=5.0, stop_after=1))
        assert note.channel == "regionsync_changes"
        payload = json.loads(note.payload)
        assert payload == {
            "run_id": run_id,
            "account": DEFAULT_ACCOUNT,
            "schema": "public",
            "added": 2,
            "changed": 0,
            "removed": 0,
            "restored": 0,
        }
        run_sync(pg_engine, source)  # unchanged: nothing to tell
        assert list(listener.notifies(timeout=1.0, stop_after=1)) == []
    finally:
        listener.close()
    assert deliveries(pg_engine) == []  # without a webhook URL nothing is queued


def test_each_account_is_notified_of_its_own_changes_only(
    engine: Engine, receiver: WebhookServer
) -> None:
    """Two accounts hold the same region ids: a run of one reports that account's changes,
    named in the payload and on the delivery's row."""
    sync(engine, ListSource([region("a"), region("b")]), account="brand-a")
    sync(engine, ListSource([region("a", name="Alpha B")]), account="brand-b")
    flipped = sync(
        engine, ListSource([region("a", enabled=False, name="Alpha B")]), account="brand-b"
    )
    notifier(engine, receiver.url).deliver_pending()

    rows = deliveries(engine)
    assert [(r["account"], r["status"]) for r in rows] == [
        ("brand-a", "delivered"),
        ("brand-b", "delivered"),
        ("brand-b", "delivered"),
    ]
    last = receiver.receiver.received[-1].body["data"]
    assert (last["account"], last["run_id"]) == ("brand-b", flipped)
    assert [(c["region_id"], c["kind"], c["display_name"]) for c in last["changes"]] == [
        ("a", "changed", "Alpha B")
    ]
    first = receiver.receiver.received[0].body["data"]
    assert first["account"] == "brand-a"
    assert sorted(c["region_id"] for c in first["changes"]) == ["a", "b"]


def test_notify_on_chooses_which_changes_notify(sqlite_engine: Engine) -> None:
    chosen = Settings.from_env({"REGIONSYNC_NOTIFY_ON": "carrier_enabled, removed"})
    policy = OutboxPolicy(notify_on=chosen.notifications.notify_on)
    source = ListSource([region("a"), region("b"), region("c")])
    run_sync(sqlite_engine, source, notify=policy)  # only additions
    source.data = [region("a", hosting="EUROPE"), region("b"), region("c")]
    run_sync(sqlite_engine, source, notify=policy)  # only a hosting change
    assert deliveries(sqlite_engine) == []  # all filtered out: nothing queued, nothing sent

    source.data = [region("a", hosting="ASIA_PACIFIC"), region("b", enabled=False)]
    run_id = run_sync(sqlite_engine, source, notify=policy).run_id
    [row] = deliveries(sqlite_engine)
    assert row["sync_run_id"] == run_id
    changes = row["payload"]["data"]["changes"]
    assert sorted((c["region_id"], c["kind"]) for c in changes) == [
        ("b", "changed"),
        ("c", "removed"),
    ]


def test_a_large_run_is_split_into_parts_with_distinct_ids(sqlite_engine: Engine) -> None:
    sync(sqlite_engine, ListSource([region(f"r{i}") for i in range(5)]), max_changes=2)
    rows = deliveries(sqlite_engine)
    assert sorted((r["part"], r["parts"]) for r in rows) == [(1, 3), (2, 3), (3, 3)]
    assert len({r["id"] for r in rows}) == 3
    ids = [c["region_id"] for r in rows for c in r["payload"]["data"]["changes"]]
    assert sorted(ids) == [f"r{i}" for i in range(5)]


def test_a_run_is_split_by_size_too(sqlite_engine: Engine) -> None:
    long_names = [region(f"r{i}", name="x" * 3000) for i in range(4)]
    sync(sqlite_engine, ListSource(long_names), max_bytes=7000)
    rows = deliveries(sqlite_engine)
    assert [len(r["payload"]["data"]["changes"]) for r in rows] == [2, 2]
    assert all(len(json.dumps(r["payload"])) < 7000 + 1000 for r in rows)


def slack_problems(message: Any) -> list[str]:
    """Check a message against what Slack's chat/incoming-webhook API requires."""
    problems = []
    if not isinstance(message.get("text"), str) or not message["text"]:
        problems.append("text must be a non-empty string")
    blocks = message.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        problems.append("blocks must be a list of at most 50")
    for block in blocks:
        if block.get("type") not in ("section", "context", "divider", "header"):
            problems.append(f"unknown block type {block.get('type')!r}")
        if block.get("type") == "section":
            text = block.get("text", {})
            if text.get("type") not in ("mrkdwn", "plain_text"):
                problems.append("section text needs type mrkdwn or plain_text")
            if not isinstance(text.get("text"), str) or not 1 <= len(text["text"]) <= 3000:
                problems.append("section text must be 1 to 3000 characters")
        if block.get("type") == "context":
            elements = block.get("elements", [])
            if not 1 <= len(elements) <= 10:
                problems.append("context needs 1 to 10 elements")
    return problems


def test_slack_format_posts_a_readable_message_slack_accepts(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    many = [region(f"n{i:03}", name=f"Nowhere {i} <&>") for i in range(80)]
    source = ListSource([region("tf", name="United States: Tracfone")])
    sync(sqlite_engine, source)
    source.data = [region("tf", enabled=False, name="United States: Tracfone"), *many]
    sync(sqlite_engine, source)
    notifier(sqlite_engine, receiver.url, REGIONSYNC_WEBHOOK_FORMAT="slack").deliver_pending()

    message = receiver.receiver.received[-1].body
    assert slack_problems(message) == []
    text = "\n".join(b["text"]["text"] for b in message["blocks"] if b["type"] == "section")
    assert "• United States: Tracfone lost carrier support" in text
    assert "*Lost carrier support* (1)" in text
    assert "*Added* (80)" in text
    assert "…and 65 more" in text
    assert "&lt;&amp;&gt;" in text
    assert "<&>" not in text
    assert "80 added" in message["text"]
    assert "1 lost carrier support" in message["text"]


def test_a_refused_delivery_fails_at_once_and_retry_delivers_it(
    sqlite_engine: Engine, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(400, times=1)
    report = notifier(sqlite_engine, receiver.url).deliver_pending()
    [row] = deliveries(sqlite_engine)
    assert report.failed == [row["id"]]
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "HTTP 400" in row["last_error"]

    monkeypatch.setenv("REGIONSYNC_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("REGIONSYNC_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("REGIONSYNC_WEBHOOK_SECRET", SECRET)
    capsys.readouterr()
    assert cli.main(["notifications", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["status"], listed["changes"]) == (row["id"], "failed", 1)

    assert cli.main(["notifications", "--retry", row["id"]]) == 0
    assert f"{row['id']} delivered" in capsys.readouterr().out
    assert deliveries(sqlite_engine)[0]["status"] == "delivered"
    assert receiver.receiver.accepted_ids() == [row["id"]]
    assert cli.main(["notifications", "--retry", row["id"]]) == 2
    assert cli.main(["notifications", "--retry", "msg_nope"]) == 2
    assert "no delivery with id" in capsys.readouterr().err
    assert cli.main(["notifications"]) == 0
    assert "no pending or failed deliveries" in capsys.readouterr().out


def documented_delivery_fields() -> list[str]:
    """The fields of ``notifications --json`` as the notifications page's *Operators* table
    lists them."""
    table = section(page("notifications.md"), "Operators")
    return re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)


def test_notifications_name_fields_as_the_logs_do_documented_with_a_table_header(
    sqlite_engine: Engine, receiver: WebhookServer, invoke: Invoke
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(400, times=1)
    with structlog.testing.capture_logs() as logged:
        notifier(sqlite_engine, receiver.url).deliver_pending()
    [row] = deliveries(sqlite_engine)
    [failed] = [e for e in logged if e["event"] == "notify.failed"]
    env = {"REGIONSYNC_DATABASE_URL": str(sqlite_engine.url)}

    [listed] = json.loads(invoke("notifications", "--json", env=env).stdout)
    assert listed["delivery_id"] == failed["delivery_id"] == row["id"]
    assert listed["sync_run_id"] == failed["sync_run_id"]
    assert listed["account"] == row["account"] == DEFAULT_ACCOUNT
    assert listed["id"] == row["id"]  # the name before delivery_id, kept for scripts
    assert list(listed) == documented_delivery_fields()

    table = invoke("notifications", env=env).stdout.splitlines()
    assert table[0].split() == [
        "delivery_id",
        "status",
        "sync_run_id",
        "part",
        "created_at",
        "changes",
        "attempts",
        "last_error",
    ]
    assert table[1].split()[:4] == [row["id"], "failed", str(row["sync_run_id"]), "1/1"]
    assert table[1].endswith(row["last_error"])


@pytest.mark.slow
def test_retry_after_is_honoured_within_and_across_passes(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(503, times=1, retry_after="1")
    sender = notifier(sqlite_engine, receiver.url)
    assert len(sender.deliver_pending().delivered) == 1
    first, second = receiver.receiver.received
    assert second.at - first.at >= 1.0

    sync(sqlite_engine, ListSource([region("a"), region("b")]))
    receiver.receiver.fail(429, times=1, retry_after="120")
    report = sender.deliver_pending()
    row = deliveries(sqlite_engine)[-1]
    assert report.retrying == [row["id"]]
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert (row["next_attempt_at"] - row["last_attempt_at"]).total_seconds() >= 120
    assert sender.deliver_pending().delivered == []  # not due yet
    assert len(receiver.receiver.received) == 3


@pytest.mark.slow
def test_a_hanging_receiver_never_holds_the_sync_past_the_deadline(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(None, hang=30, times=None)
    policy = DeliveryPolicy(deadline=1.0, connect_timeout=1.0, read_timeout=30.0)
    started = time.monotonic()
    notifier(sqlite_engine, receiver.url, policy=policy).deliver_pending()
    assert time.monotonic() - started < 2.5
    assert deliveries(sqlite_engine)[0]["status"] == "pending"


def test_a_delivery_pending_past_the_max_age_is_marked_failed_not_sent(
    engine: Engine, receiver: WebhookServer
) -> None:
    sync(engine, ListSource([region("a")]))
    with engine.begin() as c:
        c.execute(
            notification_deliveries.update().values(created_at=outbox.utcnow() - timedelta(hours=2))
        )
    report = notifier(engine, receiver.url, REGIONSYNC_WEBHOOK_MAX_AGE="1h").deliver_pending()
    [row] = deliveries(engine)
    assert report.expired == [row["id"]]
    assert row["status"] == "failed"
    assert "undelivered after 1h" in row["last_error"]
    assert receiver.receiver.received == []


def test_the_secret_and_a_slack_url_token_never_reach_logs_errors_or_the_database(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    token_url = receiver.url.replace(PATH, "/services/T0000/B0000/XXXXLEAKCHECKTOKEN")
    settings = Settings.from_env(
        {"REGIONSYNC_WEBHOOK_URL": token_url, "REGIONSYNC_WEBHOOK_SECRET": SECRET}
    )
    receiver.stop()  # every attempt fails with a connection error
    sync(sqlite_engine, ListSource([region("a")]))
    with structlog.testing.capture_logs() as logs:
        Notifier(sqlite_engine, settings.notifications, policy=FAST).deliver_pending()
        receiver.start()
        Notifier(sqlite_engine, settings.notifications, policy=FAST).deliver_pending()
    with sqlite_engine.connect() as c:
        stored = json.dumps(
            [list(map(str, r)) for r in c.exec_driver_sql("SELECT * FROM notification_deliveries")]
        )
    shown = [json.dumps(logs, default=str), stored, repr(settings), str(settings)]
    shown.append(repr(Notifier(sqlite_engine, settings.notifications)))
    for text in shown:
        assert SECRET not in text, text
        assert "LEAKCHECK" not in text, text
    assert deliveries(sqlite_engine)[0]["last_error"]  # something was recorded, scrubbed


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"REGIONSYNC_WEBHOOK_URL": "http://example.com/hook"}, "REGIONSYNC_WEBHOOK_URL"),
        ({"REGIONSYNC_WEBHOOK_URL": "ftp://127.0.0.1/hook"}, "REGIONSYNC_WEBHOOK_URL"),
        ({"REGIONSYNC_WEBHOOK_URL": "https://u:p@example.com/"}, "REGIONSYNC_WEBHOOK_URL"),
        ({"REGIONSYNC_WEBHOOK_URL": "https://example.com/h"}, "REGIONSYNC_WEBHOOK_SECRET"),
        ({"REGIONSYNC_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "REGIONSYNC_WEBHOOK_SECRET"),
        ({"REGIONSYNC_WEBHOOK_SECRET": SECRET.removeprefix("whsec_")}, "REGIONSYNC_WEBHOOK_SECRET"),
        ({"REGIONSYNC_WEBHOOK_FORMAT": "teams"}, "REGIONSYNC_WEBHOOK_FORMAT"),
        ({"REGIONSYNC_NOTIFY_ON": "added,updated"}, "REGIONSYNC_NOTIFY_ON"),
        ({"REGIONSYNC_WEBHOOK_MAX_AGE": "soon"}, "REGIONSYNC_WEBHOOK_MAX_AGE"),
    ],
)
def test_bad_notification_settings_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert "LEAKCHECK" not in str(caught.value)


def test_notification_settings_defaults_and_choices() -> None:
    plain = Settings.from_env({}).notifications
    assert not plain.enabled
    assert plain.webhook_max_age == timedelta(hours=24)
    assert plain.notify_on == {"added", "removed", "restored", "carrier_enabled", "hosting_region"}
    slack = Settings.from_env(
        {
            "REGIONSYNC_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/abcdefghijkl",
            "REGIONSYNC_WEBHOOK_FORMAT": "Slack",
            "REGIONSYNC_NOTIFY_ON": "changed",
            "REGIONSYNC_WEBHOOK_MAX_AGE": "2h",
        }
    )
    assert slack.notifications.webhook_format == "slack"  # no secret needed for Slack
    assert slack.notifications.notify_on == {"carrier_enabled", "hosting_region"}
    assert slack.notifications.webhook_max_age == timedelta(hours=2)
    assert "abcdefghijkl" not in repr(slack)
    assert "/services/T0/B0/abcdefghijkl" in slack.secrets
    http_loopback = notifications("http://localhost:9/hook")
    assert http_loopback.enabled


def test_status_healthz_and_metrics_report_the_backlog(
    sqlite_engine: Engine, receiver: WebhookServer, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    report = gather(sqlite_engine)
    assert report.deliveries is not None
    assert report.deliveries.pending == 1
    assert report.deliveries.oldest_pending_at is not None
    as_json = report.as_json()
    assert as_json["pending_deliveries"] == 1
    assert as_json["oldest_pending_delivery_age_seconds"] >= 0

    monkeypatch.setenv("REGIONSYNC_DATABASE_URL", str(sqlite_engine.url))
    capsys.readouterr()
    cli.main(["status", "--json"])
    assert json.loads(capsys.readouterr().out)["oldest_pending_delivery_at"] is not None
    cli.main(["status"])
    assert "notifications: 1 pending, oldest" in capsys.readouterr().out

    metrics = DaemonMetrics(max_age=timedelta(hours=1))
    metrics.record_status(report)
    metrics.notifications.record_pass(delivered=2, retried=3, failed=1)
    _, body = metrics.health()
    assert body["pending_deliveries"] == 1
    assert body["oldest_pending_delivery_at"]
    text = metrics.exposition().decode()
    assert 'regionsync_notification_deliveries_total{outcome="retried"} 3.0' in text
    assert "regionsync_notifications_pending 1.0" in text
    age = next(
        line
        for line in text.splitlines()
        if line.startswith("regionsync_notifications_oldest_pending_age_seconds ")
    )
    assert float(age.split()[1]) > 0


def test_a_daemon_tick_delivers_and_counts(sqlite_engine: Engine, receiver: WebhookServer) -> None:
    from regionsync.daemon import schedule
    from regionsync.daemon.loop import Daemon
    from regionsync.sync import Guard

    settings = settings_for(
        sqlite_engine.url, REGIONSYNC_WEBHOOK_URL=receiver.url, REGIONSYNC_WEBHOOK_SECRET=SECRET
    )
    metrics = DaemonMetrics(max_age=timedelta(hours=1))
    daemon = Daemon(
        sqlite_engine,
        ListSource([region("a")]),
        schedule=schedule.load_schedule(settings),
        guard=Guard(),
        metrics=metrics,
        period=timedelta(minutes=15),
        notifier=Notifier(sqlite_engine, settings.notifications, policy=FAST),
        notify=OutboxPolicy.from_settings(settings.notifications),
    )
    receiver.receiver.fail(503, times=2)  # both attempts of the first tick
    daemon.sync_once()
    assert deliveries(sqlite_engine)[0]["status"] == "pending"
    daemon.sync_once()  # nothing changed, but the pending delivery goes out
    assert deliveries(sqlite_engine)[0]["status"] == "delivered"
    text = metrics.exposition().decode()
    assert 'regionsync_notification_deliveries_total{outcome="delivered"} 1.0' in text
    assert 'regionsync_notification_deliveries_total{outcome="retried"} 2.0' in text
    assert "regionsync_notifications_pending 0.0" in text


def test_grant_readonly_covers_the_outbox(pg_engine: Engine) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE ROLE "{role}"')
        sync(pg_engine, ListSource([region("a")]))
        grant_readonly(pg_engine, role)
        with pg_engine.connect() as c:
            c.exec_driver_sql(f'SET ROLE "{role}"')
            assert c.exec_driver_sql("SELECT count(*) FROM notification_deliveries").scalar() == 1
            with pytest.raises(sa.exc.ProgrammingError):
                c.exec_driver_sql("DELETE FROM notification_deliveries")
            c.rollback()
    finally:
        with pg_engine.begin() as c:
            c.exec_driver_sql(f'DROP OWNED BY "{role}"')
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_fake_api_serves_a_webhook_receiver_that_can_fail() -> None:
    with FakeKaleyra() as fake:
        url = fake.url + PATH
        fault = {"status": 503, "times": 1, "retry_after": "3"}
        assert requests.put(url + "/fault", json=fault, timeout=5).status_code == 200
        first = requests.post(url, data=b'{"n": 1}', headers={"webhook-id": "msg_1"}, timeout=5)
        assert (first.status_code, first.headers["Retry-After"]) == (503, "3")
        second = requests.post(url, data=b'{"n": 2}', headers={"webhook-id": "msg_1"}, timeout=5)
        assert second.status_code == 204
        seen = requests.get(url, timeout=5).json()
        assert seen["accepted_ids"] == ["msg_1"]
        assert [r["body"] for r in seen["received"]] == [{"n": 1}, {"n": 2}]
        assert requests.delete(url, timeout=5).json() == {"ok": True}
        assert requests.get(url, timeout=5).json()["received"] == []
        assert requests.get(fake.url + "/_fake/requests", timeout=5).json() == {"count": 0}


def test_one_delivery_pass_at_a_time_across_processes(
    engine: Engine, receiver: WebhookServer
) -> None:
    from regionsync.notify.delivery import delivery_lock

    sync(engine, ListSource([region("a")]))
    sender = notifier(engine, receiver.url)
    with delivery_lock(engine) as held:
        assert held is not None
        report = sender.deliver_pending()
    assert report.skipped
    assert receiver.receiver.received == []
    assert sender.deliver_pending().delivered == [deliveries(engine)[0]["id"]]


def test_a_redirect_is_not_followed_and_fails_the_delivery(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(307, times=None)
    report = notifier(sqlite_engine, receiver.url).deliver_pending()
    [row] = deliveries(sqlite_engine)
    assert report.failed == [row["id"]]
    assert "redirects are not followed" in row["last_error"]
    assert len(receiver.receiver.received) == 1


def test_the_fake_receiver_verifies_what_standard_webhooks_libraries_sign() -> None:
    from datetime import UTC, datetime

    from regionsync.testing.fakehook import hmac_verifier

    body = '{"type": "regions.changed"}'
    now = datetime.now(UTC)
    signature = Webhook(SECRET).sign("msg_1", now, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": f"v1,bogus= {signature}",
    }
    verify = hmac_verifier(SECRET)
    assert verify(body.encode(), headers)
    assert not verify(body.encode() + b" ", headers)
    assert not verify(body.encode(), {**headers, "webhook-id": "msg_2"})
    stale = {**headers, "webhook-timestamp": str(int(now.timestamp()) - 3600)}
    assert not verify(body.encode(), stale)


#: The fake's whole answer to a delivery it is told to answer with 200, as sent on the wire.
WHOLE_200 = (
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
    b'{"status": 200}'
)


@pytest.mark.parametrize(
    "cut_at",
    [
        len(b"HTTP/1.0 200 OK"),  # the status line, without its end
        len(b"HTTP/1.0 200 OK\r\n"),  # the status line alone
        len(b"HTTP/1.0 200 OK\r\nContent-Ty"),  # inside a header
        WHOLE_200.index(b"\r\n\r\n") + 2,  # every header, but not the blank line after them
        len(WHOLE_200) - 3,  # inside the body its Content-Length announced
    ],
)
def test_a_2xx_answer_cut_short_is_a_failed_attempt_retried_later(
    sqlite_engine: Engine, receiver: WebhookServer, cut_at: int
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    receiver.receiver.fail(200, cut_at=cut_at, times=None)
    sender = notifier(sqlite_engine, receiver.url)
    report = sender.deliver_pending()
    [row] = deliveries(sqlite_engine)
    assert (report.delivered, report.retrying) == ([], [row["id"]])
    assert (row["status"], row["attempts"]) == ("pending", FAST.attempts_per_pass)
    assert "answer was cut short" in row["last_error"]

    receiver.receiver.clear_faults()
    assert sender.deliver_pending().delivered == [row["id"]]


def test_a_2xx_answer_whose_headers_do_not_parse_is_a_failed_attempt(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    # A line without a colon among the headers (smuggled in through the fault's header).
    receiver.receiver.fail(200, retry_after="0\r\nnot a header", times=None)
    report = notifier(sqlite_engine, receiver.url).deliver_pending()
    [row] = deliveries(sqlite_engine)
    assert (report.delivered, report.retrying) == ([], [row["id"]])
    assert "headers are malformed" in row["last_error"]


def test_an_error_answer_cut_short_is_still_an_attempt_on_record(
    sqlite_engine: Engine, receiver: WebhookServer
) -> None:
    sync(sqlite_engine, ListSource([region("a")]))
    whole = len(WHOLE_200.replace(b"200 OK", b"503 Service Unavailable"))
    receiver.receiver.fail(503, cut_at=whole - 3, times=None)
    report = notifier(sqlite_engine, receiver.url).deliver_pending()
    [row] = deliveries(sqlite_engine)
    assert report.retrying == [row["id"]]
    assert (row["status"], row["attempts"]) == ("pending", FAST.attempts_per_pass)
    assert "answered HTTP 503" in row["last_error"]


@pytest.mark.slow
def test_the_fake_receiver_cuts_and_drips_the_answer_it_is_told_to() -> None:
    with WebhookServer() as server:
        url = server.url
        requests.put(url + "/fault", json={"status": 200, "cut_at": 27}, timeout=5)
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            raw.sendall(b"POST " + PATH.encode() + b" HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
            assert _read_to_end(raw) == WHOLE_200[:27] == b"HTTP/1.0 200 OK\r\nContent-Ty"
        assert requests.put(url + "/fault", json={"drip": 1}, timeout=5).json() == {"ok": True}
        started = time.monotonic()
        assert requests.post(url, data=b"{}", timeout=5).status_code == 204
        assert time.monotonic() - started >= 0.9
        for bad in ({"cut_at": -1}, {"cut_at": 1.5}, {"drip": 10_000}):
            assert requests.put(url + "/fault", json=bad, timeout=5).status_code == 400


def _read_to_end(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    return got


#: A pass that ends within 1 s, whose deliveries left pending are due again at once.
ONE_SECOND = DeliveryPolicy(
    deadline=1.0,
    attempts_per_pass=1,
    connect_timeout=1.0,
    read_timeout=30.0,
    retry_initial=timedelta(0),
    retry_max=timedelta(0),
)


@pytest.mark.slow
def test_a_pass_cut_at_its_deadline_leaves_no_lock_held_and_nothing_running(
    engine: Engine, receiver: WebhookServer
) -> None:
    """A receiver dripping its answer past the deadline: the pass is over when it returns."""
    sync(engine, ListSource([region("a")]))
    [row] = deliveries(engine)
    receiver.receiver.fail(None, drip=4.0, times=1)  # a whole 204, a byte at a time, for 4 s
    sender = notifier(engine, receiver.url, policy=ONE_SECOND)
    started = time.monotonic()
    report = sender.deliver_pending()
    assert time.monotonic() - started < 2.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("regionsync-")]
    assert report.retrying == [row["id"]]
    seen = copy.deepcopy(report)
    after = deliveries(engine)
    assert (after[0]["status"], after[0]["attempts"]) == ("pending", 1)
    assert "delivery deadline" in after[0]["last_error"]

    # The next pass (the daemon's next tick) finds the lock free, and delivers.
    again = sender.deliver_pending()
    assert (again.skipped, again.delivered) == (False, [row["id"]])

    # Nothing of the first pass goes on behind its caller's back once the drip has ended.
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))
    assert report == seen
    assert deliveries(engine)[0]["attempts"] == 2


def test_retry_while_another_pass_holds_the_lock_says_so(
    engine: Engine, receiver: WebhookServer, invoke: Invoke
) -> None:
    from regionsync.notify.delivery import delivery_lock

    sync(engine, ListSource([region("a")]))
    [row] = deliveries(engine)
    env = _cli_env(engine.url.render_as_string(hide_password=False), receiver.url)
    with delivery_lock(engine) as held:
        assert held is not None
        done = invoke("notifications", "--retry", row["id"], env=env)
    assert done.returncode == 0, done.stderr
    assert f"{row['id']} skipped: another delivery pass is running" in done.stdout
    assert receiver.receiver.received == []
    assert deliveries(engine)[0]["status"] == "pending"
    assert invoke("notifications", "--retry", row["id"], env=env).returncode == 0
    assert receiver.receiver.accepted_ids() == [row["id"]]
