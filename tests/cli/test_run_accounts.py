"""``run``, ``status``, ``regions`` and ``changes`` with accounts in the accounts table,
against a fake Kaleyra fleet (docs/accounts.md): ``run --all`` syncs each unpaused account
once and one account's failure never stops the others; every row carries its account; a
command working on one account takes ``--account`` or the only one there is.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync import store
from regionsync.store.accounts import AccountRow, add_account, set_paused
from regionsync.testing.fakeapi import FakeKaleyra, fleet_key, fleet_regions, fleet_sid
from regionsync.testing.fakehook import WebhookReceiver, WebhookServer
from tests.support import settings_for
from tests.support.cli import Invoke, assert_one_line_error, url_env
from tests.support.sources import body, region

ACME, BRAVO, CAROL = fleet_sid(1), fleet_sid(2), fleet_sid(3)
#: The keys as the accounts' variables hold them (``KALEYRA_API_KEY_*``: never warned about).
KEYS = {
    "KALEYRA_API_KEY_ACME": fleet_key(ACME),
    "KALEYRA_API_KEY_BRAVO": fleet_key(BRAVO),
    "KALEYRA_API_KEY_CAROL": fleet_key(CAROL),
}
WEBHOOK_SECRET = "whsec_cnVuLWFjY291bnRzLXdlYmhvb2stc2VjcmV0LTMyYg=="


@pytest.fixture
def fake_options() -> dict[str, Any]:
    return {"accounts": 3, "regions_per_account": 4}


def add(url: URL, fake: FakeKaleyra, name: str, sid: str, **fields: Any) -> None:
    """An account of the fleet, its key in ``KALEYRA_API_KEY_<NAME>`` unless said otherwise."""
    fields.setdefault("api_key_env", f"KALEYRA_API_KEY_{name.upper()}")
    engine = store.create_engine(settings_for(url))
    try:
        with engine.begin() as connection:
            add_account(connection, AccountRow(name=name, sid=sid, base_url=fake.url, **fields))
    finally:
        engine.dispose()


def pause(url: URL, name: str) -> None:
    engine = store.create_engine(settings_for(url))
    try:
        with engine.begin() as connection:
            set_paused(connection, name, paused=True)
    finally:
        engine.dispose()


def query(url: URL, sql: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql))]
    finally:
        engine.dispose()


@pytest.fixture
def two(db_url: URL, fake: FakeKaleyra) -> dict[str, str]:
    """Accounts acme and bravo of the fleet, and the environment that has their keys."""
    add(db_url, fake, "acme", ACME)
    add(db_url, fake, "bravo", BRAVO)
    return {**url_env(db_url), **KEYS}


# run --all -------------------------------------------------------------------------------


def test_run_all_syncs_each_account_and_every_row_carries_its_account(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    done = invoke("run", "--all", env=two)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("acme: run 1 succeeded in ")
    assert lines[1].startswith("bravo: run 2 succeeded in ")
    assert "added 4" in lines[0]
    assert "added 4" in lines[1]
    assert lines[-1] == "2 account(s): 2 succeeded"

    regions = query(db_url, "SELECT account, id FROM regions ORDER BY account, id")
    expected = sorted(
        [("acme", r["id"]) for r in fleet_regions(ACME, 4)]
        + [("bravo", r["id"]) for r in fleet_regions(BRAVO, 4)]
    )
    assert regions == expected
    assert query(db_url, "SELECT id, account, status FROM sync_runs ORDER BY id") == [
        (1, "acme", "succeeded"),
        (2, "bravo", "succeeded"),
    ]
    history = query(
        db_url, "SELECT account, sync_run_id, count(*) FROM region_history GROUP BY 1, 2"
    )
    assert sorted(history) == [("acme", 1, 4), ("bravo", 2, 4)]
    # Each account asked the API with its own SID and key.
    asked = {(r.path.split("/")[2], r.headers["api-key"]) for r in fake.requests}
    assert asked == {(ACME, fleet_key(ACME)), (BRAVO, fleet_key(BRAVO))}
    for key in KEYS.values():
        assert key not in done.stdout + done.stderr

    again = invoke("run", "--all", env=two)  # the same answers: nothing to apply
    assert again.returncode == 0, again.stderr
    assert "acme: run 3 succeeded" in again.stdout
    assert "added 0" in again.stdout


def test_one_account_failing_does_not_stop_the_others_and_exits_1(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    add(db_url, fake, "carol", CAROL, api_key_env="KALEYRA_API_KEY_NOT_SET")
    add(db_url, fake, "zulu", CAROL)  # the key of another account: 401
    env = {**two, "KALEYRA_API_KEY_ZULU": fleet_key(ACME)}
    fake.account(BRAVO, keep=True).fail("rcs601")

    done = invoke("run", "--all", env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("acme: run ")
    assert "succeeded" in lines[0]
    assert lines[1].startswith("bravo: failed: ")
    assert "RCS601" in lines[1]
    assert lines[2] == (
        "carol: failed: account carol: no API key: the environment variable "
        "KALEYRA_API_KEY_NOT_SET is not set"
    )
    assert lines[3].startswith("zulu: failed: ")
    assert "401" in lines[3]
    # The hint names what to fix for this account, not the KALEYRA_* settings.
    assert f"check account zulu's key (env:KALEYRA_API_KEY_ZULU) and SID ({CAROL})" in lines[3]
    assert lines[4] == "4 account(s): 1 succeeded, 3 failed"
    assert_one_line_error(done, 1, "3 of 4 account(s) failed: bravo, carol, zulu")

    runs = query(db_url, "SELECT account, status, error FROM sync_runs ORDER BY id")
    assert [(a, s) for a, s, _ in runs] == [
        ("acme", "succeeded"),
        ("bravo", "failed"),
        ("carol", "failed"),
        ("zulu", "failed"),
    ]
    assert "KALEYRA_API_KEY_NOT_SET" in runs[2][2]  # the failure names where it looked
    assert query(db_url, "SELECT DISTINCT account FROM regions") == [("acme",)]
    for key in (*KEYS.values(), fleet_key(ACME)):
        assert key not in done.stdout + done.stderr
        assert key not in " ".join(str(e) for _, _, e in runs)


def test_a_missing_key_fails_that_accounts_run_named_with_exit_1(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    env = {k: v for k, v in two.items() if k != "KALEYRA_API_KEY_BRAVO"}
    done = invoke("run", "--account", "bravo", env=env)
    assert_one_line_error(
        done, 1, "account bravo: no API key: the environment variable KALEYRA_API_KEY_BRAVO"
    )
    assert query(db_url, "SELECT account, status FROM sync_runs") == [("bravo", "failed")]
    ok = invoke("run", "--account", "acme", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("run 2 succeeded")


def test_a_paused_account_is_skipped_by_all_and_refused_by_name(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    pause(db_url, "bravo")
    done = invoke("run", "--all", env=two)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("bravo: paused since ")
    assert "`regionsync accounts resume bravo`" in lines[1]
    assert lines[-1] == "2 account(s): 1 succeeded, 1 paused"
    assert query(db_url, "SELECT DISTINCT account FROM sync_runs") == [("acme",)]

    named = invoke("run", "--account", "bravo", env=two)
    assert_one_line_error(named, 2, "account bravo is paused", "regionsync accounts resume bravo")
    assert query(db_url, "SELECT count(*) FROM sync_runs WHERE account = 'bravo'") == [(0,)]


def test_which_account_a_run_syncs(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str], tmp_path: Path
) -> None:
    assert_one_line_error(invoke("run", env=two), 2, "name one with --account NAME, or use --all")
    assert_one_line_error(
        invoke("run", "--account", "nosuch", env=two), 2, "no account named 'nosuch'"
    )
    for args in (
        ("run", "--account", "acme", "--all"),
        ("run", "--account", "Not A Name"),
    ):
        done = invoke(*args, env=two)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(body([region("x")])))
    for option in (("--from-file", str(saved)), ("--dry-run",)):
        assert_one_line_error(invoke("run", "--all", *option, env=two), 2, option[0])
    assert query(db_url, "SELECT count(*) FROM sync_runs") == [(0,)]

    engine = store.create_engine(settings_for(db_url))
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM accounts WHERE name = 'bravo'"))
    engine.dispose()
    only = invoke("run", env=two)  # the only account there is
    assert only.returncode == 0, only.stderr
    assert query(db_url, "SELECT account FROM sync_runs") == [("acme",)]


def test_dry_run_and_from_file_work_on_the_named_account(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str], tmp_path: Path
) -> None:
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(body([region("x"), region("y")])))
    done = invoke("run", "--account", "bravo", "--from-file", str(saved), env=two)
    assert done.returncode == 0, done.stderr
    assert query(db_url, "SELECT account, id FROM regions ORDER BY id") == [
        ("bravo", "x"),
        ("bravo", "y"),
    ]
    assert not fake.requests  # the file, not the API

    dry = invoke("run", "--account", "acme", "--dry-run", env=two)
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing written: fetched 4, added 4" in dry.stdout
    dry_file = invoke("run", "--account", "bravo", "--dry-run", "--from-file", str(saved), env=two)
    assert "added 0" in dry_file.stdout  # bravo has them already; acme would not
    assert query(db_url, "SELECT account, count(*) FROM sync_runs GROUP BY account") == [
        ("bravo", 1)
    ]


def test_webhooks_are_delivered_after_all_the_runs_one_per_account(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    add(pg_url, fake, "acme", ACME)
    add(pg_url, fake, "bravo", BRAVO)
    receiver = WebhookServer(WebhookReceiver()).start()
    try:
        env = {
            **url_env(pg_url),
            **KEYS,
            "REGIONSYNC_WEBHOOK_URL": receiver.url,
            "REGIONSYNC_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        done = invoke("run", "--all", env=env)
        assert done.returncode == 0, done.stderr
        assert "notifications: 2 delivered" in done.stdout
        accounts = sorted(
            delivery.body["data"]["account"] for delivery in receiver.receiver.received
        )
        assert accounts == ["acme", "bravo"]
    finally:
        receiver.stop()


# status ----------------------------------------------------------------------------------


def _shift_success(url: URL, account: str, hours: int) -> None:
    shift = (
        f"finished_at - interval '{hours} hours'"
        if url.get_backend_name() == "postgresql"
        else f"datetime(finished_at, '-{hours} hours')"
    )
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE sync_runs SET finished_at = {shift} WHERE account = :a"),
            {"a": account},
        )
    engine.dispose()


def status_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    header = lines[1].split()
    assert header[:2] == ["account", "state"], lines
    rows = {}
    for line in lines[2:]:
        cells = line.split()
        if cells and cells[0] in ("acme", "bravo", "carol"):
            rows[cells[0]] = cells
    return rows


def test_status_has_a_row_per_account_and_exits_by_the_unpaused_ones(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    add(db_url, fake, "carol", CAROL)
    before = invoke("status", env=two)
    assert before.returncode == 1  # nobody has synced
    assert before.stdout.splitlines()[0] == "3 accounts: 3 never - STALE: 3 not synced within 3h"
    assert invoke("run", "--all", env=two).returncode == 0

    done = invoke("status", env=two)
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[0] == "3 accounts: 3 ok - all fresh"
    rows = status_rows(done.stdout)
    assert [rows[n][1] for n in ("acme", "bravo", "carol")] == ["ok", "ok", "ok"]
    assert "succeeded" in rows["acme"]

    _shift_success(db_url, "bravo", 4)
    fake.account(CAROL, keep=True).fail("http401")
    assert invoke("run", "--account", "carol", env=two).returncode == 1
    stale = invoke("status", env=two)
    assert stale.returncode == 1
    assert stale.stdout.splitlines()[0] == (
        "3 accounts: 1 ok, 1 stale, 1 failing - STALE: 1 not synced within 3h"
    )
    rows = status_rows(stale.stdout)
    assert (rows["bravo"][1], rows["carol"][1]) == ("stale", "failing")
    assert "failed Kaleyra refused the credentials" in " ".join(rows["carol"])  # last error
    assert invoke("status", "--max-age", "5h", env=two).returncode == 0
    assert invoke("status", "--account", "acme", env=two).returncode == 0
    assert invoke("status", "--account", "bravo", env=two).returncode == 1

    pause(db_url, "bravo")
    paused = invoke("status", env=two)
    assert paused.returncode == 0, paused.stdout
    assert status_rows(paused.stdout)["bravo"][1] == "paused"
    quiet = invoke("status", "-q", env=two)
    assert quiet.stdout.splitlines() == ["3 accounts: 1 ok, 1 failing, 1 paused - all fresh"]
    one = invoke("status", "--account", "bravo", env=two)
    assert one.returncode == 0
    assert "paused since" in one.stdout.splitlines()[0]
    assert "regionsync accounts resume bravo" in one.stdout
    assert_one_line_error(invoke("status", "--account", "nosuch", env=two), 2, "nosuch")


def test_status_json_keeps_its_keys_and_adds_the_accounts(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    assert invoke("run", "--all", env=two).returncode == 0
    assert invoke("run", "--account", "acme", env=two).returncode == 0
    report = json.loads(invoke("status", "--json", env=two).stdout)
    assert report["account"] is None
    assert report["fresh"] is True
    assert report["active_regions"] == 8  # both accounts'
    assert [(a["account"], a["state"], a["active_regions"]) for a in report["accounts"]] == [
        ("acme", "ok", 4),
        ("bravo", "ok", 4),
    ]
    assert [a["last_run_id"] for a in report["accounts"]] == [3, 2]

    acme = json.loads(invoke("status", "--json", "--account", "acme", env=two).stdout)
    assert acme["account"] == "acme"
    for key in (
        "checked_at",
        "last_success_at",
        "last_success_age_seconds",
        "active_regions",
        "removed_regions",
        "consecutive_failures",
        "lock",
        "recent_runs",
        "fresh",
        "max_age_seconds",
    ):
        assert key in acme
    assert [run["id"] for run in acme["recent_runs"]] == [3, 1]
    assert {run["account"] for run in acme["recent_runs"]} == {"acme"}
    assert [a["account"] for a in acme["accounts"]] == ["acme"]
    text = invoke("status", "--account", "acme", env=two).stdout
    assert "account: acme" in text
    assert "regions: 4 active, 0 removed" in text


# regions and changes ---------------------------------------------------------------------


@pytest.fixture
def same_ids(invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]) -> dict[str, str]:
    """acme and bravo serve the same region ids under different names, bravo's "b" disabled."""
    fake.account(ACME, keep=True).set_regions([region("a", name="Acme A"), region("b")])
    fake.account(BRAVO, keep=True).set_regions(
        [region("a", name="Bravo A"), region("b", name="Bravo B", enabled=False)]
    )
    assert invoke("run", "--all", env=two).returncode == 0
    return two


