"""``regionsync regions`` and ``regionsync changes``: what operators ask without SQL, synced
from the fake Kaleyra server, bounded, and safe to print."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync.cli.terminal import clean
from regionsync.testing.fakeapi import FakeKaleyra
from tests.support.cli import Invoke, url_env
from tests.support.sources import region

SAMPLE = Path(__file__).resolve().parents[2] / "regionsync" / "samples" / "regions.json"
KEY = "browse-key-33c0e8a1"
HOSTILE = "Evil\x1b]0;pwned\x07\x1b[2J\rRegion\u202e"


@pytest.fixture
def fake_options() -> dict[str, Any]:
    data = [
        region("a", name="Alpha", hosting="EUROPE"),
        region("b", name="Bravo", enabled=False),
        region("c", name="Charlie"),
        region("d", name="Delta"),
    ]
    return {"sid": "ACME42", "api_key": KEY, "regions": data}


@pytest.fixture
def synced(invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra) -> dict[str, str]:
    """Two syncs from the fake: a first one, then c disabled, d removed, e added."""
    env = {
        **url_env(pg_url),
        "KALEYRA_BASE_URL": fake.url,
        "KALEYRA_SID": "ACME42",
        "KALEYRA_API_KEY": KEY,
    }
    assert invoke("run", env=env).returncode == 0
    fake.set_regions(
        [
            region("a", name="Alpha", hosting="EUROPE"),
            region("b", name="Bravo", enabled=False),
            region("c", name="Charlie", enabled=False),
            region("e", name=HOSTILE),
        ]
    )
    done = invoke("run", env=env)
    assert done.returncode == 0, done.stderr
    return env


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()[1:]]


def test_regions_filters(invoke: Invoke, synced: dict[str, str]) -> None:
    def ids(*args: str) -> list[str]:
        done = invoke("regions", "--json", *args, env=synced)
        assert done.returncode == 0, done.stderr
        return [row["id"] for row in json.loads(done.stdout)]

    assert ids() == ["a", "b", "c", "e"]  # present ones, by display name
    assert ids("--enabled") == ["a", "e"]
    assert ids("--disabled") == ["b", "c"]
    assert ids("--removed") == ["d"]
    assert ids("--all") == ["a", "b", "c", "d", "e"]
    assert ids("--hosting-region", "EUROPE") == ["a"]
    assert ids("--all", "--hosting-region", "NORTH_AMERICA") == ["b", "c", "d", "e"]


def test_regions_as_table_json_and_csv(invoke: Invoke, synced: dict[str, str]) -> None:
    table = invoke("regions", "--removed", env=synced)
    assert table.stdout.splitlines()[0].split() == [
        "id",
        "display_name",
        "carrier_enabled",
        "hosting_region",
        "updated_at",
        "removed_at",
    ]
    assert table_rows(table.stdout)[0][:4] == ["d", "Delta", "yes", "NORTH_AMERICA"]

    record = json.loads(invoke("regions", "--json", "--removed", env=synced).stdout)[0]
    assert record["carrier_enabled"] is True
    assert datetime.fromisoformat(record["removed_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert "raw" not in record
    assert "account" not in record  # one account has regions: no account column

    rows = list(csv.DictReader(io.StringIO(invoke("regions", "--csv", env=synced).stdout)))
    assert [(r["id"], r["carrier_enabled"], r["removed_at"]) for r in rows] == [
        ("a", "true", ""),
        ("b", "false", ""),
        ("c", "false", ""),
        ("e", "true", ""),
    ]
    assert invoke("regions", "--removed", "--hosting-region", "MARS", env=synced).stdout == (
        "no regions\n"
    )


def test_changes_newest_first_with_filters(invoke: Invoke, synced: dict[str, str]) -> None:
    done = invoke("changes", "--json", env=synced)
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)
    assert [(c["sync_run_id"], c["region_id"], c["change"]) for c in changes] == [
        (2, "e", "added"),
        (2, "d", "removed"),
        (2, "c", "changed"),
        (1, "d", "added"),
        (1, "c", "added"),
        (1, "b", "added"),
        (1, "a", "added"),
    ]
    flipped = changes[2]
    assert (flipped["carrier_enabled_before"], flipped["carrier_enabled_after"]) == (True, False)

    region_c = json.loads(invoke("changes", "--json", "--region", "c", env=synced).stdout)
    assert [c["change"] for c in region_c] == ["changed", "added"]
    table = invoke("changes", "--region", "c", env=synced).stdout.splitlines()
    assert table[0].split() == [
        "changed_at",
        "change",
        "region_id",
        "display_name",
        "carrier_enabled",
        "hosting_region",
        "sync_run_id",
    ]
    assert "changed  c          Charlie       yes -> no" in table[1]

    assert len(json.loads(invoke("changes", "--json", "--since", "1h", env=synced).stdout)) == 7
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert invoke("changes", "--since", future, env=synced).stdout == "no changes\n"


def test_output_is_bounded_and_says_so(invoke: Invoke, synced: dict[str, str]) -> None:
    done = invoke("changes", "--limit", "2", "--json", env=synced)
    assert len(json.loads(done.stdout)) == 2
    assert "regionsync: showing 2 of 7 changes; use --limit for more" in done.stderr
    done = invoke("regions", "--all", "--limit", "3", env=synced)
    assert len(done.stdout.splitlines()) == 4
    assert "showing 3 of 5 regions" in done.stderr
    assert "showing" not in invoke("regions", env=synced).stderr


def test_a_hostile_display_name_never_reaches_the_terminal_raw(
    invoke: Invoke, synced: dict[str, str]
) -> None:
    for args in (("regions",), ("regions", "--csv"), ("changes",), ("changes", "--json")):
        out = invoke(*args, env=synced).stdout
        for raw in ("\x1b", "\x07", "\r", "\u202e"):
            assert raw not in out, (args, raw)
    table = invoke("regions", "--enabled", env=synced).stdout
    assert "Evil\\x1b]0;pwned\\x07\\x1b[2J\\x0dRegion\\u202e" in table
    stored = json.loads(invoke("regions", "--json", "--enabled", env=synced).stdout)
    assert stored[1]["display_name"] == HOSTILE  # JSON escapes, and keeps the value exact


def test_clean_escapes_controls_and_cuts_long_values() -> None:
    assert clean("tab\there\nnew") == "tab\\x09here\\x0anew"
    assert clean("zero\u200bwidth") == "zero\\u200bwidth"
    assert clean("ünïcødé ok") == "ünïcødé ok"
    assert clean("x" * 100, limit=10) == "x" * 9 + "…"


def test_regions_and_changes_on_the_embedded_database(invoke: Invoke, tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    assert invoke("migrate", env=env).returncode == 0
    assert invoke("run", "--from-file", str(SAMPLE), env=env).returncode == 0
    regions = json.loads(invoke("regions", "--json", "--all", env=env).stdout)
    changes = json.loads(invoke("changes", "--json", "--since", "10m", env=env).stdout)
    assert len(regions) == len(changes) > 0
    assert {c["change"] for c in changes} == {"added"}
    assert invoke("changes", "--since", "2999-01-01", env=env).stdout == "no changes\n"


#: What a hostile tester put in display names: formulas a spreadsheet would run.
FORMULAS = ['=HYPERLINK("http://evil.example/x","click")', "+1+1", "-2+3", "@SUM(1)"]


@pytest.mark.parametrize("fake_options", [{"sid": "ACME42", "api_key": KEY}])
def test_csv_neutralises_formulas_and_csv_raw_writes_values_as_they_are(
    invoke: Invoke, pg_url: URL, pg_engine: sa.Engine, fake: FakeKaleyra
) -> None:
    names = [*FORMULAS, "\tTab", "\rReturn", "-1", "Plain - name"]
    fake.set_regions(
        [
            region(f"r{i}", name=name, managment_type_value=-1 if i == 0 else 2)
            for i, name in enumerate(names)
        ]
    )
    env = {
        **url_env(pg_url),
        "KALEYRA_BASE_URL": fake.url,
        "KALEYRA_SID": "ACME42",
        "KALEYRA_API_KEY": KEY,
    }
    assert invoke("run", env=env).returncode == 0

    def cells(*args: str) -> dict[str, dict[str, str]]:
        done = invoke("regions", *args, env=env)
        assert done.returncode == 0, done.stderr
        return {row["id"]: row for row in csv.DictReader(io.StringIO(done.stdout))}

    safe = cells("--csv")
    assert [safe[f"r{i}"]["display_name"] for i in range(len(names))] == [
        "'" + FORMULAS[0],
        "'+1+1",
        "'-2+3",
        "'@SUM(1)",
        "'\\x09Tab",  # the tab is neutralised, then escaped for the terminal
        "'\\x0dReturn",
        "'-1",  # text from the API, however numeric it looks
        "Plain - name",
    ]
    assert safe["r0"]["management_type_value"] == "-1"  # a number column holds no formula
    raw = cells("--csv-raw")
    assert [raw[f"r{i}"]["display_name"] for i in range(len(names))] == names
    assert raw["r0"]["management_type_value"] == "-1"
    both = invoke("regions", "--csv", "--csv-raw", env=env)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
