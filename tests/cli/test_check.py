"""``regionsync check``: one line per check, exit 0 only when all pass, and nothing written."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync import store
from regionsync.store.grants import grant_readonly, quote_identifier
from regionsync.store.schema import migrate
from regionsync.testing.fakeapi import FakeKaleyra
from regionsync.testing.fakehook import WebhookServer
from tests.support import create_pg_database, drop_pg_database, settings_for
from tests.support.cli import Invoke, table_counts, url_env
from tests.support.sources import region

KEY = "check-key-5d1e0a7b93"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"check-webhook-secret-of-32-bytes").decode()


@pytest.fixture
def fake_options() -> dict[str, Any]:
    regions = [region("a"), region("b"), region("c", carrier_enabled="no")]
    return {"sid": "ACME42", "api_key": KEY, "regions": regions}


def kaleyra_env(fake: FakeKaleyra, key: str = KEY) -> dict[str, str]:
    return {"KALEYRA_BASE_URL": fake.url, "KALEYRA_SID": "ACME42", "KALEYRA_API_KEY": key}


def marks(stdout: str) -> dict[str, str]:
    """``{check name: ✓ or ✗}`` from the output."""
    lines = [line for line in stdout.splitlines() if line[:1] in "✓✗"]
    return {line[2:].split(":", 1)[0]: line[0] for line in lines}


def hook_env(url: str) -> dict[str, str]:
    return {"REGIONSYNC_WEBHOOK_URL": url, "REGIONSYNC_WEBHOOK_SECRET": WEBHOOK_SECRET}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_everything_passes_on_a_ready_deployment_and_nothing_is_written(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    env = {
        **url_env(pg_url),
        **kaleyra_env(fake),
        "REGIONSYNC_METRICS_PORT": str(free_port()),
        "REGIONSYNC_METRICS_HOST": "127.0.0.1",
        "REGIONSYNC_SCHEDULE": "0 6 * * 1-5",
    }
    before = table_counts(pg_url)
    done = invoke("check", env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert marks(done.stdout) == {
        "settings": "✓",
        "schedule": "✓",
        "database": "✓",
        "schema": "✓",
        "access": "✓",
        "kaleyra": "✓",
        "metrics": "✓",
    }
    assert "PostgreSQL" in done.stdout
    assert "the latest" in done.stdout
    assert "2 regions, 1 rejected" in done.stdout
    assert done.stdout.splitlines()[-1] == "all 7 checks passed"
    assert [r.method for r in fake.requests] == ["GET"]
    assert table_counts(pg_url) == before == {"regions": 0, "region_history": 0, "sync_runs": 0}
    assert KEY not in done.stdout + done.stderr


def test_failures_are_named_one_line_each_and_exit_1(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **url_env(pg_url),
            **kaleyra_env(fake, key="wrong-key"),
            "REGIONSYNC_METRICS_PORT": str(port),
            "REGIONSYNC_METRICS_HOST": "127.0.0.1",
        }
        done = invoke("check", env=env)
        quiet = invoke("check", "-q", env=env)
    assert done.returncode == 1
    assert marks(done.stdout) == {
        "settings": "✓",
        "schedule": "✓",
        "database": "✓",
        "schema": "✓",
        "access": "✓",
        "kaleyra": "✗",
        "metrics": "✗",
    }
    lines = done.stdout.splitlines()
    assert any(line.startswith("✗ kaleyra:") and "401" in line for line in lines)
    # The host is REGIONSYNC_METRICS_HOST where that setting exists, else all interfaces.
    assert any(
        line.startswith("✗ metrics: cannot listen on ") and f":{port}: " in line for line in lines
    )
    assert lines[-1] == "2 of 7 checks failed"
    assert "wrong-key" not in done.stdout + done.stderr
    assert [line[:1] for line in quiet.stdout.splitlines()] == ["✗", "✗", "2"]


def test_an_unmigrated_database_says_to_migrate(
    invoke: Invoke, fresh_pg_url: URL, fake: FakeKaleyra
) -> None:
    done = invoke("check", env={**url_env(fresh_pg_url), **kaleyra_env(fake)})
    assert done.returncode == 1
    assert marks(done.stdout)["schema"] == "✗"
    assert "no regionsync schema: run `regionsync migrate`" in done.stdout
    engine = sa.create_engine(fresh_pg_url)
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == []
    engine.dispose()


def test_an_unreachable_database_and_no_kaleyra_settings(invoke: Invoke) -> None:
    port = free_port()
    done = invoke(
        "check", env={"REGIONSYNC_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none"}
    )
    assert done.returncode == 1
    assert marks(done.stdout) == {
        "settings": "✓",
        "schedule": "✓",
        "database": "✗",
        "kaleyra": "✗",
    }
    assert "KALEYRA_SID: is required" in done.stdout


def test_the_embedded_database_is_never_created(
    invoke: Invoke, tmp_path: Path, fake: FakeKaleyra
) -> None:
    data = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(data), **kaleyra_env(fake)}
    done = invoke("check", env=env)
    assert done.returncode == 1
    assert "does not exist yet: run `regionsync migrate`" in done.stdout
    assert not data.exists()

    assert invoke("migrate", env=env).returncode == 0
    files = sorted(p.name for p in (data / "regionsync").iterdir())
    stamp = (data / "regionsync" / "regionsync.db").stat().st_mtime_ns
    done = invoke("check", env=env)
    assert done.returncode == 0, done.stdout
    assert "SQLite" in done.stdout
    assert sorted(p.name for p in (data / "regionsync").iterdir()) == files
    assert (data / "regionsync" / "regionsync.db").stat().st_mtime_ns == stamp


def test_a_bad_schedule_fails_its_check(invoke: Invoke, tmp_path: Path) -> None:
    done = invoke(
        "check", env={"XDG_DATA_HOME": str(tmp_path), "REGIONSYNC_SCHEDULE": "0 0 5L * *"}
    )
    assert done.returncode == 1
    assert "✗ schedule: REGIONSYNC_SCHEDULE: day-of-month field '5L'" in done.stdout


def test_webhook_settings_are_reported_without_posting_or_showing_the_url_path(
    invoke: Invoke, tmp_path: Path
) -> None:
    with WebhookServer() as server:
        env = {
            "XDG_DATA_HOME": str(tmp_path),
            "REGIONSYNC_WEBHOOK_URL": f"http://127.0.0.1:{server.port}/services/T0/B0/tokentoken",
            "REGIONSYNC_WEBHOOK_FORMAT": "slack",
            "REGIONSYNC_NOTIFY_ON": "removed,carrier_enabled",
        }
        done = invoke("check", env=env)
    assert (
        f"✓ webhook: slack to http://127.0.0.1:{server.port}/…, unsigned, on carrier_enabled, "
        "removed" in done.stdout
    )
    assert "tokentoken" not in done.stdout + done.stderr
    assert "✓ webhook" not in invoke("check", env={"XDG_DATA_HOME": str(tmp_path)}).stdout


# What a run needs to write (docs/commands.md, `check`) -------------------------------------------


@pytest.fixture
def own_db(make_role: Callable[[str], str]) -> Iterator[URL]:
    """A migrated database of this test's own (its grants and settings go with it)."""
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    yield url
    drop_pg_database(url)