def test_regions_show_the_account_when_several_have_rows(
    invoke: Invoke, same_ids: dict[str, str]
) -> None:
    table = invoke("regions", env=same_ids).stdout.splitlines()
    assert table[0].split()[:3] == ["account", "id", "display_name"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["acme", "a"],
        ["acme", "b"],
        ["bravo", "a"],
        ["bravo", "b"],
    ]
    records = json.loads(invoke("regions", "--json", env=same_ids).stdout)
    assert next(iter(records[0])) == "account"
    assert [(r["account"], r["id"], r["display_name"]) for r in records] == [
        ("acme", "a", "Acme A"),
        ("acme", "b", "Region b"),
        ("bravo", "a", "Bravo A"),
        ("bravo", "b", "Bravo B"),
    ]
    rows = list(csv.reader(io.StringIO(invoke("regions", "--csv", env=same_ids).stdout)))
    assert rows[0][0] == "account"
    assert [row[:2] for row in rows[1:]] == [
        ["acme", "a"],
        ["acme", "b"],
        ["bravo", "a"],
        ["bravo", "b"],
    ]

    disabled = json.loads(invoke("regions", "--json", "--disabled", env=same_ids).stdout)
    assert [(r["account"], r["id"]) for r in disabled] == [("bravo", "b")]
    one = invoke("regions", "--json", "--account", "bravo", env=same_ids)
    assert one.returncode == 0, one.stderr
    assert [(r["id"], r["display_name"]) for r in json.loads(one.stdout)] == [
        ("a", "Bravo A"),
        ("b", "Bravo B"),
    ]
    assert "account" not in json.loads(one.stdout)[0]
    assert invoke("regions", "--account", "acme", env=same_ids).stdout.split()[0] == "id"
    assert_one_line_error(
        invoke("regions", "--account", "nosuch", env=same_ids), 2, "no account named 'nosuch'"
    )


