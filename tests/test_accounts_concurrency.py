"""Accounts sync side by side (docs/accounts.md, *Locks*): two
accounts at the same moment both apply, in overlapping runs; one account twice at once is
once skipped; and an account's key never leaves its sync: not the database (``pg_dump``),
not a log line, not an error."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.accounts import Account, account_source
from regionsync.settings import Settings
from regionsync.store.accounts import AccountRow, add_account, get_account
from regionsync.store.tables import regions, sync_runs
from regionsync.sync import SyncResult, run_sync
from regionsync.testing.fakeapi import FakeKaleyra, fleet_key, fleet_sid
from tests.support import settings_for
from tests.support.cli import Invoke, url_env

#: Each fleet account's key in a variable of its own, as docs/accounts.md advises.
KEYS = {f"KALEYRA_API_KEY_BRAND{n}": fleet_key(fleet_sid(n)) for n in (1, 2)}


@pytest.fixture
def fake_options() -> dict[str, Any]:
    # Every answer takes 0.6 s, so that two runs started together overlap for sure.
    return {"accounts": 2, "regions_per_account": 5, "latency": 0.6}


def _accounts(engine: Engine, fake: FakeKaleyra) -> None:
    with engine.begin() as connection:
        for n in (1, 2):
            add_account(
                connection,
                AccountRow(
                    f"brand{n}",
                    fleet_sid(n),
                    base_url=fake.url,
                    api_key_env=f"KALEYRA_API_KEY_BRAND{n}",
                ),
            )


def _sync(engine: Engine, settings: Settings, name: str) -> Callable[[], SyncResult]:
    with engine.connect() as connection:
        row = get_account(connection, name)
    account = Account(name, row)
    return lambda: run_sync(engine, account_source(account, settings), account=name)


def _together(*jobs: Callable[[], SyncResult]) -> list[SyncResult]:
    results: list[SyncResult | BaseException] = [RuntimeError("not run")] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(index: int, job: Callable[[], SyncResult]) -> None:
        start.wait()
        try:
            results[index] = job()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            results[index] = error

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, SyncResult)]


def test_two_accounts_synced_at_once_both_apply_in_overlapping_runs(
    engine: Engine, fake: FakeKaleyra
) -> None:
    _accounts(engine, fake)
    settings = settings_for(engine.url, **KEYS)
    one, two = _together(_sync(engine, settings, "brand1"), _sync(engine, settings, "brand2"))
    assert (one.status, one.account, one.counts.added) == ("succeeded", "brand1", 5)
    assert (two.status, two.account, two.counts.added) == ("succeeded", "brand2", 5)
    with engine.connect() as connection:
        spans = connection.execute(
            sa.select(sync_runs.c.account, sync_runs.c.started_at, sync_runs.c.finished_at)
        ).all()
        per_account = dict(
            connection.execute(
                sa.select(regions.c.account, sa.func.count()).group_by(regions.c.account)
            ).all()
        )
    assert per_account == {"brand1": 5, "brand2": 5}
    (_, start_a, end_a), (_, start_b, end_b) = sorted(spans)
    assert start_a < end_b
    assert start_b < end_a  # neither waited for the other: the runs overlapped


def test_one_account_twice_at_once_runs_once_and_is_skipped_once(
    engine: Engine, fake: FakeKaleyra
) -> None:
    _accounts(engine, fake)
    settings = settings_for(engine.url, **KEYS)
    job = _sync(engine, settings, "brand1")
    outcomes = sorted(result.status for result in _together(job, job))
    assert outcomes == ["skipped", "succeeded"]
    with engine.connect() as connection:
        counted = connection.execute(
            sa.select(sync_runs.c.status, sa.func.count()).group_by(sync_runs.c.status)
        ).all()
    assert dict(counted) == {"skipped": 1, "succeeded": 1}


SECRET_DIR_KEY = "sk-live-DIR-0123456789-leakcheck"
SECRET_FILE_KEY = "sk-live-FILE-0123456789-leakcheck"
SECRET_ENV_KEY = "sk-live-ENV-0123456789-leakcheck"


def test_no_account_key_reaches_the_database_the_logs_or_the_output(
    pg_engine: Engine, pg_url: URL, fake: FakeKaleyra, invoke: Invoke, tmp_path: Path
) -> None:
    """Three accounts, their keys in a variable, a file and the keys directory, each key
    refused by the fake (which answers 401 and echoes what it was sent) and one account
    whose file is missing: after `run --all`, `status`, `accounts list` and `check`, no key
    is in any output, any log line, or a `pg_dump` of the database."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "by-dir").write_text(SECRET_DIR_KEY + "\n")
    key_file = tmp_path / "by-file.key"
    key_file.write_text(SECRET_FILE_KEY)
    with pg_engine.begin() as connection:
        for row in (
            AccountRow("by-env", fleet_sid(1), base_url=fake.url, api_key_env="KALEYRA_API_KEY_X"),
            AccountRow("by-file", fleet_sid(1), base_url=fake.url, api_key_file=str(key_file)),
            AccountRow("by-dir", fleet_sid(2), base_url=fake.url),
            AccountRow("no-file", fleet_sid(2), base_url=fake.url, api_key_file="/nonexistent/k"),
        ):
            add_account(connection, row)
    env = {
        **url_env(pg_url),
        "KALEYRA_API_KEY_X": SECRET_ENV_KEY,
        "REGIONSYNC_API_KEYS_DIR": str(keys_dir),
        "REGIONSYNC_LOG_FORMAT": "json",
    }
    seen = []
    for arguments in (["run", "--all"], ["status", "--json"], ["accounts", "list"], ["check"]):
        result = invoke(*arguments, env=env)
        seen += [result.stdout, result.stderr]
    run_output = seen[0] + seen[1]
    assert "401" in run_output  # the keys were sent, and refused
    assert "no-file" in run_output
    pg_dump = shutil.which("pg_dump")
    assert pg_dump is not None, "pg_dump is needed (Debian: postgresql-client)"
    dump = subprocess.run(
        [pg_dump, pg_url.set(drivername="postgresql").render_as_string(hide_password=False)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "by-env" in dump  # the dump holds the accounts...
    seen.append(dump)
    with pg_engine.connect() as connection:
        errors = connection.execute(sa.select(sync_runs.c.account, sync_runs.c.error)).all()
    assert {account for account, error in errors if error} == {
        "by-env",
        "by-file",
        "by-dir",
        "no-file",
    }
    everything = "\n".join([*seen, json.dumps([list(row) for row in errors])])
    for key in (SECRET_DIR_KEY, SECRET_FILE_KEY, SECRET_ENV_KEY):
        assert key not in everything  # ...and no key, in any form the checks could see
        assert key[8:20] not in everything