def as_admin(url: URL, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            for statement in statements:
                c.exec_driver_sql(statement)
    finally:
        engine.dispose()


def access_line(done: Any) -> str:
    lines = [line for line in done.stdout.splitlines() if line[2:].startswith("access:")]
    assert len(lines) == 1, done.stdout
    return str(lines[0])


def test_a_read_only_database_fails_the_access_check(
    invoke: Invoke, own_db: URL, fake: FakeKaleyra
) -> None:
    env = {**url_env(own_db), **kaleyra_env(fake)}
    assert access_line(invoke("check", env=env)).startswith("✓ access:")
    as_admin(own_db, f'ALTER DATABASE "{own_db.database}" SET default_transaction_read_only = on')
    before = table_counts(own_db)
    done = invoke("check", env=env)
    assert done.returncode == 1
    line = access_line(done)
    assert line.startswith("✗ access: the database is read-only")
    assert "default_transaction_read_only = on" in line
    assert done.stdout.splitlines()[-1] == "1 of 6 checks failed"
    assert table_counts(own_db) == before


def test_a_select_only_role_is_told_which_rights_it_lacks(
    invoke: Invoke, own_db: URL, make_role: Callable[[str], str], fake: FakeKaleyra
) -> None:
    reader, bystander = make_role('reader "r"'), make_role('all data reader "b"')
    owner = store.create_engine(settings_for(own_db))
    try:
        grant_readonly(owner, reader)
    finally:
        owner.dispose()
    as_admin(own_db, f"GRANT pg_read_all_data TO {quote_identifier(bystander)}")
    for role in (reader, bystander):
        env = {**url_env(own_db.set(username=role)), **kaleyra_env(fake)}
        done = invoke("check", env=env)
        assert done.returncode == 1, role
        assert marks(done.stdout)["database"] == marks(done.stdout)["schema"] == "✓"
        line = access_line(done)
        assert line.startswith(f"✗ access: role {quote_identifier(role)} may not write"), line
        for needed in (
            "INSERT, UPDATE on regions",
            "INSERT on region_history",
            "INSERT, UPDATE on sync_runs",
            "USAGE on the sequence sync_runs_id_seq",
        ):
            assert needed in line, (role, line)
        assert "notification_deliveries" not in line  # no webhook configured: not written
        assert "SELECT" not in line


def test_a_writer_passes_until_a_right_or_a_row_level_policy_is_missing(
    invoke: Invoke, own_db: URL, make_role: Callable[[str], str], fake: FakeKaleyra
) -> None:
    writer = make_role('writer "w"')
    who = quote_identifier(writer)
    as_admin(
        own_db,
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {who}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {who}",
    )
    env = {**url_env(own_db.set(username=writer)), **kaleyra_env(fake)}
    done = invoke("check", env=env)
    assert done.returncode == 0, done.stdout
    assert access_line(done).startswith("✓ access:")

    as_admin(own_db, "ALTER TABLE sync_runs ENABLE ROW LEVEL SECURITY")
    line = access_line(invoke("check", env=env))
    assert line.startswith("✗ access:")
    assert "row-level security on sync_runs allows it no SELECT, INSERT, UPDATE" in line
    as_admin(own_db, f"CREATE POLICY everything ON sync_runs TO {who} USING (true)")
    assert access_line(invoke("check", env=env)).startswith("✓ access:")

    as_admin(own_db, f'REVOKE TEMPORARY ON DATABASE "{own_db.database}" FROM PUBLIC')
    line = access_line(invoke("check", env=env))
    assert line.startswith("✗ access:")
    assert f'TEMPORARY on the database "{own_db.database}"' in line

    webhook = {**env, **hook_env("http://127.0.0.1:9/hook")}
    as_admin(
        own_db,
        f'GRANT TEMPORARY ON DATABASE "{own_db.database}" TO PUBLIC',
        f"REVOKE UPDATE ON notification_deliveries FROM {who}",
    )
    assert access_line(invoke("check", env=env)).startswith("✓ access:")
    line = access_line(invoke("check", env=webhook))
    assert "UPDATE on notification_deliveries" in line


def test_the_embedded_database_gets_no_access_line(
    invoke: Invoke, tmp_path: Path, fake: FakeKaleyra
) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path), **kaleyra_env(fake)}
    assert invoke("migrate", env=env).returncode == 0
    done = invoke("check", env=env)
    assert done.returncode == 0, done.stdout
    assert "access" not in marks(done.stdout)


