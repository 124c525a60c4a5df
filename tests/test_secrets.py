"""No secret anywhere: every command and failure mode, run with an API key and a database
password full of quotes, backslashes and non-ASCII characters. Every byte of output, every
log line (JSON and console, with and without ``rich``), every text of every table: zero
occurrences, raw or escaped (see docs/sync.md, *Secrets in logs*).

Each secret carries an ASCII marker in its middle, which survives any escaping (``repr()``,
JSON, URL encoding) unchanged: finding no marker means finding no form of the secret.
PostgreSQL's trust authentication accepts any password, so the password is really sent.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync import cli, logs
from regionsync.accounts import account_source, configured_accounts, kaleyra_config
from regionsync.cli import commands
from regionsync.errors import PermanentSourceError, TransientSourceError
from regionsync.settings import Settings
from regionsync.source.kaleyra import KaleyraClient
from regionsync.store.accounts import account_row, add_account
from regionsync.store.engine import create_engine
from regionsync.store.grants import quote_identifier
from regionsync.store.schema import migrate
from regionsync.sync import run_sync
from regionsync.testing import fakehook
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support import (
    admin_url,
    clean_environ,
    create_pg_database,
    drop_pg_database,
    scrub_environ,
    settings_for,
)
from tests.support.fakeapi_fixtures import FAST, exception_texts
from tests.support.leaks import (
    FORMATS,
    KEY,
    PASSWORD,
    WEBHOOK_SECRET,
    assert_clean,
    escaped_forms,
)

SID = "ACME42"
PG_DUMP = "/usr/bin/pg_dump"


@dataclass
class Done:
    code: int
    out: str
    err: str

    def check(self, where: str, fmt: str) -> None:
        assert_clean(self.out, f"stdout of {where}")
        assert_clean(self.err, f"stderr of {where}")
        assert "Traceback" not in self.out
        if fmt == "json":
            for line in self.err.splitlines():
                if line.startswith("{"):
                    assert_clean(json.dumps(json.loads(line), ensure_ascii=False), where)


def assert_database_clean(url: URL) -> None:
    """Every column of every row of every table, as PostgreSQL writes it as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            tables = c.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
            for table in list(tables):
                rows = c.exec_driver_sql(f"SELECT t::text FROM {quote_identifier(table)} AS t")
                assert_clean("\n".join(r[0] for r in rows), f"table {table}")
    finally:
        engine.dispose()


@pytest.fixture
def database() -> Iterator[URL]:
    """A database of this test's own, reached with :data:`PASSWORD`: each test syncs afresh."""
    url = create_pg_database()
    yield url.set(password=PASSWORD)
    drop_pg_database(url)


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"sid": SID, "api_key": KEY}


@pytest.fixture
def reader(database: URL) -> Iterator[str]:
    """A plain role for grant-readonly; its grants go with the database's objects."""
    name = f"reader {uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE ROLE {quote_identifier(name)}")
    yield name
    target = sa.create_engine(database, isolation_level="AUTOCOMMIT")
    with target.connect() as c:
        c.exec_driver_sql(f"DROP OWNED BY {quote_identifier(name)}")
    target.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP ROLE {quote_identifier(name)}")
    admin.dispose()


def environment(database: URL, fake: FakeKaleyra, fmt: str, **extra: str) -> dict[str, str]:
    return {
        "REGIONSYNC_DATABASE_URL": database.render_as_string(hide_password=False),
        "KALEYRA_BASE_URL": fake.url,
        "KALEYRA_SID": SID,
        "KALEYRA_API_KEY": KEY,
        "REGIONSYNC_WEBHOOK_URL": fake.url + fakehook.PATH,
        "REGIONSYNC_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REGIONSYNC_LOG_FORMAT": fmt,
        **extra,
    }


