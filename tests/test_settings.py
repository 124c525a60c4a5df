"""Settings: validated up front, one message naming the variable, secrets never shown."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from regionsync import cli
from regionsync.cli.parser import build_parser
from regionsync.errors import ConfigError
from regionsync.settings import (
    DEFAULT_SCHEDULE,
    LOG_LEVELS,
    Settings,
    default_sqlite_path,
    environment_warnings,
    known_variables,
    normalise_database_url,
    read_env_file,
)
from tests.support import scrub_environ
from tests.support.docs import page

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
        ({"REGIONSYNC_METRICS_PORT": "\uff18\uff10\uff18\uff10"}, "REGIONSYNC_METRICS_PORT"),
        ({"REGIONSYNC_METRICS_PORT": "\u0668\u0660"}, "REGIONSYNC_METRICS_PORT"),
        ({"REGIONSYNC_SCHEDULE": "3000000d"}, "REGIONSYNC_SCHEDULE"),
        ({"REGIONSYNC_SCHEDULE": "99999999999999999999s"}, "REGIONSYNC_SCHEDULE"),
        ({"REGIONSYNC_SCHEDULE": "366d"}, "REGIONSYNC_SCHEDULE"),
        ({"REGIONSYNC_SCHEDULE": "9" * 5000 + "s"}, "REGIONSYNC_SCHEDULE"),
        ({"REGIONSYNC_SCHEDULE": "0 0 5L * *"}, None),  # a crontab is checked where parsed
        ({"REGIONSYNC_WEBHOOK_MAX_AGE": "99999999999999999999d"}, "REGIONSYNC_WEBHOOK_MAX_AGE"),
        ({"REGIONSYNC_DATABASE_URL": "postgresql://u:PW@[::1:5432/x"}, "REGIONSYNC_DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:PW@h:port/x"}, "DATABASE_URL"),
        ({"REGIONSYNC_MAX_REJECT_FRACTION": "1.01"}, "REGIONSYNC_MAX_REJECT_FRACTION"),
        ({"REGIONSYNC_MAX_REJECT_FRACTION": "-0"}, None),
        ({"REGIONSYNC_MAX_REJECT_FRACTION": "inf"}, "REGIONSYNC_MAX_REJECT_FRACTION"),
        ({"REGIONSYNC_MAX_REJECT_FRACTION": "\u0660.\u0665"}, "REGIONSYNC_MAX_REJECT_FRACTION"),
        ({"REGIONSYNC_MAX_REJECT_FRACTION": "some"}, "REGIONSYNC_MAX_REJECT_FRACTION"),
        ({"KALEYRA_API_KEY": "k\u20acy"}, "KALEYRA_API_KEY"),
        ({"KALEYRA_API_KEY": "k\x00y"}, "KALEYRA_API_KEY"),
        ({"KALEYRA_API_KEY": "k'\"\\\xe9y"}, None),
        ({"REGIONSYNC_LOCK_TIMEOUT": "0s"}, "REGIONSYNC_LOCK_TIMEOUT"),
        ({"REGIONSYNC_LOCK_TIMEOUT": "11m"}, "REGIONSYNC_LOCK_TIMEOUT"),
        ({"REGIONSYNC_LOCK_TIMEOUT": "forever"}, "REGIONSYNC_LOCK_TIMEOUT"),
        ({"REGIONSYNC_LOCK_TIMEOUT": "\u0661\u0660s"}, "REGIONSYNC_LOCK_TIMEOUT"),
        ({"REGIONSYNC_LOCK_TIMEOUT": "10m"}, None),
    ],
)
def test_malformed_setting_is_named(env: dict[str, str], setting: str | None) -> None:
    if setting is None:  # a valid edge, listed beside the invalid ones it borders
        Settings.from_env(env)
        return
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"KALEYRA_API_KEY": KEY, "KALEYRA_POD": "in"}, "KALEYRA_SID"),
        ({"KALEYRA_SID": "ABC", "KALEYRA_POD": "in"}, "KALEYRA_API_KEY"),
        ({"KALEYRA_SID": "ABC", "KALEYRA_API_KEY": KEY}, "KALEYRA_POD"),
    ],
)
def test_fetching_needs_sid_key_and_pod(env: dict[str, str], missing: str) -> None:
    settings = Settings.from_env(env)
    with pytest.raises(ConfigError) as caught:
        settings.require_kaleyra()
    assert caught.value.setting == missing


def test_pod_and_base_url_give_the_regions_url() -> None:
    na = Settings.from_env({"KALEYRA_POD": "NA", "KALEYRA_SID": "ABC123", "KALEYRA_API_KEY": KEY})
    assert (
        na.require_kaleyra().regions_url
        == "https://rcs-api.na.kaleyra.io/v1/ABC123/rcs/agent/agent_regions"
    )
    custom = Settings.from_env(
        {
            "KALEYRA_POD": "in",
            "KALEYRA_BASE_URL": "http://127.0.0.1:8080/",
            "KALEYRA_REGIONS_PATH": "/v1/{sid}/rcs/agent_regions",
            "KALEYRA_SID": "ABC123",
            "KALEYRA_API_KEY": KEY,
        }
    )
    assert (
        custom.require_kaleyra().regions_url == "http://127.0.0.1:8080/v1/ABC123/rcs/agent_regions"
    )


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


#: Each rule of the ``--env-file`` format (docs/settings.md, *The `--env-file` format*:
#: python-dotenv's conventions, without ``${VAR}`` expansion): the file's text, and what it
#: sets.
ENV_FILE_RULES = {
    "an unquoted value ends at ' #': the rest is a comment": ("A=value # note", "value"),
    "a # not after a space is part of an unquoted value": ("A=value#1", "value#1"),
    "an unquoted value loses its surrounding spaces": ("A =  two words  ", "two words"),
    "only a comment after '= ' leaves the value empty": ("A= # nothing yet", ""),
    "a # inside single quotes is kept": ("A='a # b'", "a # b"),
    "a # inside double quotes is kept, one after them is a comment": ('A="a # b" # c', "a # b"),
    "single quotes keep backslashes, but for \\' and \\\\": ("A='x\\n\\'y'", "x\\n'y"),
    'double quotes read \\n, \\t, \\" and \\\\': ('A="x\\ny\\t\\"z\\\\"', 'x\ny\t"z\\'),
    "a quoted value may span lines": ('A="one\ntwo"', "one\ntwo"),
    "$ is literal, no ${VAR} expansion": ("A=${HOME}$x", "${HOME}$x"),
    "an export prefix is allowed": ("export A=1", "1"),
    "the last line for a name wins": ("A=1\nA=2", "2"),
    "blank lines and # lines are skipped": ("\n# A=commented\n  # indented\n\nA=1\n", "1"),
    "CRLF line ends and a UTF-8 BOM are fine": ("\ufeffA=1\r\nB=2\r\n", "1"),
}


@pytest.mark.parametrize("rule", sorted(ENV_FILE_RULES))
def test_env_file_follows_python_dotenv_conventions(rule: str, tmp_path: Path) -> None:
    text, value = ENV_FILE_RULES[rule]
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8", newline="")
    assert read_env_file(path)["A"] == value


def test_env_file_name_alone_sets_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A\nB=2\n")
    assert read_env_file(path) == {"B": "2"}


def test_env_file_comment_no_longer_reaches_a_setting(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("KALEYRA_BASE_URL=http://127.0.0.1:8080   # the fake, see README\n")
    settings = Settings.from_env(read_env_file(path))
    assert settings.kaleyra_base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A=1\nB='x'y\n", 2),  # text after a closing quote
        ('A=1\n\nKALEYRA_API_KEY="s3cret-unterminated\nC=3\n', 3),
        ("A B=1\n", 1),
        ("1A=2\n", 1),  # not a variable name
        ("A.B=2\n", 1),
        ("A-B=2\n", 1),
        ("'\u00e9t\u00e9'=2\n", 1),  # a variable name is ASCII
    ],
)
def test_env_file_refuses_a_line_it_cannot_read_naming_its_number(
    text: str, line: int, tmp_path: Path
) -> None:
    path = tmp_path / "bad.env"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_env_file(path)
    assert caught.value.setting == "--env-file"
    assert f"bad.env:{line}: " in str(caught.value)
    assert "s3cret" not in str(caught.value)  # a line may hold a secret: never quoted


@pytest.mark.parametrize(
    "name",
    [
        "information_schema",
        "INFORMATION_SCHEMA",
        "Information_Schema",
        "pg_catalog",
        "pg_toast",
        "PG_CATALOG",
        "pg_temp_3",
        "pg_anything",
    ],
)
def test_postgresqls_own_schemas_are_refused(name: str) -> None:
    env = {"REGIONSYNC_DATABASE_URL": "postgresql://u@h/db", "REGIONSYNC_DB_SCHEMA": name}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.setting == "REGIONSYNC_DB_SCHEMA"
    assert "PostgreSQL's own" in caught.value.problem
    assert "(information_schema and pg_* are refused)" in caught.value.problem


@pytest.mark.parametrize("name", ["information", "schema_information", "pgx", "public"])
def test_names_near_the_system_schemas_are_fine(name: str) -> None:
    env = {"REGIONSYNC_DATABASE_URL": "postgresql://u@h/db", "REGIONSYNC_DB_SCHEMA": name}
    assert Settings.from_env(env).db_schema == name


@pytest.mark.parametrize("name", ["REGIONSYNC_WEBHOOK_MAX_AGE", "REGIONSYNC_SCHEDULE"])
def test_a_duration_setting_takes_ascii_digits_only(name: str) -> None:
    env = {"REGIONSYNC_WEBHOOK_URL": "http://127.0.0.1:9/x", "REGIONSYNC_WEBHOOK_FORMAT": "slack"}
    raw = "\u0661\u0665m"  # 15m in Arabic-Indic digits
    if name == "REGIONSYNC_SCHEDULE":  # a schedule is parsed where it is used
        from regionsync.daemon.schedule import parse_schedule

        with pytest.raises(ConfigError, match=name):
            parse_schedule(Settings.from_env({**env, name: raw}).schedule)
        return
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**env, name: raw})


def test_the_reject_fraction_is_a_number_from_0_to_1() -> None:
    assert Settings.from_env({}).max_reject_fraction == 0.5
    for raw, value in [("0", 0.0), ("0.25", 0.25), (" 1 ", 1.0), ("1e-1", 0.1)]:
        settings = Settings.from_env({"REGIONSYNC_MAX_REJECT_FRACTION": raw})
        assert settings.max_reject_fraction == value


def test_a_long_but_possible_interval_is_accepted() -> None:
    assert Settings.from_env({"REGIONSYNC_SCHEDULE": "365d"}).schedule == "365d"


def test_the_settings_know_which_variables_they_read() -> None:
    known = known_variables()
    assert {"KALEYRA_API_KEY", "REGIONSYNC_SCHEDULE", "REGIONSYNC_MAX_REJECT_FRACTION"} <= known
    assert "REGIONSYNC_SCHEDUEL" not in known


def test_unknown_and_empty_variables_are_warned_about() -> None:
    env = {
        "REGIONSYNC_SCHEDUEL": "1h",
        "KALEYRA_APIKEY": "x",
        "REGIONSYNC_SCHEDULE": "",
        "KALEYRA_POD": "in",
        "HOME": "/root",
        "REGIONSYNC_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ": "1",
    }
    warnings = {w["variable"]: w for w in environment_warnings(env)}
    assert set(warnings) == {
        "REGIONSYNC_SCHEDUEL",
        "KALEYRA_APIKEY",
        "REGIONSYNC_SCHEDULE",
        "REGIONSYNC_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    }
    assert warnings["REGIONSYNC_SCHEDUEL"]["closest"] == "REGIONSYNC_SCHEDULE"
    assert warnings["KALEYRA_APIKEY"]["closest"] == "KALEYRA_API_KEY"
    assert warnings["REGIONSYNC_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"]["closest"] == "none"
    assert warnings["REGIONSYNC_SCHEDULE"]["event"] == "settings.empty_variable"
    assert Settings.from_env(env).schedule == DEFAULT_SCHEDULE


def cli_events(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment with no regionsync variable but JSON logs and a private data home."""
    scrub_environ(monkeypatch)
    monkeypatch.setenv("REGIONSYNC_LOG_FORMAT", "json")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return monkeypatch


