"""The command line as users meet it: exit codes, one-line messages, no tracebacks, no secrets.

Most tests call ``cli.main(argv)`` in-process and read what it printed; subprocesses are
kept for ``python -m regionsync`` itself, locks, kills and concurrency.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync.cli import commands as cli
from regionsync.testing.fakeapi import FakeKaleyra
from regionsync.testing.fakehook import WebhookReceiver, WebhookServer
from tests.support import clean_environ
from tests.support.cli import (
    Invoke,
    assert_one_line_error,
    table_counts,
    url_env,
)
from tests.support.sources import body, region

SAMPLE = Path(__file__).resolve().parents[2] / "regionsync" / "samples" / "regions.json"
KEY = "live-key-0c9f3b8497f58a94e84b"
PASSWORD = "db-pass-w0rd-77"
WEBHOOK_SECRET = "whsec_cXVpZXQtcnVuLXdlYmhvb2stc2VjcmV0LTMyYg=="  # 28 bytes, base64


def subprocess_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = clean_environ()
    return subprocess.run(
        [sys.executable, "-m", "regionsync", *args],
        env={**base, "REGIONSYNC_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def log_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """No database configured: the embedded SQLite file under a private XDG_DATA_HOME."""
    return {"XDG_DATA_HOME": str(tmp_path / "data")}


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(body(records)))
    return path


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"sid": "ACME42", "api_key": KEY, "regions": [region("a"), region("b")]}


def kaleyra_env(fake: FakeKaleyra, key: str = KEY) -> dict[str, str]:
    return {"KALEYRA_BASE_URL": fake.url, "KALEYRA_SID": "ACME42", "KALEYRA_API_KEY": key}


# python -m regionsync, as a new user runs it ---------------------------------------------


@pytest.mark.slow
def test_quick_start_on_the_embedded_database(home: dict[str, str], tmp_path: Path) -> None:
    done = subprocess_cli("migrate", env=home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "migrated: empty ->" in done.stdout
    assert "is up to date" in subprocess_cli("migrate", env=home).stdout
    done = subprocess_cli("run", "--from-file", str(SAMPLE), env=home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run 1 succeeded")
    events = log_events(done.stderr)
    names = [e["event"] for e in events]
    assert names[0] == "database.embedded"
    assert events[0]["path"] == str(tmp_path / "data" / "regionsync" / "regionsync.db")
    assert {"sync.started", "fetch.finished", "region.added", "sync.finished"} <= set(names)
    assert all(e["run_id"] == 1 for e in events if e["event"] != "database.embedded")
    finished = next(e for e in events if e["event"] == "sync.finished")
    assert finished["added"] == finished["fetched"] - finished["rejected"] > 0
    assert (tmp_path / "data" / "regionsync" / "regionsync.db").is_file()

    status = subprocess_cli("status", "--json", env=home)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["fresh"] is True
    assert report["active_regions"] == finished["added"]
    assert report["recent_runs"][0]["status"] == "succeeded"


# Usage and configuration errors ------------------------------------------------------------


def test_unmigrated_database_is_refused(invoke: Invoke, home: dict[str, str]) -> None:
    for args in (("run", "--from-file", str(SAMPLE)), ("status",), ("regions",), ("changes",)):
        assert_one_line_error(invoke(*args, env=home), 2, "run `regionsync migrate`")


def test_an_unmigrated_sqlite_file_is_named(invoke: Invoke, home: dict[str, str]) -> None:
    path = Path(home["XDG_DATA_HOME"]) / "regionsync" / "regionsync.db"
    assert_one_line_error(
        invoke("status", env=home),
        2,
        f"the database {path} (SQLite) has no regionsync schema: run `regionsync migrate`",
    )
    check = invoke("check", env=home)  # a file that now exists, empty
    assert f"{path} (SQLite) has no regionsync schema: run `regionsync migrate`" in check.stdout


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"REGIONSYNC_MAX_REMOVAL_FRACTION": "lots"}, "REGIONSYNC_MAX_REMOVAL_FRACTION"),
        ({"KALEYRA_BASE_URL": "http://kaleyra.example.com"}, "KALEYRA_BASE_URL"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
    ],
)
def test_bad_setting_exits_2_naming_it(
    invoke: Invoke, home: dict[str, str], env: dict[str, str], setting: str
) -> None:
    assert_one_line_error(invoke("run", env={**home, **env}), 2, setting)
    assert_one_line_error(invoke("check", env={**home, **env}), 2, setting)


def test_api_run_without_kaleyra_settings_names_the_missing_one(
    invoke: Invoke, home: dict[str, str]
) -> None:
    invoke("migrate", env=home)
    assert_one_line_error(invoke("run", env=home), 2, "KALEYRA_SID")


def test_usage_error_exits_2(invoke: Invoke, home: dict[str, str]) -> None:
    for args in (
        ("status", "--max-age", "soon"),
        ("changes", "--since", "yesterday"),
        ("regions", "--enabled", "--removed"),
        ("regions", "--json", "--csv"),
        ("-q", "status", "-v"),
    ):
        done = invoke(*args, env=home)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("changes", "--since", "2999999d"),
        ("status", "--max-age", "999999999999d"),
        ("status", "--max-age", "36501d"),
        ("changes", "--since", "0001-01-01T00:00:00+14:00"),
        ("changes", "--since", "9999-12-31T23:59:59-14:00"),
        ("changes", "--since", "1899-12-31T23:59:59+00:00"),
        ("regions", "--limit", "99999999999999999999"),
        ("changes", "--limit", "99999999999999999999"),
        ("status", "--limit", "99999999999999999999"),
        ("notifications", "--limit", "99999999999999999999"),
        ("regions", "--limit", "1000001"),
        ("schedule", "--count", "1000001"),
        ("status", "--max-age", "\u0661\u0665m"),  # Arabic-Indic digits: ASCII only, as settings
        ("changes", "--since", "\u0661\u0665m"),
        ("regions", "--limit", "\u0661\u0665"),
    ],
)
def test_an_out_of_range_option_exits_2_with_one_line_naming_it(
    invoke: Invoke, home: dict[str, str], args: tuple[str, ...]
) -> None:
    assert invoke("migrate", env=home).returncode == 0  # so a bad value would reach the database
    done = invoke(*args, env=home)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if "error:" in line]
    assert f"argument {args[-2]}: " in error


def test_the_widest_options_in_range_work_on_either_database(invoke: Invoke, db_url: URL) -> None:
    env = url_env(db_url)
    for args in (
        ("regions", "--limit", "1000000"),
        ("changes", "--limit", "1000000", "--since", "36500d"),
        ("changes", "--since", "1900-01-01T00:00:00+00:00"),
        ("changes", "--since", "9998-12-31T00:00:00-14:00"),
        ("notifications", "--limit", "1000000"),
        ("status", "--limit", "1000000", "--max-age", "36500d"),
    ):
        done = invoke(*args, env=env)
        assert done.returncode in (0, 1), (args, done.stderr)  # status: 1 when stale
        assert "error" not in done.stderr, (args, done.stderr)


def test_an_iso_time_with_an_offset_counts_from_that_moment(
    invoke: Invoke, home: dict[str, str], tmp_path: Path
) -> None:
    env = home
    assert invoke("migrate", env=env).returncode == 0
    saved = _write(tmp_path / "r.json", [region("a"), region("b")])
    assert invoke("run", "--from-file", str(saved), env=env).returncode == 0
    now = datetime.now(UTC)

    def changes_since(moment: datetime, offset: int) -> list[Any]:
        local = moment.astimezone(UTC) + timedelta(hours=offset)
        written = f"{local.replace(tzinfo=None).isoformat()}{offset:+03d}:00"
        done = invoke("changes", "--json", "--since", written, env=env)
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    assert len(changes_since(now - timedelta(minutes=5), +14)) == 2
    assert changes_since(now + timedelta(minutes=1), -14) == []


def command_paths(invoke: Invoke, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command, and every subcommand of a command that has its own, as ``--help``
    lists them (the commands in the indented list under a COMMAND argument)."""
    shown = invoke(*path, "--help").stdout
    listing = shown.split("positional arguments:", 1)[-1].split("options:", 1)[0]
    names = re.findall(r"^    ([a-z][a-z-]*)\b", listing, re.MULTILINE)
    if not names:
        return [path]
    return [found for name in names for found in command_paths(invoke, (*path, name))]


