"""Settings: validated up front, one message naming the variable, secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from regionsync import logs
from regionsync.errors import ConfigError
from regionsync.settings import Settings, default_sqlite_path, normalise_database_url, read_env_file

KEY = "k3y-7f58a94e84b671aca43"
PASSWORD = "pa55-w0rd-xyz"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"KALEYRA_POD": "eu"}, "KALEYRA_POD"),
        ({"KALEYRA_BASE_URL": "ftp://example.com"}, "KALEYRA_BASE_URL"),
        ({"KALEYRA_BASE_URL": "http://rcs-api.in.kaleyra.io"}, "KALEYRA_BASE_URL"),
        ({"KALEYRA_BASE_URL": "https://user:pw@example.com"}, "KALEYRA_BASE_URL"),
        ({"KALEYRA_REGIONS_PATH": "rcs/agent_regions"}, "KALEYRA_REGIONS_PATH"),
        ({"KALEYRA_REGIONS_PATH": "/v1/rcs/agent_regions"}, "KALEYRA_REGIONS_PATH"),
        ({"KALEYRA_REGIONS_PATH": "/v1/{sid}/{x}"}, "KALEYRA_REGIONS_PATH"),
        ({"KALEYRA_SID": "abc/../x"}, "KALEYRA_SID"),
        ({"REGIONSYNC_DATABASE_URL": "mysql://root@localhost/db"}, "REGIONSYNC_DATABASE_URL"),
        ({"REGIONSYNC_DATABASE_URL": "not a url"}, "REGIONSYNC_DATABASE_URL"),
        ({"DATABASE_URL": "oracle://x"}, "DATABASE_URL"),
        ({"REGIONSYNC_TIMEZONE": "Mars/Olympus"}, "REGIONSYNC_TIMEZONE"),
        ({"REGIONSYNC_LOG_FORMAT": "xml"}, "REGIONSYNC_LOG_FORMAT"),
        ({"REGIONSYNC_LOG_LEVEL": "LOUD"}, "REGIONSYNC_LOG_LEVEL"),
        ({"REGIONSYNC_MAX_REMOVAL_FRACTION": "1.5"}, "REGIONSYNC_MAX_REMOVAL_FRACTION"),
        ({"REGIONSYNC_MAX_REMOVAL_FRACTION": "half"}, "REGIONSYNC_MAX_REMOVAL_FRACTION"),
        ({"REGIONSYNC_MAX_REMOVAL_FRACTION": "nan"}, "REGIONSYNC_MAX_REMOVAL_FRACTION"),
        ({"REGIONSYNC_METRICS_PORT": "70000"}, "REGIONSYNC_METRICS_PORT"),
        ({"REGIONSYNC_METRICS_PORT": "-1"}, "REGIONSYNC_METRICS_PORT"),
    ],
)
def test_malformed_setting_is_named(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert "\n" not in str(caught.value)


def test_fetching_needs_sid_key_and_pod() -> None:
    for env, missing in [
        ({"KALEYRA_API_KEY": KEY, "KALEYRA_POD": "in"}, "KALEYRA_SID"),
        ({"KALEYRA_SID": "ABC", "KALEYRA_POD": "in"}, "KALEYRA_API_KEY"),
        ({"KALEYRA_SID": "ABC", "KALEYRA_API_KEY": KEY}, "KALEYRA_POD"),
    ]:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env).require_kaleyra()
        assert caught.value.setting == missing


def test_pod_and_base_url_give_the_regions_url() -> None:
    na = Settings.from_env({"KALEYRA_POD": "NA", "KALEYRA_SID": "ABC123", "KALEYRA_API_KEY": KEY})
    assert na.regions_url == "https://rcs-api.na.kaleyra.io/v1/ABC123/rcs/agent/agent_regions"
    custom = Settings.from_env(
        {
            "KALEYRA_POD": "in",
            "KALEYRA_BASE_URL": "http://127.0.0.1:8080/",
            "KALEYRA_REGIONS_PATH": "/v1/{sid}/rcs/agent_regions",
            "KALEYRA_SID": "ABC123",
            "KALEYRA_API_KEY": KEY,
        }
    )
    assert custom.regions_url == "http://127.0.0.1:8080/v1/ABC123/rcs/agent_regions"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.8.9.10"])
def test_plain_http_is_allowed_for_loopback_only(host: str) -> None:
    settings = Settings.from_env({"KALEYRA_BASE_URL": f"http://{host}:9000"})
    assert settings.kaleyra_base_url == f"http://{host}:9000"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@db.example.com/app", "postgresql+psycopg://u@db.example.com/app"),
        (
            "postgres://u:pw@db:6543/app?sslmode=require",
            "postgresql+psycopg://u:pw@db:6543/app?sslmode=require",
        ),
        ("postgresql+psycopg2://u@h/app", "postgresql+psycopg://u@h/app"),
        ("postgresql+psycopg://u@h/app", "postgresql+psycopg://u@h/app"),
        ("sqlite:////var/lib/regionsync.db", "sqlite:////var/lib/regionsync.db"),
    ],
)
def test_database_url_normalisation(given: str, expected: str) -> None:
    url = normalise_database_url(given)
    assert url.render_as_string(hide_password=False) == expected


def test_regionsync_database_url_wins_over_database_url() -> None:
    settings = Settings.from_env(
        {"REGIONSYNC_DATABASE_URL": "postgresql://a@h/one", "DATABASE_URL": "postgresql://b@h/two"}
    )
    assert settings.database_url.database == "one"
    assert not settings.embedded_database


def test_no_database_means_the_embedded_sqlite_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"XDG_DATA_HOME": str(tmp_path)})
    assert settings.embedded_database
    assert settings.database_url.get_backend_name() == "sqlite"
    assert settings.database_url.database == str(tmp_path / "regionsync" / "regionsync.db")
    assert default_sqlite_path({}).name == "regionsync.db"


def test_secrets_never_in_repr_or_str() -> None:
    settings = Settings.from_env(
        {
            "KALEYRA_API_KEY": KEY,
            "KALEYRA_SID": "ABC",
            "KALEYRA_POD": "in",
            "DATABASE_URL": f"postgresql://app:{PASSWORD}@db/app",
        }
    )
    for shown in (repr(settings), str(settings), f"{settings}", settings.database_display):
        assert KEY not in shown
        assert PASSWORD not in shown
    assert settings.kaleyra_api_key is not None
    assert settings.kaleyra_api_key.reveal() == KEY
    assert set(settings.secrets) == {KEY, PASSWORD}


def test_logs_scrub_secrets_even_when_code_passes_them(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(level="INFO", fmt="json", secrets=(KEY, PASSWORD))
    try:
        structlog.get_logger("t").info("oops", detail=f"key={KEY}", nested={"p": [PASSWORD]})
        logging.getLogger("foreign").warning("password %s", PASSWORD)
    finally:
        logs.configure(level="INFO", fmt="json")
    err = capsys.readouterr().err
    assert "oops" in err
    assert "password" in err
    assert KEY not in err
    assert PASSWORD not in err


def test_env_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# comment\nexport KALEYRA_SID=ABC\nKALEYRA_POD='na'\n\nREGIONSYNC_LOG_LEVEL = debug\n"
    )
    assert read_env_file(path) == {
        "KALEYRA_SID": "ABC",
        "KALEYRA_POD": "na",
        "REGIONSYNC_LOG_LEVEL": "debug",
    }
    (tmp_path / "bad.env").write_text("JUST A LINE\n")
    with pytest.raises(ConfigError, match=r"bad\.env:1"):
        read_env_file(tmp_path / "bad.env")
