"""docs/accounts.md holds true: its queries answer per account on a database synced for two
accounts (docs/accounts.md, *Across accounts, for analysts*), its CSV and the errors it shows
are what ``accounts import`` reads and says (docs/accounts.md, *3. Import*), every command
line it shows parses, and the rehearsal on the fake fleet runs as written
(docs/accounts.md, *Rehearse on the fake*)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from regionsync import store
from regionsync.errors import RegionSyncError
from regionsync.source.saved import FileSource
from regionsync.store import accounts
from regionsync.store.grants import quote_identifier
from regionsync.store.schema import migrate
from regionsync.sync import run_sync
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support import clean_environ, create_pg_database, drop_pg_database, settings_for
from tests.support.cli import Invoke, url_env
from tests.support.docs import page, section
from tests.support.fakeapi_fixtures import start_fake

PAGE = page("accounts.md")
ANALYSTS = section(PAGE, "Across accounts, for analysts")
Row = tuple[Any, ...]


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def title(sql: str) -> str:
    """A query's first comment line: what it answers."""
    return sql.splitlines()[0].removeprefix("-- ")


# Two accounts, synced from saved answers ------------------------------------------------

NAMES = {
    "r1": "India: Jio",
    "r2": "India: Airtel",
    "r3": "United States: T-Mobile",
    "r4": "United States: Verizon",
    "r5": "Nigeria: MTN",
    "r6": "Brazil: Vivo",
    "r7": "Mexico: Telcel",
    "r8": "Kenya: Safaricom",
}
#: What each run of each account received: region id -> carrier_enabled.
ANSWERS = {
    ("acme", 1): {"r1": True, "r2": True, "r3": True, "r4": True, "r5": False},
    # r3 disabled, r5 gone, r6 new.
    ("acme", 2): {"r1": True, "r2": True, "r3": False, "r4": True, "r6": True},
    ("globex", 1): {"r1": True, "r2": False, "r3": True, "r7": True, "r8": False},
}
#: Runs moved back by this much, as if they had run two days ago.
BACK = timedelta(days=2)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated PostgreSQL database with four accounts: ``acme`` synced two days ago and
    now; ``globex`` synced two days ago, then failing now; ``initech`` never synced;
    ``umbrella`` paused, never synced."""
    url = create_pg_database()
    engine = store.create_engine(settings_for(url))
    try:
        migrate(engine)
        with engine.begin() as connection:
            rows = [
                accounts.account_row({"name": "acme", "sid": "HXACME01", "pod": "in"}),
                accounts.account_row({"name": "globex", "sid": "HXGLOBEX", "pod": "na"}),
                accounts.account_row({"name": "initech", "sid": "HXINITECH", "pod": "na"}),
                accounts.account_row({"name": "umbrella", "sid": "HXUMBRELLA", "pod": "in"}),
            ]
            accounts.import_accounts(connection, rows)
            accounts.set_paused(connection, "umbrella", paused=True)
        folder = tmp_path_factory.mktemp("answers")

        def sync(account: str, run: int) -> int:
            path = folder / f"{account}-{run}.json"
            records = [
                {
                    "id": rid,
                    "region_name": f"/v1/regions/{rid}",
                    "display_name": NAMES[rid],
                    "carrier_enabled": enabled,
                    "hosting_region": "ASIA_PACIFIC",
                }
                for rid, enabled in ANSWERS[account, run].items()
            ]
            path.write_text(json.dumps({"data": records}))
            result = run_sync(engine, FileSource(path), account=account)
            assert result.status == "succeeded"
            assert result.run_id is not None
            return result.run_id

        earlier = [sync("acme", 1), sync("globex", 1)]
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE sync_runs SET started_at = started_at - :back,"
                    " finished_at = finished_at - :back WHERE id = ANY(:runs)"
                ),
                {"back": BACK, "runs": earlier},
            )
            connection.execute(
                sa.text(
                    "UPDATE region_history SET changed_at = changed_at - :back"
                    " WHERE sync_run_id = ANY(:runs)"
                ),
                {"back": BACK, "runs": earlier},
            )
        sync("acme", 2)
        broken = folder / "globex-broken.json"
        broken.write_text(json.dumps({"data": "not a list"}))
        with pytest.raises(RegionSyncError):
            run_sync(engine, FileSource(broken), account="globex")
        yield engine
    finally:
        engine.dispose()
        drop_pg_database(url)


def run_day(engine: Engine, account: str, run: int) -> date:
    """The UTC day on which the account's ``run``-th successful sync received its answer."""
    with engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT DISTINCT (h.changed_at AT TIME ZONE 'UTC')::date FROM region_history AS h"
                " WHERE h.account = :account AND h.sync_run_id = ("
                "  SELECT id FROM sync_runs WHERE account = :account AND status = 'succeeded'"
                "  ORDER BY id OFFSET :skip LIMIT 1)"
            ),
            {"account": account, "skip": run - 1},
        ).scalar_one()
    assert isinstance(found, date)
    return found


