"""The daemon with accounts in the table: every active account at each tick, paused ones
never, an account with a slower schedule of its own only when it is due, and one account
that fails never stopping the others (docs/accounts.md)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync.store.accounts import AccountRow, add_account, set_paused
from regionsync.store.tables import regions, sync_runs
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support.daemon import DaemonProcess


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"accounts": 4}


def _runs(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(sync_runs.c.account, sync_runs.c.status).order_by(sync_runs.c.id)
        ).all()
    found: dict[str, list[str]] = {}
    for account, status in rows:
        found.setdefault(account, []).append(status)
    return found


@pytest.mark.slow
def test_the_daemon_syncs_each_active_account_and_honours_their_pauses_and_schedules(
    pg_engine: Engine,
    pg_url: URL,
    fake: FakeKaleyra,
    start_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "brand-b.key"
    key_file.write_text("key-FAKE00002\n")
    with pg_engine.begin() as connection:
        for row in (
            AccountRow("brand-a", "FAKE00001", base_url=fake.url, api_key_env="KALEYRA_API_KEY_A"),
            AccountRow("brand-b", "FAKE00002", base_url=fake.url, api_key_file=str(key_file)),
            AccountRow("brand-c", "FAKE00003", base_url=fake.url, api_key_env="KALEYRA_API_KEY_A"),
            AccountRow(
                "brand-d",
                "FAKE00004",
                base_url=fake.url,
                api_key_env="KALEYRA_API_KEY_D",
                schedule="1h",
            ),
            # Its key is refused: its runs fail, the others' go on.
            AccountRow("brand-e", "FAKE00004", base_url=fake.url, api_key_env="KALEYRA_API_KEY_A"),
        ):
            add_account(connection, row)
        set_paused(connection, "brand-c", paused=True)

    daemon = start_daemon(
        pg_url,
        fake,
        KALEYRA_API_KEY_A="key-FAKE00001",
        KALEYRA_API_KEY_D="key-FAKE00004",
    )
    daemon.wait_until(
        lambda: _runs(pg_engine).get("brand-a", []).count("succeeded") >= 3,
        "three ticks of brand-a",
    )
    daemon.send(signal.SIGTERM)
    assert daemon.exit_code(timeout=30) == 0

    found = _runs(pg_engine)
    assert "brand-c" not in found  # paused: never called
    assert found["brand-b"].count("succeeded") >= 3
    assert found["brand-d"] == ["succeeded"]  # its own hourly schedule: once
    assert set(found["brand-e"]) == {"failed"}
    assert len(found["brand-e"]) >= 3
    assert "default" not in found  # the KALEYRA_* settings are no account once the table has rows
    with pg_engine.connect() as connection:
        per_account = dict(
            connection.execute(
                sa.select(regions.c.account, sa.func.count()).group_by(regions.c.account)
            ).all()
        )
    assert set(per_account) == {"brand-a", "brand-b", "brand-d"}
    assert all(number > 0 for number in per_account.values())
    failed = [e for e in daemon.events() if e["event"] == "daemon.run_failed"]
    assert failed
    assert {e["account"] for e in failed} == {"brand-e"}
