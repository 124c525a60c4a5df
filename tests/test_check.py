"""``regionsync check``: one line per check, exit 0 only when all pass, and nothing written."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from regionsync.fakeapi import FakeKaleyra
from tests.cli_support import Invoke, table_counts, url_env
from tests.sources import region

KEY = "check-key-5d1e0a7b93"


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
        "kaleyra": "✓",
        "metrics": "✓",
    }
    assert "PostgreSQL" in done.stdout
    assert "the latest" in done.stdout
    assert "2 regions, 1 rejected" in done.stdout
    assert done.stdout.splitlines()[-1] == "all 6 checks passed"
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
        "kaleyra": "✗",
        "metrics": "✗",
    }
    lines = done.stdout.splitlines()
    assert any(line.startswith("✗ kaleyra:") and "401" in line for line in lines)
    # The host is REGIONSYNC_METRICS_HOST where that setting exists, else all interfaces.
    assert any(
        line.startswith("✗ metrics: cannot listen on ") and f":{port}: " in line for line in lines
    )
    assert lines[-1] == "2 of 6 checks failed"
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
    env = {
        "XDG_DATA_HOME": str(tmp_path),
        "REGIONSYNC_WEBHOOK_URL": "https://hooks.example.com/services/T000/B000/tokentokentoken",
        "REGIONSYNC_WEBHOOK_FORMAT": "slack",
        "REGIONSYNC_NOTIFY_ON": "removed,carrier_enabled",
    }
    done = invoke("check", env=env)
    assert (
        "✓ webhook: slack to https://hooks.example.com/…, unsigned, on carrier_enabled, removed"
        in (done.stdout)
    )
    assert "tokentoken" not in done.stdout + done.stderr
    assert "✓ webhook" not in invoke("check", env={"XDG_DATA_HOME": str(tmp_path)}).stdout