#: What a command needs besides options, so that it parses.
ARGUMENTS = {
    ("grant-readonly",): ("reader",),
    **{("accounts", action): ("acme",) for action in ("add", "pause", "resume", "remove")},
    ("accounts", "import"): ("accounts.csv",),
}


def test_every_command_takes_the_global_options_before_or_after_its_name(
    invoke: Invoke, tmp_path: Path
) -> None:
    from regionsync.cli.parser import build_parser

    env_file = tmp_path / "x.env"
    paths = command_paths(invoke)
    assert {("fake-api",), ("run",), ("grant-readonly",)} <= set(paths)
    for path in paths:
        words = (*path, *ARGUMENTS.get(path, ()))
        for options in (("-q", "--env-file", str(env_file)), ("-v",)):
            for argv in ((*options, *words), (*words, *options)):
                args = build_parser().parse_args(argv)
                assert callable(args.handler), argv
                assert args.quiet is ("-q" in options), argv
                assert args.verbose is ("-v" in options), argv
                assert args.env_file == (env_file if "-q" in options else None), argv


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "quiet"),
    [
        (("-q", "fake-api", "--port", "0"), True),
        (("fake-api", "--port", "0", "--quiet"), True),
        (("fake-api", "--port", "0"), False),
    ],
)
def test_fake_api_is_quiet_with_the_global_option_before_or_after_its_name(
    argv: tuple[str, ...], quiet: bool
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "regionsync", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean_environ(), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in banner, process.stderr
        url = banner.split("listening on ", 1)[1].split()[0]
        requests.get(f"{url}/nothing-here", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert ('"GET /nothing-here' in err) is not quiet  # -q: no line per request


def test_env_file_is_read_before_or_after_the_command(
    invoke: Invoke, tmp_path: Path, home: dict[str, str]
) -> None:
    env_file = tmp_path / "regionsync.env"
    env_file.write_text("REGIONSYNC_SCHEDULE=0 6 * * 7\nREGIONSYNC_TIMEZONE=Europe/Berlin\n")
    before = invoke("--env-file", str(env_file), "schedule", "--count", "2", env=home)
    after = invoke("schedule", "--count", "2", "--env-file", str(env_file), env=home)
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout
    assert [line[10:] for line in after.stdout.splitlines()] == ["T06:00:00+01:00"] * 2
    missing = invoke("status", "--env-file", str(tmp_path / "nope.env"), env=home)
    assert_one_line_error(missing, 2, "--env-file", "nope.env")


def test_missing_from_file_is_a_usage_error_with_no_run_row(
    invoke: Invoke, db_url: URL, tmp_path: Path
) -> None:
    env = url_env(db_url)
    for path in (tmp_path / "missing.json", tmp_path):
        for extra in ((), ("--dry-run",)):
            done = invoke("run", *extra, "--from-file", str(path), env=env)
            assert_one_line_error(done, 2, "--from-file", str(path))
    assert table_counts(db_url)["sync_runs"] == 0


def test_bad_file_fails_with_one_line(invoke: Invoke, home: dict[str, str], tmp_path: Path) -> None:
    invoke("migrate", env=home)
    broken = tmp_path / "broken.json"
    broken.write_text('{"code": "RCS902", "data": [')
    assert_one_line_error(invoke("run", "--from-file", str(broken), env=home), 1, "broken.json")


def test_control_characters_in_errors_are_escaped(
    invoke: Invoke, home: dict[str, str], tmp_path: Path
) -> None:
    invoke("migrate", env=home)
    hostile = tmp_path / "bad\x1b[2J\x07.json"
    hostile.write_text("{")
    done = invoke("run", "--from-file", str(hostile), env=home)
    assert_one_line_error(done, 1, "bad\\x1b[2J\\x07.json")
    status = invoke("status", env=home)
    assert "bad\\x1b[2J\\x07.json" in status.stdout
    for output in (done.stderr, status.stdout):
        assert "\x1b" not in output.replace("\\x1b", "")
        assert "\x07" not in output


# run ------------------------------------------------------------------------------------


def test_mass_removal_exits_1_and_the_flag_overrides(
    invoke: Invoke, db_url: URL, tmp_path: Path
) -> None:
    env = url_env(db_url)
    first = _write(tmp_path / "a.json", [region(x) for x in "abc"])
    assert invoke("run", "--from-file", str(first), env=env).returncode == 0
    smaller = _write(tmp_path / "b.json", [region("a")])
    assert_one_line_error(
        invoke("run", "--from-file", str(smaller), env=env), 1, "--allow-mass-removal"
    )
    done = invoke("run", "--from-file", str(smaller), "--allow-mass-removal", env=env)
    assert done.returncode == 0, done.stderr
    assert "removed 2" in done.stdout


def test_dry_run_prints_changes_and_writes_nothing(
    invoke: Invoke, db_url: URL, tmp_path: Path
) -> None:
    env = url_env(db_url)
    invoke(
        "run", "--from-file", str(_write(tmp_path / "a.json", [region("a"), region("b")])), env=env
    )
    changed = _write(tmp_path / "b.json", [region("a", enabled=False), region("b"), region("c")])
    before = table_counts(db_url)
    done = invoke("run", "--dry-run", "--from-file", str(changed), env=env)
    assert done.returncode == 0, done.stderr
    assert "dry run, nothing written" in done.stdout
    assert "changed  a  carrier_enabled: True -> False" in done.stdout
    assert "added    c" in done.stdout
    assert table_counts(db_url) == before


def test_fail_on_reject_exits_1_after_applying_the_rest(
    invoke: Invoke, db_url: URL, tmp_path: Path
) -> None:
    env = url_env(db_url)
    mixed = _write(
        tmp_path / "m.json", [region("a"), region("b"), region("c", carrier_enabled="y")]
    )
    lenient = invoke("run", "--dry-run", "--from-file", str(mixed), env=env)
    assert lenient.returncode == 0, lenient.stderr
    dry = invoke("run", "--dry-run", "--fail-on-reject", "--from-file", str(mixed), env=env)
    assert_one_line_error(dry, 1, "1 record was rejected (--fail-on-reject)")
    done = invoke("run", "--fail-on-reject", "--from-file", str(mixed), env=env)
    assert_one_line_error(done, 1, "1 record was rejected (--fail-on-reject)")
    assert "succeeded" in done.stdout
    assert "added 2" in done.stdout
    assert table_counts(db_url)["regions"] == 2
    clean = _write(tmp_path / "c.json", [region("a"), region("b")])
    assert invoke("run", "--fail-on-reject", "--from-file", str(clean), env=env).returncode == 0


def test_quiet_prints_only_the_result_and_verbose_adds_debug(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    env = {**url_env(pg_url), **kaleyra_env(fake)}
    quiet = invoke("-q", "run", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("run 1 succeeded")
    assert quiet.stderr == ""
    assert invoke("run", "--quiet", env=env).stderr == ""
    normal = invoke("run", env=env)
    levels = {e["level"] for e in log_events(normal.stderr)}
    assert "info" in levels
    assert "debug" not in levels
    verbose = invoke("run", "-v", env=env)
    assert "fetch.attempt" in [e["event"] for e in log_events(verbose.stderr)]
    status = invoke("status", "-q", env=env)
    assert status.stdout.splitlines() == [status.stdout.splitlines()[0]]
    assert status.stdout.startswith("last success: ")


def test_quiet_run_prints_its_result_line_alone_and_a_failure_once(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    """What cron mails under ``-q``: one line, whatever the logs and the webhook had to say."""
    receiver = WebhookServer(WebhookReceiver()).start()
    try:
        env = {
            **url_env(pg_url),
            **kaleyra_env(fake),
            "REGIONSYNC_WEBHOOK_URL": receiver.url,
            "REGIONSYNC_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        fake.set_regions([region("a"), region("b"), region("c", carrier_enabled="y")])
        done = invoke("-q", "run", env=env)  # a rejected record, a delivered notification
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 1
        assert done.stdout.startswith("run 1 succeeded")
        assert done.stderr == ""
        assert len(receiver.receiver.accepted_ids()) == 1

        fake.set_regions([region("a")])
        receiver.receiver.fail(400)  # the delivery is refused: the run still succeeds
        done = invoke("run", "-q", "--allow-mass-removal", env=env)
        assert (done.returncode, len(done.stdout.splitlines()), done.stderr) == (0, 1, "")

        fake.fail("rcs601")
        failed = invoke("-q", "run", env=env)
        assert failed.returncode == 1
        assert failed.stdout == ""
        assert len(failed.stderr.splitlines()) == 1, failed.stderr
        assert_one_line_error(failed, 1, "RCS601")
        loud = invoke("run", env=env)  # without -q, the logs still tell the story
        assert "sync.failed" in [e["event"] for e in log_events(loud.stderr)]
    finally:
        receiver.stop()


def test_quiet_still_logs_the_traceback_of_a_bug(
    invoke: Invoke, home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(args: Any, settings: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_status", boom)
    done = invoke("-q", "status", env=home)
    assert done.returncode == 1
    assert "regionsync: internal error: RuntimeError: boom (details in the log)" in done.stderr
    [logged] = [e for e in log_events(done.stderr) if e["event"] == "internal_error"]
    assert "RuntimeError" in json.dumps(logged["exception"])


def test_api_run_and_secrets_stay_secret(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    url = pg_url.set(password=PASSWORD)
    env = {**url_env(url), **kaleyra_env(fake)}
    done = invoke("run", env=env)
    assert done.returncode == 0, done.stderr
    assert fake.requests[-1].headers["api-key"] == KEY
    bad = invoke("run", env={**env, "KALEYRA_API_KEY": KEY + "-wrong"})
    assert_one_line_error(bad, 1, "401")
    fake.fail("rcs601")
    assert_one_line_error(invoke("run", env=env), 1, "RCS601")
    for output in (done.stdout, done.stderr, bad.stdout, bad.stderr):
        assert KEY not in output
        assert PASSWORD not in output
    with pg_engine.connect() as c:
        stored = " ".join(
            str(v) for row in c.execute(sa.text("SELECT * FROM sync_runs")) for v in row
        )
        raw = " ".join(str(r[0]) for r in c.execute(sa.text("SELECT raw FROM regions")))
    assert KEY not in stored + raw
    assert PASSWORD not in stored + raw
    assert "ACME42" in stored  # the source URL is recorded, the key is not


def test_run_finding_the_lock_held_exits_0_as_skipped(
    invoke: Invoke, home: dict[str, str], tmp_path: Path
) -> None:
    invoke("migrate", env=home)
    lock_file = tmp_path / "data" / "regionsync" / "regionsync.db.lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = subprocess_cli("run", "--from-file", str(SAMPLE), env=home)
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert "skipped: another sync holds the lock" in done.stdout


@pytest.mark.slow
def test_concurrent_runs_apply_once(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    env = url_env(pg_url)
    first = _write(tmp_path / "1.json", [region(f"r{i}") for i in range(200)])
    assert invoke("run", "--from-file", str(first), env=env).returncode == 0
    changed = _write(
        tmp_path / "2.json",
        [region(f"r{i}", enabled=i % 2 == 0) for i in range(150)] + [region("new")],
    )
    base = clean_environ()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "regionsync", "run", "--from-file", str(changed)],
            env={**base, **env, "REGIONSYNC_LOG_FORMAT": "json"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    with pg_engine.connect() as c:
        per_change = c.execute(
            sa.text(
                "SELECT change, count(*) FROM region_history WHERE sync_run_id > 1 GROUP BY change"
            )
        ).all()
        duplicates = c.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT region_id, change FROM region_history"
                " WHERE sync_run_id > 1 GROUP BY region_id, change HAVING count(*) > 1) d"
            )
        ).scalar_one()
        statuses = sorted(
            r[0] for r in c.execute(sa.text("SELECT status FROM sync_runs WHERE id > 1"))
        )
        applied = c.execute(
            sa.text(
                "SELECT count(*) FROM sync_runs WHERE id > 1 AND (added + changed + removed) > 0"
            )
        ).scalar_one()
    assert dict(per_change) == {"added": 1, "changed": 75, "removed": 50}
    assert duplicates == 0
    assert applied == 1
    assert set(statuses) <= {"succeeded", "skipped"}
    assert len(statuses) == 6


@pytest.mark.slow
def test_a_killed_run_is_closed_as_abandoned_by_the_next(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    env = {**url_env(pg_url), **kaleyra_env(fake)}
    fake.fail("slow:30", times=1)
    base = clean_environ()
    victim = subprocess.Popen(
        [sys.executable, "-m", "regionsync", "run"],
        env={**base, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.requests, "the run never reached the API"
    finally:
        victim.kill()
        victim.wait()
    fake.clear_faults()
    done = invoke("run", env=env)
    assert done.returncode == 0, done.stderr
    with pg_engine.connect() as c:
        runs = c.execute(sa.text("SELECT status, error FROM sync_runs ORDER BY id")).all()
    assert runs[0][0] == "failed"
    assert runs[0][1].startswith("abandoned")
    assert runs[1][0] == "succeeded"


# status, schedule, grant-readonly --------------------------------------------------------


def test_status_exit_code_follows_freshness(invoke: Invoke, db_url: URL) -> None:
    env = url_env(db_url)
    assert invoke("status", env=env).returncode == 1  # never succeeded
    invoke("run", "--from-file", str(SAMPLE), env=env)
    done = invoke("status", env=env)
    assert done.returncode == 0, done.stderr
    assert "fresh" in done.stdout
    assert "succeeded" in done.stdout
    shift = (
        "UPDATE sync_runs SET finished_at = finished_at - interval '4 hours'"
        if db_url.get_backend_name() == "postgresql"
        else "UPDATE sync_runs SET finished_at = datetime(finished_at, '-4 hours')"
    )
    engine = sa.create_engine(db_url)
    with engine.begin() as c:
        c.execute(sa.text(shift))
    engine.dispose()
    stale = invoke("status", env=env)
    assert stale.returncode == 1
    assert "STALE" in stale.stdout
    assert invoke("status", "--max-age", "5h", env=env).returncode == 0


def test_status_json_counts_consecutive_failures(
    invoke: Invoke, db_url: URL, tmp_path: Path
) -> None:
    env = url_env(db_url)
    good = _write(tmp_path / "good.json", [region("a")])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert json.loads(invoke("status", "--json", env=env).stdout)["consecutive_failures"] == 0
    for source in (broken, good, broken, broken):
        invoke("run", "--from-file", str(source), env=env)
    report = json.loads(invoke("status", "--json", env=env).stdout)
    assert report["consecutive_failures"] == 2
    assert "2 failed run(s) since the last success" in invoke("status", env=env).stdout


def test_schedule_prints_as_many_times_as_asked_past_2100(invoke: Invoke) -> None:
    done = invoke("schedule", "--count", "5", env={"REGIONSYNC_SCHEDULE": "0 0 29 2 */7"})
    assert done.returncode == 0, done.stderr
    years = [int(line[:4]) for line in done.stdout.splitlines()]
    assert len(years) == 5
    assert 40 in {b - a for a, b in itertools.pairwise(years)}  # 2088 to 2128, past 2100


def test_schedule_says_why_it_prints_fewer_times(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    from regionsync.daemon import schedule

    monkeypatch.setattr(schedule, "SEARCH_DAYS", 366 * 20)  # less than 2032 to 2060
    done = invoke("schedule", "--count", "5", env={"REGIONSYNC_SCHEDULE": "0 0 29 2 */7"})
    assert done.returncode == 0
    assert 0 < len(done.stdout.splitlines()) < 5
    assert "fire time(s) of '0 0 29 2 */7' in the next 400 years" in done.stderr


def test_grant_readonly_from_the_command_line(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine
) -> None:
    env = url_env(pg_url)
    assert_one_line_error(invoke("grant-readonly", "nobody_here", env=env), 2, "ROLE")
    printed = invoke("grant-readonly", "bi", "--print", env=env)
    assert printed.returncode == 0
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "bi";' in printed.stdout