def test_changes_join_each_row_to_its_own_accounts_region(
    invoke: Invoke, same_ids: dict[str, str]
) -> None:
    changes = json.loads(invoke("changes", "--json", env=same_ids).stdout)
    assert next(iter(changes[0])) == "account"
    named = sorted((c["account"], c["region_id"], c["display_name"]) for c in changes)
    assert named == [
        ("acme", "a", "Acme A"),
        ("acme", "b", "Region b"),
        ("bravo", "a", "Bravo A"),
        ("bravo", "b", "Bravo B"),
    ]  # four rows, not eight: a history row meets its own account's region only
    table = invoke("changes", env=same_ids).stdout.splitlines()
    assert table[0].split()[:2] == ["account", "changed_at"]

    acme = json.loads(invoke("changes", "--json", "--account", "acme", env=same_ids).stdout)
    assert [(c["region_id"], c["display_name"]) for c in acme] == [
        ("b", "Region b"),
        ("a", "Acme A"),
    ]
    assert "account" not in acme[0]
    region_a = json.loads(invoke("changes", "--json", "--region", "a", env=same_ids).stdout)
    assert sorted(c["account"] for c in region_a) == ["acme", "bravo"]
    since = datetime.now(UTC).isoformat()
    assert invoke("changes", "--since", since, "--account", "bravo", env=same_ids).stdout == (
        "no changes\n"
    )