# What each documented query must answer on that database --------------------------------


def enabled_per_account(rows: list[Row], engine: Engine) -> None:
    # acme: r1 r2 r4 r6 enabled, r3 not (r5 removed); globex: r1 r3 r7 enabled, r2 r8 not.
    assert rows == [("acme", 4, 5), ("globex", 3, 5)]


def changes_per_day(rows: list[Row], engine: Engine) -> None:
    then, now = run_day(engine, "acme", 1), run_day(engine, "acme", 2)
    assert then < now
    # account, day, changes, added, changed, removed, restored; newest day first.
    expected = [
        ("acme", now, 3, 1, 1, 1, 0),
        ("acme", then, 5, 5, 0, 0, 0),
        ("globex", run_day(engine, "globex", 1), 5, 5, 0, 0, 0),
    ]
    assert rows == sorted(expected, key=lambda row: (-row[1].toordinal(), row[0]))


def freshness(rows: list[Row], engine: Engine) -> None:
    # account, paused_at, last_success_at, minutes_since_success, consecutive_failures,
    # last_run_status, last_run_error, active_regions; never synced first, then the oldest.
    assert [row[0] for row in rows] == ["initech", "umbrella", "globex", "acme"]
    initech, umbrella, globex, acme = rows
    assert initech[1:] == (None, None, None, 0, None, None, 0)
    assert umbrella[1] is not None
    assert umbrella[2:] == (None, None, 0, None, None, 0)
    minutes = BACK.total_seconds() / 60
    assert minutes - 5 < globex[3] < minutes + 5
    assert globex[4:6] == (1, "failed")
    assert "data" in globex[6]
    assert globex[7] == 5
    assert acme[1] is None
    assert acme[3] < 5
    assert acme[4:8] == (0, "succeeded", None, 5)


def stale(rows: list[Row], engine: Engine) -> None:
    # globex's last success is two days old, initech never synced; umbrella is paused.
    assert [(row[0], row[2]) for row in rows] == [("globex", 1), ("initech", 0)]
    assert rows[0][1] is not None
    assert rows[1][1] is None


def coverage(rows: list[Row], engine: Engine) -> None:
    acme = ANSWERS["acme", 2]
    globex = ANSWERS["globex", 1]
    differ = [
        rid
        for rid in NAMES
        if (rid in acme or rid in globex) and acme.get(rid, False) != globex.get(rid, False)
    ]
    assert differ == ["r2", "r3", "r4", "r6", "r7"]
    expected = [(rid, NAMES[rid], acme.get(rid, False), globex.get(rid, False)) for rid in differ]
    assert rows == sorted(expected, key=lambda row: (row[1], row[0]))


#: Each query of the page, by its first comment line, and what it must answer.
CHECKS: dict[str, Callable[[list[Row], Engine], None]] = {
    "How many regions can each account send to now, out of how many it has?": (enabled_per_account),
    "How many changes did each account see, per UTC day, in the last 30 days? (PostgreSQL)": (
        changes_per_day
    ),
    "How fresh is each account's data, and which are failing? Never-synced ones first. "
    "(PostgreSQL)": freshness,
    "Which active accounts have had no successful sync for an hour, or never?": stale,
    "Where can acme send that globex cannot, and the other way round? (PostgreSQL)": coverage,
}
QUERIES = {title(sql): sql for sql in fenced(ANALYSTS, "sql")}


def test_every_query_on_the_page_is_checked() -> None:
    assert list(QUERIES) == list(CHECKS)
    # Only the analysts' part holds queries: nothing elsewhere escapes these checks.
    assert len(fenced(PAGE, "sql")) == len(QUERIES)


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_documented_query_answers_per_account(fleet: Engine, name: str) -> None:
    sql = QUERIES[name]
    assert ":" not in re.sub(r"'[^']*'|::\w+", "", sql), "a query runs as pasted: no :params"
    with fleet.connect() as connection:
        rows = [tuple(row) for row in connection.exec_driver_sql(sql)]
    assert rows, name
    CHECKS[name](rows, fleet)


