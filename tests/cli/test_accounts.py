"""``regionsync accounts``: the accounts table by hand and from CSV, on PostgreSQL and SQLite.

Every refusal is one line naming the field (and for a file its line) and exit 2, with nothing
written (docs/accounts.md, *3. Import*); the table says where a key is, never what it is
(docs/accounts.md, *Keys*).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync import store
from regionsync.cli import accounts as account_commands
from regionsync.store.lock import sync_lock
from regionsync.testing.fakeapi import FakeKaleyra
from regionsync.testing.fakehook import WebhookReceiver, WebhookServer
from tests.support import settings_for
from tests.support.cli import Done, Invoke, assert_one_line_error, url_env
from tests.support.fakeapi_fixtures import API_KEY

#: The tables holding an account's data (counted per account).
DATA = ("regions", "region_history", "sync_runs", "notification_deliveries")
WEBHOOK_SECRET = "whsec_YWNjb3VudHMtdGVzdC13ZWJob29rLXNlY3JldA=="


@pytest.fixture
def env(db_url: URL) -> dict[str, str]:
    return url_env(db_url)


def accounts_json(invoke: Invoke, env: dict[str, str]) -> list[dict[str, Any]]:
    done = invoke("accounts", "list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def query(url: URL, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def data_counts(url: URL, account: str) -> dict[str, int]:
    return {
        table: query(url, f"SELECT count(*) FROM {table} WHERE account = :a", a=account)[0][0]
        for table in DATA
    }


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    """A webhook receiver, so that a run queues (and delivers) notifications."""
    server = WebhookServer(WebhookReceiver()).start()
    try:
        yield server
    finally:
        server.stop()


def sync(invoke: Invoke, env: dict[str, str], name: str, hook: WebhookServer) -> Done:
    """A real sync of account ``name`` (``run --account``): its key read from where its row
    says, over HTTP from the fake, a webhook delivery recorded."""
    webhook = {"REGIONSYNC_WEBHOOK_URL": hook.url, "REGIONSYNC_WEBHOOK_SECRET": WEBHOOK_SECRET}
    done = invoke("run", "--account", name, env={**env, **webhook})
    assert done.returncode == 0, done.stderr
    assert " succeeded " in done.stdout, done.stdout
    return done


# add and list -----------------------------------------------------------------------------


def test_add_prints_one_line_per_account_and_list_shows_where_each_key_is(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    keys = str(tmp_path / "keys")
    done = invoke(
        "accounts", "add", "acme", "--sid", "AC42", "--pod", "IN",
        "--api-key-env", "KALEYRA_API_KEY_ACME", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == "added account acme (SID AC42, pod in, key from env:KALEYRA_API_KEY_ACME)\n"
    )
    done = invoke(
        "accounts", "add", "beta", "--sid", "B-2", "--base-url", "https://api.example.com/",
        "--api-key-file", "/run/secrets/beta", "--schedule", "0 */6 * * *", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "added account beta (SID B-2, https://api.example.com, key from file:/run/secrets/beta, "
        "schedule 0 */6 * * *)\n"
    )
    done = invoke(
        "accounts", "add", "gamma", "--sid", "G3", "--pod", "na",
        env={**env, "REGIONSYNC_API_KEYS_DIR": keys},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "added account gamma (SID G3, pod na, key from REGIONSYNC_API_KEYS_DIR/gamma)",
        "note: no --api-key-env or --api-key-file: the key is read from the file gamma in "
        f"REGIONSYNC_API_KEYS_DIR (here {keys}/gamma)",
    ]

    listing = invoke("accounts", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    assert header.split() == [
        "name",
        "sid",
        "endpoint",
        "key",
        "source",
        "schedule",
        "paused",
        "since",
        "created",
    ]
    assert [line.split()[:4] for line in lines] == [
        ["acme", "AC42", "pod", "in"],
        ["beta", "B-2", "https://api.example.com", "file:/run/secrets/beta"],
        ["gamma", "G3", "pod", "na"],
    ]
    assert "env:KALEYRA_API_KEY_ACME" in lines[0]
    assert "0 */6 * * *" in lines[1]
    assert "dir:REGIONSYNC_API_KEYS_DIR" in lines[2]

    rows = accounts_json(invoke, env)
    assert [row["name"] for row in rows] == ["acme", "beta", "gamma"]
    assert rows[0] | {"created_at": None} == {
        "name": "acme",
        "sid": "AC42",
        "pod": "in",
        "base_url": None,
        "api_key_env": "KALEYRA_API_KEY_ACME",
        "api_key_file": None,
        "schedule": None,
        "paused_at": None,
        "created_at": None,
        "key_source": "env:KALEYRA_API_KEY_ACME",
    }
    assert rows[0]["created_at"].endswith("+00:00")
    assert rows[1]["base_url"] == "https://api.example.com"
    assert rows[2]["key_source"] == "dir:REGIONSYNC_API_KEYS_DIR"


def test_without_a_key_dir_the_note_says_it_is_not_set_and_quiet_drops_the_note(
    invoke: Invoke, env: dict[str, str]
) -> None:
    done = invoke("accounts", "add", "solo", "--sid", "S1", "--pod", "in", env=env)
    assert done.returncode == 0, done.stderr
    assert "REGIONSYNC_API_KEYS_DIR, which is not set here" in done.stdout.splitlines()[1]
    done = invoke("accounts", "add", "duo", "--sid", "S2", "--pod", "in", "-q", env=env)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == "added account duo (SID S2, pod in, key from REGIONSYNC_API_KEYS_DIR/duo)\n"
    )


def test_an_empty_table_says_the_settings_are_the_one_account(
    invoke: Invoke, env: dict[str, str]
) -> None:
    done = invoke("accounts", "list", env={**env, "REGIONSYNC_ACCOUNT": "main"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "no accounts: the KALEYRA_* settings are the one account, named main (REGIONSYNC_ACCOUNT)"
    )
    assert accounts_json(invoke, env) == []


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["Acme", "--sid", "A1", "--pod", "in"], ["NAME:", "'Acme' is not an account name"]),
        (["a" * 64, "--sid", "A1", "--pod", "in"], ["NAME:", "1 to 63 characters"]),
        (["acme", "--pod", "in"], ["--sid: is required"]),
        (["acme", "--sid", "A 1", "--pod", "in"], ["--sid:"]),
        (["acme", "--sid", "A1"], ["--pod: give --pod (in or na) or --base-url, one of the two"]),
        (
            ["acme", "--sid", "A1", "--pod", "in", "--base-url", "https://api.example.com"],
            ["--pod: give --pod (in or na) or --base-url, one of the two"],
        ),
        (["acme", "--sid", "A1", "--pod", "eu"], ["--pod: must be one of: in, na"]),
        (["acme", "--sid", "A1", "--base-url", "http://api.example.com"], ["--base-url:"]),
        (
            ["acme", "--sid", "A1", "--pod", "in", "--api-key-env", "K", "--api-key-file", "/k"],
            ["--api-key-env: give --api-key-env or --api-key-file, not both"],
        ),
        (["acme", "--sid", "A1", "--pod", "in", "--api-key-env", "1KEY"], ["--api-key-env:"]),
        (
            ["acme", "--sid", "A1", "--pod", "in", "--api-key-file", "keys/acme"],
            ["--api-key-file: 'keys/acme' must be an absolute path"],
        ),
        (
            ["acme", "--sid", "A1", "--pod", "in", "--schedule", "61 * * * *"],
            ["--schedule: minute field '61': 61 is outside 0-59"],
        ),
        (["acme", "--sid", "A1", "--pod", "in", "--schedule", "@fortnightly"], ["--schedule:"]),
        (["acme", "--sid", "A1", "--pod", "in", "--schedule", "0 0 30 2 *"], ["never fires"]),
        (["acme", "--sid", "A1", "--pod", "in", "--schedule", "900d"], ["--schedule:"]),
        (["acme", "--sid", "A1", "--pod", "in", "--schedule", "1.5h"], ["--schedule:", "e.g. 90m"]),
    ],
)
def test_add_refuses_a_bad_field_with_one_line_naming_its_option_and_writes_nothing(
    invoke: Invoke, env: dict[str, str], args: list[str], needles: list[str]
) -> None:
    assert_one_line_error(invoke("accounts", "add", *args, env=env), 2, *needles)
    assert accounts_json(invoke, env) == []


def test_a_taken_name_is_refused_and_the_account_kept(invoke: Invoke, env: dict[str, str]) -> None:
    assert invoke("accounts", "add", "acme", "--sid", "A1", "--pod", "in", env=env).returncode == 0
    before = accounts_json(invoke, env)
    done = invoke("accounts", "add", "acme", "--sid", "OTHER", "--pod", "na", env=env)
    assert_one_line_error(done, 2, "NAME: an account named 'acme' exists already")
    assert accounts_json(invoke, env) == before


def test_every_action_needs_a_migrated_database(invoke: Invoke, tmp_path: Path) -> None:
    home = {"XDG_DATA_HOME": str(tmp_path / "data")}
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("name,sid,pod\nacme,A1,in\n")
    for args in (
        ("add", "acme", "--sid", "A1", "--pod", "in"),
        ("list",),
        ("pause", "acme"),
        ("resume", "acme"),
        ("remove", "acme"),
        ("import", str(csv_file)),
    ):
        assert_one_line_error(invoke("accounts", *args, env=home), 2, "run `regionsync migrate`")


# pause, resume, remove --------------------------------------------------------------------


def test_pause_and_resume_say_what_changed_and_are_safe_to_repeat(
    invoke: Invoke, env: dict[str, str]
) -> None:
    assert invoke("accounts", "add", "acme", "--sid", "A1", "--pod", "in", env=env).returncode == 0
    assert invoke("accounts", "pause", "acme", env=env).stdout == "paused account acme\n"
    [row] = accounts_json(invoke, env)
    paused_at = row["paused_at"]
    assert paused_at is not None
    shown = f"{paused_at[:10]} {paused_at[11:19]} UTC"

    again = invoke("accounts", "pause", "acme", env=env)
    assert again.returncode == 0
    assert again.stdout == f"account acme was already paused since {shown}\n"
    assert accounts_json(invoke, env)[0]["paused_at"] == paused_at  # the first pause kept
    listing = invoke("accounts", "list", env=env).stdout
    assert f"{paused_at[:10]} {paused_at[11:19]}" in listing.splitlines()[1]

    resumed = invoke("accounts", "resume", "acme", env=env)
    assert resumed.stdout == f"resumed account acme (paused since {shown})\n"
    assert accounts_json(invoke, env)[0]["paused_at"] is None
    again = invoke("accounts", "resume", "acme", env=env)
    assert (again.returncode, again.stdout) == (0, "account acme was not paused\n")


@pytest.mark.parametrize("action", [["pause"], ["resume"], ["remove"], ["remove", "--purge"]])
def test_an_unknown_account_is_refused(
    invoke: Invoke, env: dict[str, str], action: list[str]
) -> None:
    assert invoke("accounts", "add", "acme", "--sid", "A1", "--pod", "in", env=env).returncode == 0
    done = invoke("accounts", action[0], "nope", *action[1:], env=env)
    assert_one_line_error(done, 2, "NAME: no account named 'nope'")
    assert [row["name"] for row in accounts_json(invoke, env)] == ["acme"]


def test_remove_keeps_the_data_and_purge_deletes_only_that_accounts(
    invoke: Invoke, env: dict[str, str], db_url: URL, fake: FakeKaleyra, hook: WebhookServer
) -> None:
    env = {**env, "KALEYRA_API_KEY_ACME": API_KEY, "KALEYRA_API_KEY_BETA": API_KEY}
    for name in ("acme", "beta"):
        done = invoke(
            "accounts", "add", name, "--sid", fake.sid, "--base-url", fake.url,
            "--api-key-env", f"KALEYRA_API_KEY_{name.upper()}", env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        sync(invoke, env, name, hook)
    seeded = data_counts(db_url, "acme")
    assert all(seeded.values()), seeded  # regions, history, a run and deliveries
    assert data_counts(db_url, "beta") == seeded

    done = invoke("accounts", "remove", "acme", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"removed account acme; its data stays ({seeded['regions']} regions, "
        f"{seeded['region_history']} history rows, {seeded['sync_runs']} runs, "
        f"{seeded['notification_deliveries']} deliveries): "
        "`regionsync accounts remove acme --purge` deletes it\n"
    )
    assert [row["name"] for row in accounts_json(invoke, env)] == ["beta"]
    assert data_counts(db_url, "acme") == seeded

    # The row is gone, the data is not: --purge still deletes it.
    done = invoke("accounts", "remove", "acme", "--purge", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed the data of acme (no account row) and deleted its data")
    assert data_counts(db_url, "acme") == dict.fromkeys(DATA, 0)
    assert data_counts(db_url, "beta") == seeded
    assert_one_line_error(invoke("accounts", "remove", "acme", "--purge", env=env), 2, "'acme'")

    done = invoke("accounts", "remove", "beta", "--purge", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"removed account beta and deleted its data: {seeded['regions']} regions, "
        f"{seeded['region_history']} history rows, {seeded['sync_runs']} runs, "
        f"{seeded['notification_deliveries']} deliveries\n"
    )
    assert data_counts(db_url, "beta") == dict.fromkeys(DATA, 0)
    assert query(db_url, "SELECT count(*) FROM applied_answers")[0][0] == 0
    assert accounts_json(invoke, env) == []


def test_purge_waits_for_no_sync_it_refuses_while_one_holds_the_accounts_lock(
    invoke: Invoke, env: dict[str, str], db_url: URL
) -> None:
    assert invoke("accounts", "add", "acme", "--sid", "A1", "--pod", "in", env=env).returncode == 0
    assert invoke("accounts", "add", "beta", "--sid", "B1", "--pod", "in", env=env).returncode == 0
    engine = store.create_engine(settings_for(db_url))
    try:
        with sync_lock(engine, "acme") as held:
            assert held is not None
            done = invoke("accounts", "remove", "acme", "--purge", env=env)
            assert_one_line_error(done, 1, "a sync of account acme is running", "nothing was")
            # Another account's lock is another lock.
            assert invoke("accounts", "remove", "beta", "--purge", env=env).returncode == 0
    finally:
        engine.dispose()
    assert [row["name"] for row in accounts_json(invoke, env)] == ["acme"]
    assert invoke("accounts", "remove", "acme", "--purge", env=env).returncode == 0


def test_no_key_is_ever_listed_or_stored(
    invoke: Invoke,
    env: dict[str, str],
    db_url: URL,
    fake: FakeKaleyra,
    hook: WebhookServer,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "beta.key"
    key_file.write_text(API_KEY + "\n")
    keys = {"KALEYRA_API_KEY_ACME": API_KEY}
    base = ("--sid", fake.sid, "--base-url", fake.url)
    outputs = [
        invoke("accounts", "add", "acme", *base, "--api-key-env", "KALEYRA_API_KEY_ACME",
               env={**env, **keys}),
        invoke("accounts", "add", "beta", *base, "--api-key-file", str(key_file),
               env={**env, **keys}),
    ]  # fmt: skip
    outputs += [
        sync(invoke, {**env, **keys}, "acme", hook),
        sync(invoke, env, "beta", hook),
        invoke("accounts", "list", env={**env, **keys}),
        invoke("accounts", "list", "--json", env={**env, **keys}),
        invoke("accounts", "pause", "acme", env={**env, **keys}),
    ]
    assert all(done.returncode == 0 for done in outputs)
    assert "env:KALEYRA_API_KEY_ACME" in outputs[4].stdout
    assert f"file:{key_file}" in outputs[4].stdout
    for done in outputs:
        assert API_KEY not in done.stdout + done.stderr

    dumped = []
    engine = sa.create_engine(db_url)
    try:
        relations = sa.inspect(engine)
        with engine.connect() as connection:
            for name in [*relations.get_table_names(), *relations.get_view_names()]:
                dumped += [
                    repr(row) for row in connection.execute(sa.text(f"SELECT * FROM {name}"))
                ]
    finally:
        engine.dispose()
    assert len(dumped) > 20  # the syncs wrote regions, history, runs, deliveries
    assert not [row for row in dumped if API_KEY in row]
    if db_url.get_backend_name() == "sqlite":
        assert db_url.database is not None
        for path in Path(db_url.database).parent.glob("regionsync.db*"):
            assert API_KEY.encode() not in path.read_bytes(), path


# import -----------------------------------------------------------------------------------

GOOD = (
    "\ufeffname,sid,pod,base_url,api_key_env,api_key_file,schedule\n"
    "acme,AC1,in,,KALEYRA_API_KEY_ACME,,\n"
    'beta,B2,,https://api.example.com,,/run/keys/beta,"0 6 * * 1-5"\n'
    "gamma,G3,na,,,,15m\n"
)


def write(tmp_path: Path, text: str, name: str = "accounts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def xmins(url: URL) -> list[Any]:
    return query(url, "SELECT name, xmin::text FROM accounts ORDER BY name")


def test_import_adds_then_changes_nothing_then_updates_only_what_differs(
    invoke: Invoke, env: dict[str, str], db_url: URL, tmp_path: Path
) -> None:
    path = write(tmp_path, GOOD)
    done = invoke("accounts", "import", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"imported {path}: 3 added, 0 updated, 0 unchanged\n"
    first = accounts_json(invoke, env)
    assert [
        (r["name"], r["pod"], r["base_url"], r["key_source"], r["schedule"]) for r in first
    ] == [
        ("acme", "in", None, "env:KALEYRA_API_KEY_ACME", None),
        ("beta", None, "https://api.example.com", "file:/run/keys/beta", "0 6 * * 1-5"),
        ("gamma", "na", None, "dir:REGIONSYNC_API_KEYS_DIR", "15m"),
    ]
    postgres = db_url.get_backend_name() == "postgresql"
    before = xmins(db_url) if postgres else None

    again = invoke("accounts", "import", str(path), env=env)
    assert again.stdout == f"imported {path}: 0 added, 0 updated, 3 unchanged\n"
    assert accounts_json(invoke, env) == first
    if postgres:
        assert xmins(db_url) == before  # not one row rewritten

    assert invoke("accounts", "pause", "gamma", env=env).returncode == 0
    paused = accounts_json(invoke, env)[2]["paused_at"]
    changed = write(tmp_path, "sid,name,pod\nAC1,acme,in\nG4,gamma,na\nD5,delta,in\n", "b.csv")
    done = invoke("accounts", "import", str(changed), env=env)
    assert done.stdout == f"imported {changed}: 1 added, 2 updated, 0 unchanged\n"
    after = {row["name"]: row for row in accounts_json(invoke, env)}
    assert after["acme"]["api_key_env"] is None  # an omitted column is unset
    assert (after["gamma"]["sid"], after["gamma"]["schedule"]) == ("G4", None)
    assert after["gamma"]["paused_at"] == paused  # an import never resumes
    assert after["gamma"]["created_at"] == first[2]["created_at"]
    assert after["beta"] == first[1]  # not in the file: left alone
    assert after["delta"]["sid"] == "D5"


def test_import_reads_stdin(
    invoke: Invoke, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD.encode())))
    done = invoke("accounts", "import", "-", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "imported stdin: 3 added, 0 updated, 0 unchanged\n"


#: A good first part, then line 4 (or the line named) as given.
HEAD = "name,sid,pod,base_url,api_key_env,api_key_file,schedule\nkeep,K1,in,,,,\nkeep2,K2,na,,,,\n"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (HEAD + "bad,B 1,in,,,,\n", ["line 4: sid:"]),
        (HEAD + "Bad,B1,in,,,,\n", ["line 4: name:", "'Bad' is not an account name"]),
        (HEAD + "bad,B1,,,,,\n", ["line 4: pod: give pod (in or na) or base_url, one of"]),
        (HEAD + "bad,B1,in,https://x.example,,,\n", ["line 4: pod:"]),
        (HEAD + "bad,B1,in,,K,/k,\n", ["line 4: api_key_env: give api_key_env or api_key_file"]),
        (HEAD + "bad,B1,in,,,k,\n", ["line 4: api_key_file: 'k' must be an absolute path"]),
        (HEAD + "bad,B1,in,,,,61 * * * *\n", ["line 4: schedule: minute field"]),
        (HEAD + "fine,B1,in,,,,\n", None),  # the same file with a good line 4 imports
        (HEAD + "keep,B1,in,,,,\n", ["line 4: name: 'keep' is on line 2 too"]),
        (HEAD + "bad,B1,in,,,\n", ["line 4: has 6 fields, the header names 7"]),
        (HEAD + '"bad\nname",B1,in,,,,\n', ["line 4: name:"]),
        (HEAD + "bad,B1,in,,,," + "x" * 5000 + "\n", ["line 4: schedule: is over 4096"]),
        (HEAD + 'bad,"B1"x,in,,,,\n', ["line 4: is not valid CSV"]),
        ("name,sid,region\nacme,A1,in\n", ["line 1: unknown column 'region'"]),
        ("name,pod\nacme,in\n", ["line 1: the header lacks the column(s) sid"]),
        ("name,sid,sid\nacme,A1,A2\n", ["line 1: the header names column 'sid' twice"]),
        ("", ["accounts.csv: is empty: expected a header line"]),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(
    invoke: Invoke,
    env: dict[str, str],
    tmp_path: Path,
    text: str,
    needles: list[str] | None,
) -> None:
    assert invoke("accounts", "add", "keep", "--sid", "OLD", "--pod", "na", env=env).returncode == 0
    before = accounts_json(invoke, env)
    path = write(tmp_path, text)
    done = invoke("accounts", "import", str(path), env=env)
    if needles is None:
        assert done.returncode == 0, done.stderr
        return
    assert_one_line_error(done, 2, str(path), *needles)
    assert accounts_json(invoke, env) == before  # not even the good lines before it


def test_bytes_that_are_not_utf8_are_named_by_line(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEAD.encode() + "bad,B1,in,,,,caf\xe9\n".encode("latin-1"))
    assert_one_line_error(
        invoke("accounts", "import", str(path), env=env), 2, "line 4: is not UTF-8 text"
    )
    assert accounts_json(invoke, env) == []


def test_the_input_is_bounded(
    invoke: Invoke, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = write(tmp_path, "name,sid,pod\n" + "\n" * account_commands.MAX_IMPORT_LINES, "many.csv")
    assert_one_line_error(
        invoke("accounts", "import", str(many), env=env), 2, "has over 100,000 lines"
    )
    monkeypatch.setattr(account_commands, "MAX_IMPORT_BYTES", len(GOOD.encode()) - 1)
    big = write(tmp_path, GOOD, "big.csv")
    assert_one_line_error(invoke("accounts", "import", str(big), env=env), 2, "big.csv is over")
    missing = tmp_path / "missing.csv"
    assert_one_line_error(
        invoke("accounts", "import", str(missing), env=env), 2, f"cannot read {missing}"
    )
    assert accounts_json(invoke, env) == []