def test_one_accounts_rows_show_no_account_column_whatever_the_table_holds(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra, two: dict[str, str]
) -> None:
    assert invoke("run", "--account", "acme", env=two).returncode == 0
    regions = json.loads(invoke("regions", "--json", env=two).stdout)
    assert len(regions) == 4
    assert "account" not in regions[0]
    assert invoke("changes", env=two).stdout.split()[0] == "changed_at"
    empty = invoke("regions", "--account", "bravo", env=two)  # an account with no rows yet
    assert (empty.returncode, empty.stdout) == (0, "no regions\n")


def test_with_the_table_empty_all_syncs_the_settings_account(
    invoke: Invoke, db_url: URL, fake: FakeKaleyra
) -> None:
    env = {
        **url_env(db_url),
        "KALEYRA_BASE_URL": fake.url,
        "KALEYRA_SID": ACME,
        "KALEYRA_API_KEY": fleet_key(ACME),
        "REGIONSYNC_ACCOUNT": "acme",
    }
    done = invoke("run", "--all", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("acme: run 1 succeeded")
    named = invoke("run", "--account", "acme", env=env)
    assert named.returncode == 0, named.stderr
    assert query(db_url, "SELECT DISTINCT account FROM regions") == [("acme",)]
    assert_one_line_error(
        invoke("run", "--account", "bravo", env=env), 2, "the only account is 'acme'"
    )
    unset = {k: v for k, v in env.items() if k != "KALEYRA_SID"}
    assert_one_line_error(invoke("run", "--all", env=unset), 2, "KALEYRA_SID")
    assert query(db_url, "SELECT count(*) FROM sync_runs") == [(2,)]