def test_a_read_only_role_for_one_account_sees_one_account_in_every_query(
    fleet: Engine, make_role: Callable[[str], str], invoke: Invoke
) -> None:
    """The page's queries, read through ``grant-readonly --account acme``: acme's rows only."""
    role = make_role("acme reader")
    url = fleet.url
    done = invoke("grant-readonly", role, "--account", "acme", env=url_env(url))
    assert done.returncode == 0, done.stderr
    reader = sa.create_engine(url.set(username=role, password=None))
    seen: dict[str, set[Any]] = {}
    try:
        for name, sql in QUERIES.items():
            with reader.connect() as connection:
                seen[name] = {row[0] for row in connection.exec_driver_sql(sql)}
    finally:
        reader.dispose()
        with fleet.begin() as connection:  # so that make_role can drop it at the end
            connection.exec_driver_sql(f"DROP OWNED BY {quote_identifier(role)}")
    acme = {"acme"}
    # The stale accounts are globex and initech, both invisible; of globex's regions, none is
    # visible, so every region acme has enabled "differs".
    assert list(seen.values()) == [acme, acme, acme, set(), {"r1", "r2", "r4", "r6"}]


# The walkthrough's CSV, errors and command lines ----------------------------------------


def import_section() -> str:
    return section(PAGE, "3. Import")


