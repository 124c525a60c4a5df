"""The docs stay true: every command has help and a README entry, every setting is read
by the code and documented, and the Docker files name only real commands and settings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from regionsync import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS_SOURCE = (ROOT / "regionsync" / "settings.py").read_text()
SETTING = re.compile(r"\b(?:KALEYRA_[A-Z_]+|REGIONSYNC_[A-Z_]+|DATABASE_URL)\b")


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def settings_table() -> set[str]:
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE)}


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_help_and_a_readme_entry(name: str) -> None:
    parser = commands()[name]
    assert parser.description, f"{name} has no description"
    assert re.search(rf"^\| `{re.escape(name)}( [A-Z]+)?` \|", README, re.MULTILINE), name


def test_every_documented_setting_is_read_and_every_read_setting_is_documented() -> None:
    documented = settings_table()
    read = set(SETTING.findall(SETTINGS_SOURCE))
    assert documented == read


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
