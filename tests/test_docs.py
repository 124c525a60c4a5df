"""The docs stay true: every command has help and a README entry, every setting is read by
the code, documented in the README and listed in ``.env.example``, and the Docker files name
only real commands and settings. Everything is read through public interfaces: commands and
options from ``--help`` as users see it, settings from ``settings.known_variables()``."""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

import pytest

from regionsync.settings import CA_BUNDLE_VARIABLES, LOG_LEVELS, known_variables
from tests.support.cli import Invoke

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
SETTING = re.compile(r"\b(?:KALEYRA_[A-Z_]+|REGIONSYNC_[A-Z_]+|DATABASE_URL)\b")


@cache
def top_help() -> str:
    from regionsync.cli import commands as cli

    return cli.build_parser().format_help()


def commands() -> list[str]:
    """The commands ``regionsync --help`` lists, one per indented line."""
    listing = top_help().split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^    ([a-z][a-z-]*)\b", listing, re.MULTILINE)


def readme_commands() -> set[str]:
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z][a-z-]*)(?: [A-Z]+)?` \|", section, re.MULTILINE))


def settings_table() -> set[str]:
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE)}


def env_example() -> set[str]:
    """The variables ``.env.example`` sets, commented out or not."""
    return set(re.findall(r"^#? ?([A-Z][A-Z_]+)=", ENV_EXAMPLE, re.MULTILINE))


def test_help_lists_the_commands_the_readme_documents() -> None:
    assert len(commands()) >= 10
    assert set(commands()) == readme_commands()


@pytest.mark.parametrize("name", commands())
def test_every_command_has_help(invoke: Invoke, name: str) -> None:
    done = invoke(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: regionsync {name}")
    for option in ("--env-file PATH", "-q, --quiet", "-v, --verbose"):
        assert option in done.stdout, (name, option)


def test_every_read_setting_is_documented_and_every_documented_one_is_read() -> None:
    documented = settings_table()
    # XDG_DATA_HOME is read too, for the embedded database's place: not ours to document;
    # the CA bundle variables are everyone's, documented in a section of their own.
    read = {name for name in known_variables() if SETTING.fullmatch(name)}
    assert known_variables() - read == {"XDG_DATA_HOME", *CA_BUNDLE_VARIABLES}
    assert read == documented, (read - documented, documented - read)


def test_the_ca_bundle_variables_are_documented_in_their_order() -> None:
    section = README.split("## Trusting a private CA", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`((?:REQUESTS|CURL|SSL)_[A-Z_]+)`", section)
    assert list(dict.fromkeys(named)) == list(CA_BUNDLE_VARIABLES)


def test_env_example_lists_exactly_the_documented_settings() -> None:
    assert env_example() == settings_table()


def env_example_comment(setting: str) -> str:
    """The comment lines right above ``# SETTING=`` in ``.env.example``."""
    lines = ENV_EXAMPLE.split(f"\n# {setting}=", 1)[0].splitlines()
    above = []
    for line in reversed(lines):
        if not line.startswith("# ") or re.match(r"# [A-Z_]+=", line):
            break
        above.append(line[2:])
    return " ".join(reversed(above))


def test_the_readme_and_env_example_name_exactly_the_log_levels_the_code_accepts() -> None:
    named = set(logging.getLevelNamesMapping()) | {"TRACE"}
    row = next(line for line in README.splitlines() if line.startswith("| `REGIONSYNC_LOG_LEVEL`"))
    for text in (row.split("|")[3], env_example_comment("REGIONSYNC_LOG_LEVEL")):
        assert {word for word in re.findall(r"[A-Z]+", text) if word in named} == set(LOG_LEVELS)


def test_env_example_sets_nothing_by_default() -> None:
    # Every line is a comment or blank: copying it changes nothing until a line is uncommented.
    assert all(not line or line.startswith("#") for line in ENV_EXAMPLE.splitlines())


@pytest.mark.parametrize("path", ["docker/compose.yaml", "docker/Dockerfile"])
def test_docker_files_name_only_real_commands_and_settings(path: str) -> None:
    text = (ROOT / path).read_text()
    for setting in set(SETTING.findall(text)):
        assert setting in settings_table(), f"{path} names {setting}, which is no setting"
    named = set(re.findall(r'command: \["([a-z-]+)"', text))
    named |= set(re.findall(r'CMD \["([a-z-]+)"\]', text))
    named |= set(re.findall(r'"regionsync", "([a-z-]+)"', text))
    assert named, f"{path} names no regionsync command"
    assert named <= set(commands()), named - set(commands())


def test_every_fake_api_option_is_in_the_readme(invoke: Invoke) -> None:
    done = invoke("fake-api", "--help")
    assert done.returncode == 0, done.stderr
    section = README.split("## Trying it against a fake Kaleyra", 1)[1].split("\n## ", 1)[0]
    listing = done.stdout.split("options:", 1)[1]
    options = set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", listing, re.MULTILINE))
    assert {"--regions", "--sid", "--api-key", "--quiet"} <= options
    assert {o for o in options if f"`{o}" not in section} == {"--help"}