# The webhook: probed without sending anything ------------------------------------------------


def test_a_closed_webhook_port_fails_the_check(invoke: Invoke, tmp_path: Path) -> None:
    port = free_port()
    env = {"XDG_DATA_HOME": str(tmp_path), **hook_env(f"http://127.0.0.1:{port}/h")}
    started = time.monotonic()
    done = invoke("check", env=env)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    line = next(line for line in done.stdout.splitlines() if line[2:].startswith("webhook:"))
    assert line.startswith(f"✗ webhook: json to http://127.0.0.1:{port}/…, signed, on ")
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in line


def test_a_listening_receiver_passes_and_receives_nothing(invoke: Invoke, tmp_path: Path) -> None:
    with WebhookServer() as server:
        env = {"XDG_DATA_HOME": str(tmp_path), **hook_env(server.url)}
        done = invoke("check", env=env)
        line = next(line for line in done.stdout.splitlines() if line[2:].startswith("webhook:"))
        assert line.startswith(f"✓ webhook: json to http://127.0.0.1:{server.port}/…")
        assert line.endswith(f"127.0.0.1:{server.port} accepts connections (nothing sent)")
        tls = invoke(
            "check", env={**env, "REGIONSYNC_WEBHOOK_URL": server.url.replace("http:", "https:")}
        )
        line = next(line for line in tls.stdout.splitlines() if line[2:].startswith("webhook:"))
        assert line.startswith("✗ webhook: ")
        assert f"TLS handshake with 127.0.0.1:{server.port} failed" in line
        assert server.receiver.received == []