class Runner:
    """``regionsync ARGS`` in this process, with exactly the given regionsync variables."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, env: dict[str, str], *argv: str) -> Done:
        with self.monkeypatch.context() as patch:
            scrub_environ(patch)
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                code = cli.main(list(argv))
            except SystemExit as exit_:  # --help
                code = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        return Done(code, out, err)


@pytest.fixture
def regionsync(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Runner:
    return Runner(monkeypatch, capsys)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_command_leaks_nothing(
    regionsync: Runner, database: URL, fake: FakeKaleyra, reader: str, fmt: str
) -> None:
    env = environment(database, fake, fmt)
    commands: list[tuple[tuple[str, ...], int]] = [
        (("migrate",), 0),
        (("run",), 0),
        (("run", "--dry-run"), 0),
        (("status",), 0),
        (("status", "--json"), 0),
        (("schedule",), 0),
        (("grant-readonly", reader), 0),
        (("grant-readonly", reader, "--print"), 0),
        (("fake-api", "--help"), 0),
        (("--help",), 0),
    ]
    for argv, code in commands:
        done = regionsync(env, *argv)
        assert done.code == code, (argv, done.err)
        done.check(" ".join(argv), fmt)
    assert fake.requests[-1].headers["api-key"] == KEY  # the key really was used
    assert fake.webhooks.received  # and so was the webhook secret, to sign
    assert_database_clean(database)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_failure_leaks_nothing(
    regionsync: Runner,
    database: URL,
    fake: FakeKaleyra,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    env = environment(database, fake, fmt)
    assert regionsync(env, "migrate").code == 0
    raw_password = quote(PASSWORD, safe="")
    failures: list[tuple[str, dict[str, str], tuple[str, ...], int]] = [
        (
            "malformed URL",
            {"REGIONSYNC_DATABASE_URL": f"postgresql://u:{PASSWORD}@[::1:5/x"},
            ("status",),
            2,
        ),
        (
            "malformed URL, quoted",
            {
                "REGIONSYNC_DATABASE_URL": "",
                "DATABASE_URL": f"postgresql://u:{raw_password}@[::1/x",
            },
            ("run",),
            2,
        ),
        (
            "wrong port",
            {"REGIONSYNC_DATABASE_URL": f"postgresql://u:{raw_password}@127.0.0.1:1/x"},
            ("run",),
            1,
        ),
        (
            "missing database",
            {
                "REGIONSYNC_DATABASE_URL": database.set(database="nope").render_as_string(
                    hide_password=False
                )
            },
            ("status",),
            1,
        ),
        ("bad setting", {"KALEYRA_POD": "eu"}, ("run",), 2),
        ("a key no HTTP header can carry", {"KALEYRA_API_KEY": KEY + "\u20ac"}, ("run",), 2),
        ("bad schedule", {"REGIONSYNC_SCHEDULE": "3000000d"}, ("schedule",), 2),
        ("unknown variable", {"KALEYRA_API_KEYY": KEY}, ("schedule",), 0),
    ]
    for what, extra, argv, code in failures:
        done = regionsync({**env, **extra}, *argv)
        assert done.code == code, (what, done.err)
        done.check(what, fmt)

    with FakeKaleyra(sid=SID, api_key="another-key") as other:
        done = regionsync({**env, "KALEYRA_BASE_URL": other.url}, "run")
    assert done.code == 1
    assert "401" in done.err
    done.check("401", fmt)

    fake.fail("rcs601")
    try:
        done = regionsync(env, "run")
    finally:
        fake.clear_faults()
    assert done.code == 1
    done.check("RCS601", fmt)

    fake.fail("http500", times=1)
    done = regionsync(env, "run")
    assert done.code == 0, done.err
    done.check("a 500, then success", fmt)

    def boom(args: Any, settings: Any) -> int:
        secret = settings.kaleyra_api_key.reveal()
        password = settings.database_url.password
        raise RuntimeError(f"broke on {secret!r} and {password!r} / {json.dumps(secret)}")

    monkeypatch.setattr(commands, "cmd_status", boom)
    done = regionsync(env, "status")
    assert done.code == 1
    assert "internal error: RuntimeError" in done.err
    done.check("an internal error quoting the secrets", fmt)
    assert_database_clean(database)


def test_a_sync_failing_after_retries_records_and_logs_no_secret(
    database: URL, fake: FakeKaleyra, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(
        database, KALEYRA_BASE_URL=fake.url, KALEYRA_SID=SID, KALEYRA_API_KEY=KEY
    )
    logs.configure(fmt="json", secrets=settings.secrets)  # as the CLI does
    engine = create_engine(settings)
    fake.fail("http500")
    try:
        migrate(engine)
        with pytest.raises(TransientSourceError, match="HTTP 500"):
            run_sync(engine, KaleyraClient(settings.require_kaleyra(), retry=FAST), trigger="cli")
        with engine.connect() as c:
            last = c.execute(
                sa.text("SELECT status, error FROM sync_runs ORDER BY id DESC")
            ).first()
    finally:
        fake.clear_faults()
        engine.dispose()
    assert last is not None
    assert last.status == "failed"
    assert "gave up after 4 attempts" in last.error
    Done(0, "", capsys.readouterr().err).check("retries", "json")
    assert_database_clean(database)


def test_database_connection_failures_name_the_setting_and_what_was_tried(
    regionsync: Runner, database: URL
) -> None:
    wrong_port = database.set(port=1).render_as_string(hide_password=False)
    missing = database.set(database="no_such_db").render_as_string(hide_password=False)
    unknown_host = database.set(host="no-such-host.invalid").render_as_string(hide_password=False)
    cases = [
        (
            "REGIONSYNC_DATABASE_URL",
            wrong_port,
            f"{database.host}:1/{database.database}",
            "refused",
        ),
        ("DATABASE_URL", missing, f"{database.host}:{database.port}/no_such_db", "does not exist"),
        (
            "REGIONSYNC_DATABASE_URL",
            unknown_host,
            f"no-such-host.invalid:{database.port}/{database.database}",
            "resolve",
        ),
    ]
    for setting, url, tried, reason in cases:
        done = regionsync({setting: url, "REGIONSYNC_LOG_FORMAT": "json"}, "status")
        assert done.code == 1, done.err
        message = done.err.strip().splitlines()[-1]
        assert message.startswith("regionsync: error: ")
        assert f"cannot connect to {tried}" in message
        assert f"(from {setting}=postgresql+psycopg://{database.username}:***@" in message
        assert reason in message
        done.check(setting, "json")


# Before the settings are read: a subprocess, with and without rich importable -------------

HIDE_RICH = "import sys; sys.modules['rich'] = None\n"
RUN_MAIN = "import sys\nfrom regionsync import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
BOOM = (
    "from regionsync.cli import commands as cli\n"
    "def boom(args, settings):\n"
    "    secret = settings.kaleyra_api_key.reveal()\n"
    "    raise RuntimeError('boom ' + repr(secret))\n"
    "cli.cmd_status = boom\n"
)


def rich_states() -> list[Any]:
    installed = importlib.util.find_spec("rich") is not None
    reason = "rich is not installed here; `pip install rich` to run this variant"
    return [
        pytest.param(False, id="rich-hidden"),
        pytest.param(
            True, id="rich-importable", marks=pytest.mark.skipif(not installed, reason=reason)
        ),
    ]


def python(code: str, *argv: str, env: dict[str, str]) -> Done:
    base = clean_environ()
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("rich", rich_states())
@pytest.mark.parametrize("fmt", [*FORMATS, "unset"])
def test_a_malformed_url_is_one_line_and_exit_2_before_logging_is_set_up(
    rich: bool, fmt: str
) -> None:
    env = {
        "REGIONSYNC_DATABASE_URL": f"postgresql://u:{PASSWORD}@[::1:5432/x",
        "KALEYRA_API_KEY": KEY,
    }
    if fmt != "unset":
        env["REGIONSYNC_LOG_FORMAT"] = fmt
    done = python(("" if rich else HIDE_RICH) + RUN_MAIN, "status", env=env)
    assert done.code == 2, done.err
    assert done.out == ""
    assert done.err.splitlines() == [
        "regionsync: error: REGIONSYNC_DATABASE_URL: not a valid database URL "
        "(expected postgresql://user:password@host:port/db)"
    ]
    done.check("malformed URL", "console")


@pytest.mark.slow
@pytest.mark.parametrize("rich", rich_states())
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_internal_error_logs_a_traceback_without_locals(
    rich: bool, fmt: str, tmp_path: Path
) -> None:
    env = {
        "XDG_DATA_HOME": str(tmp_path),
        "KALEYRA_API_KEY": KEY,
        "REGIONSYNC_LOG_FORMAT": fmt,
    }
    done = python(("" if rich else HIDE_RICH) + BOOM + RUN_MAIN, "status", env=env)
    assert done.code == 1, done.err
    assert done.out == ""
    assert "RuntimeError: boom" in done.err
    assert "in boom" in done.err or '"name": "boom"' in done.err  # the traceback is there
    assert "╭" not in done.err  # not rich's
    assert "locals" not in done.err
    done.check("internal error", fmt)


@pytest.mark.slow
def test_the_daemon_leaks_nothing(database: URL, fake: FakeKaleyra, tmp_path: Path) -> None:
    engine = create_engine(settings_for(database))
    migrate(engine)
    engine.dispose()
    env = {
        **clean_environ(),
        **environment(database, fake, "json", REGIONSYNC_SCHEDULE="1s"),
    }
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "regionsync", "daemon"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while log.read_text(errors="replace").count('"sync.finished"') < 2:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    Done(0, "", log.read_text(errors="replace")).check("daemon", "json")
    assert_database_clean(database)


# Accounts as rows: each key read at its sync, from a variable, a file or the keys directory --

#: One key per way of finding it (docs/accounts.md, *Keys*); each with a marker of its own.
ENV_KEY = "sk-live-ABCDEF0123456789-leakcheck"
FILE_KEY = "sk-live-FEDCBA9876543210-leakfile"
DIR_KEY = "k'e\"y\\é-LEAKDIRKEY4b7d-ñ'\"\\"
ECHOED_KEY = "e'c\"h\\ö-LEAKECHO9f1e-ß'\"\\"
ACCOUNT_KEYS = (ENV_KEY, FILE_KEY, DIR_KEY, ECHOED_KEY)
ACCOUNT_MARKERS = ("ABCDEF0123456789", "FEDCBA9876543210", "LEAKDIRKEY4b7d", "LEAKECHO9f1e")
ACCOUNT_KEY_FORMS = set().union(*(escaped_forms(key) for key in ACCOUNT_KEYS))


def assert_no_account_key(text: str, where: str) -> None:
    """No account key in ``text``, raw or escaped once or twice (and none of the others)."""
    assert_clean(text, where)
    folded = text.casefold()
    for marker in ACCOUNT_MARKERS:
        assert marker.casefold() not in folded, f"{marker} in {where}: {text[:2000]}"
    for form in ACCOUNT_KEY_FORMS:
        assert form not in text, f"{form!r} in {where}"


def assert_output_clean(done: Done, where: str) -> None:
    """stdout and stderr, and each JSON log line as decoded and written again."""
    assert "Traceback" not in done.err
    assert_no_account_key(done.out, f"stdout of {where}")
    assert_no_account_key(done.err, f"stderr of {where}")
    lines = [line for line in done.err.splitlines() if line.startswith("{")]
    assert lines, f"no JSON log line from {where}"
    for line in lines:
        assert_no_account_key(json.dumps(json.loads(line), ensure_ascii=False), where)


class _EchoingRefusal(BaseHTTPRequestHandler):
    """Kaleyra at its worst: 401, with the key it was sent in the message and a header."""

    def do_GET(self) -> None:
        key = self.headers.get("api-key", "")
        body = json.dumps(
            {
                "code": "RCS401",
                "message": f"the api-key {key} is not valid",
                "error": {"error_code": "UNAUTHORIZED", "error_message": f"bad api-key: {key}"},
            },
            ensure_ascii=False,
        ).encode()
        self.send_response(401, f"Unauthorized {key}")
        self.send_header("Content-Type", "application/json")
        self.send_header("WWW-Authenticate", f'ApiKey realm="{key}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echoing_refusal() -> Iterator[str]:
    """The base URL of a server that refuses every key, echoing it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingRefusal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def assert_every_text_clean(url: URL) -> None:
    """Every row of every table, as PostgreSQL writes it as text."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            tables = list(
                c.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                ).scalars()
            )
            assert {"accounts", "sync_runs", "regions", "applied_answers"} <= set(tables)
            for table in tables:
                rows = c.exec_driver_sql(f"SELECT t::text FROM {quote_identifier(table)} AS t")
                assert_no_account_key("\n".join(r[0] for r in rows), f"table {table}")
    finally:
        engine.dispose()


def pg_dump(url: URL) -> str:
    """A plain-text dump of the database, data included."""
    plain = url.set(drivername="postgresql", password=None).render_as_string()
    done = subprocess.run(
        [PG_DUMP, "--no-owner", plain], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_account_keys_are_nowhere_but_in_their_requests(
    regionsync: Runner, database: URL, echoing_refusal: str, tmp_path: Path
) -> None:
    """Four accounts as rows, their keys in a variable, a file, and the keys directory; one
    refused with its key echoed back, then keys missing. No key in any output, log line,
    error, ``repr()``, table, or ``pg_dump`` (docs/accounts.md, *Keys*)."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "initech").write_text(DIR_KEY + "\n")
    (keys_dir / "echo").write_text(ECHOED_KEY)
    key_file = tmp_path / "globex.key"
    key_file.write_text(FILE_KEY + "\n")
    env = {
        "REGIONSYNC_DATABASE_URL": database.render_as_string(hide_password=False),
        "KALEYRA_API_KEY_ACME": ENV_KEY,
        "REGIONSYNC_API_KEYS_DIR": str(keys_dir),
        "REGIONSYNC_LOG_FORMAT": "json",
    }
    assert regionsync(env, "migrate").code == 0
    engine = create_engine(settings_for(database))
    with contextlib.ExitStack() as stack:
        stack.callback(engine.dispose)
        fakes = {
            name: stack.enter_context(FakeKaleyra(sid=f"SID{name.upper()}", api_key=key))
            for name, key in (("acme", ENV_KEY), ("globex", FILE_KEY), ("initech", DIR_KEY))
        }
        with engine.begin() as c:
            for row in (
                account_row(
                    {"name": "acme", "sid": "SIDACME", "base_url": fakes["acme"].url}
                    | {"api_key_env": "KALEYRA_API_KEY_ACME"}
                ),
                account_row(
                    {"name": "globex", "sid": "SIDGLOBEX", "base_url": fakes["globex"].url}
                    | {"api_key_file": str(key_file)}
                ),
                account_row(
                    {"name": "initech", "sid": "SIDINITECH", "base_url": fakes["initech"].url}
                ),
                account_row({"name": "echo", "sid": "SIDECHO", "base_url": echoing_refusal}),
            ):
                add_account(c, row)

        # Every account once: three succeed, the echoed key's is refused.
        done = regionsync(env, "run", "--all")
        assert done.code == 1, done.err
        assert_output_clean(done, "run --all")
        assert "echo: failed: Kaleyra refused the credentials" in done.out
        assert "4 account(s): 3 succeeded, 1 failed" in done.out
        for name, key in (("acme", ENV_KEY), ("globex", FILE_KEY), ("initech", DIR_KEY)):
            assert fakes[name].requests[-1].headers["api-key"] == key  # each key was sent
            assert f"{name}: " in done.out

        # The same in-process, where the error itself can be read: no key in it either.
        settings = Settings.from_env(env)
        accounts = {account.name: account for account in configured_accounts(engine, settings)}
        logs.configure(fmt="json", secrets=settings.secrets)
        with pytest.raises(PermanentSourceError) as refused:
            run_sync(engine, account_source(accounts["echo"], settings), account="echo")
        for text in exception_texts(refused.value):
            assert_no_account_key(text, "the 401's error")
        assert "**********" in str(refused.value)  # the echo was there, and scrubbed

        # What a developer prints: none shows a key (each read now, so there is one to show).
        shown = [repr(settings), str(settings)]
        read = {"acme": ENV_KEY, "echo": ECHOED_KEY, "globex": FILE_KEY, "initech": DIR_KEY}
        for name, account in accounts.items():
            source = account_source(account, settings)
            config = kaleyra_config(account, settings)
            assert config.api_key.reveal() == read[name]
            shown += [repr(account), str(account), repr(account.row), repr(source), repr(config)]
        for text in shown:
            assert_no_account_key(text, "a repr()")

        # Keys gone: the file, and the one in the keys directory. Their runs fail, named.
        key_file.unlink()
        (keys_dir / "initech").unlink()
        done = regionsync(env, "run", "--all")
        assert done.code == 1, done.err
        assert_output_clean(done, "run --all without key files")
        assert f"cannot read the key file {key_file}" in done.out
        assert f"cannot read the key file {keys_dir / 'initech'}" in done.out
        for argv in (("status", "--json"), ("accounts", "list"), ("accounts", "list", "--json")):
            done = regionsync(env, *argv)
            assert done.code in (0, 1), (argv, done.err)
            assert_no_account_key(done.out + done.err, " ".join(argv))

    with engine.connect() as c:
        failed = c.execute(
            sa.text("SELECT account, count(*) FROM sync_runs WHERE status = 'failed' GROUP BY 1")
        ).all()
    assert dict(failed) == {"echo": 3, "globex": 1, "initech": 1}
    assert_every_text_clean(database)
    dump = pg_dump(database)
    assert "KALEYRA_API_KEY_ACME" in dump  # the dump holds the accounts, and their runs
    assert "cannot read the key file" in dump
    assert_no_account_key(dump, "pg_dump")
