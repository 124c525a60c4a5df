"""The docs stay true: every command has help and one entry on the commands page, every
setting is read by the code, listed once in ``.env.example`` and once on the settings page,
the Docker files name only real commands and settings, and the README stays short, its
links leading to real pages. Everything is read through public interfaces: commands and
options from ``--help`` as users see it, settings from ``settings.known_variables()``."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from regionsync.settings import CA_BUNDLE_VARIABLES, LOG_LEVELS, known_variables
from tests.support.cli import Invoke
from tests.support.docs import DOCS, page, section

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS_PAGE = page("settings.md")
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
SETTING = re.compile(r"\b(?:KALEYRA_[A-Z_]+|REGIONSYNC_[A-Z_]+|DATABASE_URL)\b")


@cache
def top_help() -> str:
    from regionsync.cli.parser import build_parser

    return build_parser().format_help()


def commands() -> list[str]:
    """The commands ``regionsync --help`` lists, one per indented line."""
    listing = top_help().split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^    ([a-z][a-z-]*)\b", listing, re.MULTILINE)


def documented_commands() -> list[str]:
    """The rows of the commands page's table, in order."""
    table = section(page("commands.md"), "What each command does")
    return re.findall(r"^\| `([a-z][a-z-]*)(?: [A-Z]+)?` \|", table, re.MULTILINE)


def settings_rows() -> list[str]:
    """The variable of every row of the settings page's tables, in order, repeats kept."""
    return re.findall(r"^\| `([A-Z_]+)` \|", SETTINGS_PAGE, re.MULTILINE)


def settings_table() -> set[str]:
    return set(settings_rows())


def env_example_lines() -> list[str]:
    """The variables ``.env.example`` sets, commented out or not, in order."""
    return re.findall(r"^#? ?([A-Z][A-Z_]+)=", ENV_EXAMPLE, re.MULTILINE)


def env_example() -> set[str]:
    return set(env_example_lines())


def test_help_lists_the_commands_the_docs_document() -> None:
    assert len(commands()) >= 10
    assert sorted(commands()) == sorted(documented_commands())


@pytest.mark.parametrize(
    "rows", [settings_rows, env_example_lines, documented_commands], ids=lambda f: f.__name__
)
def test_nothing_is_documented_twice(rows: Callable[[], list[str]]) -> None:
    # Rows read as a list, not a set: a second row of one name is a mistake to see.
    listed = rows()
    assert listed
    assert sorted({name for name in listed if listed.count(name) > 1}) == []


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
    text = section(page("operations.md"), "Trusting a private CA")
    named = re.findall(r"`((?:REQUESTS|CURL|SSL)_[A-Z_]+)`", text)
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


def test_the_docs_and_env_example_name_exactly_the_log_levels_the_code_accepts() -> None:
    named = set(logging.getLevelNamesMapping()) | {"TRACE"}
    row = next(
        line for line in SETTINGS_PAGE.splitlines() if line.startswith("| `REGIONSYNC_LOG_LEVEL`")
    )
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


def test_every_fake_api_option_is_on_its_page(invoke: Invoke) -> None:
    done = invoke("fake-api", "--help")
    assert done.returncode == 0, done.stderr
    text = page("fake-api.md")
    listing = done.stdout.split("options:", 1)[1]
    options = set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", listing, re.MULTILINE))
    assert {"--regions", "--sid", "--api-key", "--quiet"} <= options
    assert {o for o in options if f"`{o}" not in text} == {"--help"}


def test_the_readme_stays_short() -> None:
    assert len(README.encode()) < 12_000


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs makes it (Python-Markdown's ``toc`` slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_the_readmes_links_lead_to_real_pages_and_sections() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", README)
    local = [(path, anchor) for path, anchor in links if "://" not in path]
    assert {path for path, _ in local} >= {"docs/commands.md", "docs/settings.md"}
    for path, anchor in local:
        target = ROOT / path
        assert target.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, (path, anchor)


def test_every_docs_page_is_in_the_site() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert {p.name for p in DOCS.glob("*.md")} == set(re.findall(r": (\S+\.md)$", mkdocs, re.M))


#: A citation of a docs page in code, tests or the Docker files: ``docs/<page>.md`` with, where
#: it names one, the section (``*Heading*``, the heading's words; a comment's line breaks
#: and ``#`` markers inside it allowed) or the contract's paragraph (``§2``).
CITATION = re.compile(
    r"docs/(?P<page>[a-z-]+\.md)(?:,?\s+(?:#:?\s*)?\*(?P<heading>[^*]+)\*| (?P<paragraph>§\d+))?"
)
CITING = ("regionsync", "tests", "docker", "migrations")


def headings(name: str) -> set[str]:
    return set(re.findall(r"^#+ (.+)$", page(name), re.MULTILINE))


def test_every_citation_of_the_docs_names_a_real_page_and_section() -> None:
    cited = 0
    for top in CITING:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in {".py", ".md", ".yml", ".sh", ".json"}:
                continue
            for match in CITATION.finditer(path.read_text()):
                where, name = path.relative_to(ROOT), match["page"]
                assert (DOCS / name).is_file(), (where, name)
                if match["heading"]:
                    heading = re.sub(r"\s*\n\s*(?:#:?\s*)?", " ", match["heading"])
                    assert heading in headings(name), (where, name, heading)
                if match["paragraph"]:
                    assert any(h.startswith(match["paragraph"] + " ") for h in headings(name))
                cited += 1
    assert cited > 20