def test_cli_warns_once_per_unknown_variable_from_environment_or_env_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("REGIONSYNC_TIMEZNOE", "Europe/Paris")
    clean_env.setenv("REGIONSYNC_SCHEDULE", "  ")
    env_file = tmp_path / ".env"
    env_file.write_text("KALEYRA_SDI=ABC\n")
    assert cli.main(["--env-file", str(env_file), "schedule", "--count", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    warned = [e for e in cli_events(err) if e["event"].startswith("settings.")]
    assert sorted((e["event"], e["variable"], e.get("closest")) for e in warned) == [
        ("settings.empty_variable", "REGIONSYNC_SCHEDULE", None),
        ("settings.unknown_variable", "KALEYRA_SDI", "KALEYRA_SID"),
        ("settings.unknown_variable", "REGIONSYNC_TIMEZNOE", "REGIONSYNC_TIMEZONE"),
    ]
    assert all(e["level"] == "warning" for e in warned)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REGIONSYNC_SCHEDULE", "3000000d"),
        ("REGIONSYNC_SCHEDULE", "99999999999999999999s"),
        ("REGIONSYNC_DATABASE_URL", "postgresql://u:PW@[::1:5432/x"),
        ("REGIONSYNC_METRICS_PORT", "\uff18\uff10\uff18\uff10"),
        ("REGIONSYNC_MAX_REJECT_FRACTION", "2"),
    ],
)
def test_cli_exits_2_with_one_line_naming_a_bad_setting(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    assert cli.main(["schedule"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith(f"regionsync: error: {name}: ")
    assert "Traceback" not in err


def test_the_settings_page_and_help_list_the_same_log_levels() -> None:
    lines = page("settings.md").splitlines()
    row = next(line for line in lines if line.startswith("| `REGIONSYNC_LOG_LEVEL`"))
    assert re.findall(r"`([A-Z]+)`", row.split("|")[3]) == list(LOG_LEVELS)
    shown = " ".join(build_parser().format_help().split())
    assert f"REGIONSYNC_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}." in shown