def test_the_csv_of_the_walkthrough_imports_as_shown(
    pg_engine: Engine, pg_url: URL, invoke: Invoke, tmp_path: Path, monkeypatch: Any
) -> None:
    [csv_text] = fenced(section(PAGE, "2. The CSV"), "text")
    monkeypatch.chdir(tmp_path)
    Path("accounts.csv").write_text(csv_text)
    env = {**url_env(pg_url), "REGIONSYNC_API_KEYS_DIR": str(tmp_path / "keys")}
    first = invoke("-q", "accounts", "import", "accounts.csv", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "imported accounts.csv: 3 added, 0 updated, 0 unchanged\n"
    again = invoke("-q", "accounts", "import", "accounts.csv", env=env)
    assert again.stdout == "imported accounts.csv: 0 added, 0 updated, 3 unchanged\n"
    listed = invoke("-q", "accounts", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split(",") for line in csv_text.splitlines()[1:]]
    found = [
        (a["name"], a["sid"], a["pod"], a["api_key_env"], a["api_key_file"])
        for a in json.loads(listed.stdout)
    ]
    assert found == [(name, sid, pod, None, None) for name, sid, pod in lines]


def test_the_import_errors_shown_are_what_a_bad_file_gets(
    pg_engine: Engine, pg_url: URL, invoke: Invoke, tmp_path: Path, monkeypatch: Any
) -> None:
    shown = re.findall(r"^    (regionsync: error: .*)$", import_section(), re.MULTILINE)
    assert len(shown) == 2
    monkeypatch.chdir(tmp_path)
    good = [f"shop-{i:03d},HXAP{i:06d},in" for i in range(1, 9)]
    bad_pod = ["name,sid,pod", *good[:5], "shop-006,HXAP000006,xx"]  # line 7
    duplicate = ["name,sid,pod", *good[:7], "shop-003,HXAP000009,na"]  # line 9, as line 4
    for lines, message in zip((bad_pod, duplicate), shown, strict=True):
        Path("accounts.csv").write_text("\n".join(lines) + "\n")
        done = invoke("-q", "accounts", "import", "accounts.csv", env=url_env(pg_url))
        assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    with pg_engine.connect() as connection:
        assert accounts.list_accounts(connection) == []  # all or nothing


#: Where a command line's arguments end: a comment, a redirection, a pipe, another command,
#: or the end of inline code.
_END = re.compile(r"\s*[>|&;#`]")


def invocations() -> list[str]:
    """The arguments of every ``regionsync ...`` line of the page's code blocks (on a cron
    line, the last ``regionsync``: the first is the user it runs as)."""
    found = []
    blocks = re.findall(r"^```\w*\n(.*?)^```$", PAGE, re.MULTILINE | re.DOTALL)
    indented = re.findall(r"^(?:    .*\n?)+", PAGE, re.MULTILINE)
    for block in [*blocks, *indented]:
        for line in block.replace("\\\n", " ").splitlines():
            starts = [m.end() for m in re.finditer(r"(?<!\S)regionsync +", line)]
            if starts:
                found.append(_END.split(line[starts[-1] :], maxsplit=1)[0].strip())
    # Inline ones too, but not synopses (`regionsync accounts pause NAME`, `list [--json]`).
    for span in re.findall(r"`regionsync ([^`]+)`", PAGE):
        if not re.search(r"\b[A-Z]{3,}\b|\.\.\.|[\[(]", span):
            found.append(span)
    return found


def test_every_command_line_on_the_page_parses() -> None:
    from regionsync.cli.parser import build_parser

    lines = invocations()
    assert {"accounts import accounts.csv", "-q --env-file /etc/regionsync.env run --all"} <= set(
        lines
    )
    for line in lines:
        try:
            build_parser().parse_args(shlex.split(line))
        except SystemExit:
            pytest.fail(f"the page shows `regionsync {line}`, which does not parse")


# The rehearsal on the fake fleet, run as written ----------------------------------------

FAKE_COMMAND = "regionsync fake-api --accounts 500 --port 8080"
#: The shell the page's ```sh block is written for.
BASH = shutil.which("bash") or "/bin/bash"


@pytest.fixture
def fake_fleet() -> Iterator[FakeKaleyra]:
    fake = start_fake(accounts=500)
    yield fake
    fake.stop()


@pytest.mark.slow
def test_the_rehearsal_on_the_fake_runs_as_written(
    fake_fleet: FakeKaleyra, fresh_pg_url: URL, tmp_path: Path
) -> None:
    rehearsal = section(PAGE, "Rehearse on the fake")
    assert f"    {FAKE_COMMAND}\n" in rehearsal  # what fake_fleet starts, on a free port
    [script] = fenced(rehearsal, "sh")
    port = fake_fleet.url.rsplit(":", 1)[1]
    env = {
        **clean_environ(),
        "PATH": f"{Path(sys.executable).parent}:{clean_environ().get('PATH', '')}",
        "REGIONSYNC_DATABASE_URL": fresh_pg_url.render_as_string(hide_password=False),
    }
    done = subprocess.run(
        [BASH, "-euo", "pipefail", "-c", script.replace(":8080", f":{port}")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert "imported accounts.csv: 500 added, 0 updated, 0 unchanged" in out
    assert "imported accounts.csv: 0 added, 0 updated, 500 unchanged" in out
    synced = [line for line in out if re.match(r"shop-\d{3}: run \d+ succeeded ", line)]
    assert len(synced) == 500
    assert "500 account(s): 500 succeeded" in out
    assert "500 accounts: 500 ok - all fresh" in out
    assert sorted(p.name for p in (tmp_path / "keys").iterdir())[:2] == ["shop-001", "shop-002"]
    engine = sa.create_engine(fresh_pg_url)
    try:
        with engine.connect() as connection:
            health = connection.exec_driver_sql(
                "SELECT count(*), count(last_success_at), sum(active_regions) FROM sync_health"
            ).one()
    finally:
        engine.dispose()
    assert tuple(health) == (500, 500, 500 * 12)


def options(help_text: str) -> set[str]:
    listing = help_text.split("options:", 1)[1]
    return set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", listing, re.MULTILINE)) - {
        "--help",
        "--env-file",
        "--quiet",
        "--verbose",
    }


def test_every_accounts_action_and_option_is_on_the_page(invoke: Invoke) -> None:
    done = invoke("accounts", "--help")
    assert done.returncode == 0, done.stderr
    listing = done.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    actions = re.findall(r"^    ([a-z]+)\b", listing, re.MULTILINE)
    assert set(actions) == {"add", "list", "pause", "resume", "remove", "import"}
    for action in actions:
        assert f"`regionsync accounts {action} " in PAGE, action
        helped = invoke("accounts", action, "--help")
        assert helped.returncode == 0, helped.stderr
        missing = {o for o in options(helped.stdout) if o not in PAGE}
        assert missing == set(), (action, missing)
    # And --account wherever a command takes it.
    for command in ("run", "check", "status", "regions", "changes", "grant-readonly"):
        helped = invoke(command, "--help")
        assert "--account" in options(helped.stdout), command
        assert re.search(rf"{command} [^`\n]*--account", PAGE), command