def test_a_webhook_behind_a_proxy_is_not_probed(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    env = {"XDG_DATA_HOME": str(tmp_path), **hook_env(f"https://127.0.0.1:{port}/h")}
    done = invoke("check", env=env)
    assert "; not probed: it is sent through a proxy" in done.stdout


def test_a_receiver_that_never_answers_fails_within_the_deadline(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from regionsync.cli import check

    monkeypatch.setattr(check, "WEBHOOK_PROBE_SECONDS", 0.5)
    with socket.socket() as silent:  # connections complete in the backlog, nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env = {"XDG_DATA_HOME": str(tmp_path), **hook_env(f"https://127.0.0.1:{port}/h")}
        started = time.monotonic()
        done = invoke("check", env=env)
        assert time.monotonic() - started < 3
    assert f"✗ webhook: json to https://127.0.0.1:{port}/…" in done.stdout
    assert f"TLS handshake with 127.0.0.1:{port} failed: no answer within 0.5 s" in done.stdout


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[tuple[int, Path, list[bytes]]]:
    """A TLS listener on loopback with a self-signed certificate for 127.0.0.1 (made with
    the openssl command): ``(port, certificate, what each client sent after the handshake)``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    sent: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(5)
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    sent.append(tls.recv(1024))
            except ssl.SSLEOFError:
                sent.append(b"")
            except OSError:
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], cert, sent
    stop.set()
    thread.join(5)
    listener.close()


def test_tls_is_negotiated_with_the_trust_the_delivery_uses(
    invoke: Invoke, tmp_path: Path, tls_listener: tuple[int, Path, list[bytes]]
) -> None:
    port, cert, sent = tls_listener
    env = {"XDG_DATA_HOME": str(tmp_path), **hook_env(f"https://127.0.0.1:{port}/h")}
    untrusted = invoke("check", env=env)
    assert f"✗ webhook: json to https://127.0.0.1:{port}/…" in untrusted.stdout
    assert f"TLS handshake with 127.0.0.1:{port} failed: self-signed certificate" in (
        untrusted.stdout
    )
    trusted = invoke("check", env={**env, "REQUESTS_CA_BUNDLE": str(cert)})
    assert f"; TLS handshake with 127.0.0.1:{port} succeeded (nothing sent)" in trusted.stdout, (
        trusted.stdout
    )
    deadline = time.monotonic() + 5  # the listener's thread records what it read after
    while not sent and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sent == [b""]


# Accounts in the accounts table (docs/accounts.md, *4. Check*) ---------------------------


@pytest.mark.parametrize("fake_options", [{"accounts": 4, "regions_per_account": 3}])
def test_each_account_s_key_and_api_are_checked_and_no_key_is_shown(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, tmp_path: Path
) -> None:
    from regionsync.store.accounts import AccountRow, add_account, set_paused
    from regionsync.testing.fakeapi import fleet_key, fleet_sid

    key_file = tmp_path / "acme.key"
    key_file.write_text(fleet_key(fleet_sid(1)) + "\n")
    engine = store.create_engine(settings_for(db_url))
    with engine.begin() as connection:
        for row in (
            AccountRow("acme", fleet_sid(1), base_url=fake.url, api_key_file=str(key_file)),
            AccountRow("bravo", fleet_sid(2), base_url=fake.url, api_key_env="KALEYRA_API_KEY_B"),
            AccountRow("carol", fleet_sid(3), base_url=fake.url),  # REGIONSYNC_API_KEYS_DIR
            AccountRow("dave", fleet_sid(4), base_url=fake.url, api_key_env="KALEYRA_API_KEY_D"),
        ):
            add_account(connection, row)
        set_paused(connection, "dave", paused=True)
    engine.dispose()
    env = {
        **url_env(db_url),
        "KALEYRA_API_KEY_B": "not-bravos-key",
        "KALEYRA_API_KEY_D": fleet_key(fleet_sid(4)),
        "REGIONSYNC_API_KEYS_DIR": str(tmp_path / "keys"),
    }
    before = table_counts(db_url)
    done = invoke("check", env=env)
    assert done.returncode == 1, done.stdout
    found = marks(done.stdout)
    assert {name: mark for name, mark in found.items() if " " in name} == {
        "key acme": "✓",
        "kaleyra acme": "✓",
        "key bravo": "✓",
        "kaleyra bravo": "✗",
        "key carol": "✗",
        "kaleyra dave": "✓",
    }
    assert "kaleyra" not in found  # the KALEYRA_* settings are not an account now
    lines = done.stdout.splitlines()
    assert f"✓ key acme: found (file:{key_file})" in lines
    assert any(line.startswith("✓ kaleyra acme: ") and "3 regions" in line for line in lines)
    assert any(line.startswith("✗ kaleyra bravo: ") and "401" in line for line in lines)
    assert any(
        line.startswith("✗ key carol: cannot read the key file ") and "keys/carol" in line
        for line in lines
    )
    assert any(line.startswith("✓ kaleyra dave: paused since ") for line in lines)
    assert lines[-1] == f"2 of {len(found)} checks failed"
    asked = sorted(r.path.split("/")[2] for r in fake.requests)
    assert asked == [fleet_sid(1), fleet_sid(2)]  # no key, no request; paused, not asked
    assert table_counts(db_url) == before
    for key in (fleet_key(fleet_sid(n)) for n in (1, 2, 3, 4)):
        assert key not in done.stdout + done.stderr

    one = invoke("check", "--account", "acme", env=env)
    assert one.returncode == 0, one.stdout
    assert {name for name in marks(one.stdout) if " " in name} == {"key acme", "kaleyra acme"}
    paused = invoke("check", "--account", "dave", env=env)  # named: asked, paused or not
    assert paused.returncode == 0, paused.stdout
    assert marks(paused.stdout)["kaleyra dave"] == "✓"
    assert "answers the key" in paused.stdout
    missing = invoke("check", "--account", "nosuch", env=env)
    assert missing.returncode == 2
    assert "regionsync: error: --account: no account named 'nosuch'" in missing.stderr


def test_the_settings_account_is_checked_as_before_when_named(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    env = {**url_env(pg_url), **kaleyra_env(fake), "REGIONSYNC_ACCOUNT": "acme"}
    done = invoke("check", "--account", "acme", env=env)
    assert done.returncode == 0, done.stdout
    assert marks(done.stdout)["kaleyra"] == "✓"
    other = invoke("check", "--account", "bravo", env=env)
    assert other.returncode == 2
    assert "the only account is 'acme'" in other.stderr
