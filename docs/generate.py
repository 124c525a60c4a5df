"""The generated parts of the docs pages, written by cog between their markers.

Each function returns Markdown built from what the code itself says, so the pages cannot
drift from it: the commands from ``regionsync --help``, the settings from ``.env.example``
(checked against the variables the code reads), the example queries from the shipped SQL,
the code map from the package tree and its module docstrings. Regenerate with
``cog -r -I docs docs/*.md``; CI runs ``cog --check -I docs docs/*.md``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "regionsync"
#: The width ``--help`` is wrapped to, whatever terminal cog runs in.
HELP_COLUMNS = "100"


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": HELP_COLUMNS}
    done = subprocess.run(  # noqa: S603 - our own program, by the running interpreter
        [sys.executable, "-m", "regionsync", *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return done.stdout.rstrip()


def command_names(*command: str) -> list[str]:
    """The commands ``regionsync --help`` lists, in its order; with ``command``, the actions
    its own ``--help`` lists (``accounts add``...), none when it has none."""
    text = _help(*command)
    if "positional arguments:" not in text:
        return []
    listing = text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    if command and not re.search(r"^  [A-Z]+\n", listing, re.MULTILINE):
        return []  # positional arguments, not actions
    return re.findall(r"^    ([a-z][a-z-]*)\b", listing, re.MULTILINE)


def command_help() -> str:
    """``regionsync --help``, then each command's, and each of its actions', as the user sees
    them."""
    parts = [f"### `regionsync`\n\n```text\n{_help()}\n```\n"]
    for name in command_names():
        parts.append(f"### `regionsync {name}`\n\n```text\n{_help(name)}\n```\n")
        for action in command_names(name):
            shown = _help(name, action)
            parts.append(f"#### `regionsync {name} {action}`\n\n```text\n{shown}\n```\n")
    return "\n".join(parts)


# Settings -------------------------------------------------------------------------------

_SECTION = re.compile(r"# --- (.+?) -+$")
_SETTING = re.compile(r"# ([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``.env.example`` read as the table it is: its sections, each a list of (variable,
    default, description); an empty value has no default."""
    sections: list[tuple[str, list[tuple[str, str, str]]]] = []
    described: list[str] = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if section := _SECTION.match(line):
            sections.append((section.group(1), []))
            described = []
        elif setting := _SETTING.match(line):
            if not sections or not described:
                raise ValueError(f".env.example: {setting.group(1)} has no section or text")
            rows = sections[-1][1]
            rows.append((setting.group(1), setting.group(2), " ".join(described)))
            described = []
        elif line.startswith("# ") and sections:
            described.append(line[2:].strip())
    return sections


def documented_variables() -> set[str]:
    """The variables the settings page documents: every one the code reads, but
    ``XDG_DATA_HOME`` (not ours) and the CA bundle variables (everyone's; their own section)."""
    from regionsync.settings import CA_BUNDLE_VARIABLES, known_variables

    return set(known_variables()) - {"XDG_DATA_HOME", *CA_BUNDLE_VARIABLES}


def settings_tables() -> str:
    """One table per section of ``.env.example``; refuses a variable the code does not read,
    or one it reads that the file leaves out."""
    sections = env_example()
    listed = [name for _, rows in sections for name, _, _ in rows]
    if len(listed) != len(set(listed)) or set(listed) != documented_variables():
        raise ValueError(
            f".env.example lists {sorted(listed)}, the code reads {sorted(documented_variables())}"
        )
    parts = []
    for title, rows in sections:
        lines = [f"### {title}", "", "| variable | default | meaning |", "| --- | --- | --- |"]
        for name, default, text in rows:
            shown = f"`{default}`" if default else "—"
            lines.append(f"| `{name}` | {shown} | {text.replace('|', '&#124;')} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# Example queries ------------------------------------------------------------------------


def example_queries() -> str:
    """Every query shipped in ``regionsync/store/queries/``, verbatim."""
    parts = []
    for path in sorted((PACKAGE / "store" / "queries").glob("*.sql")):
        parts.append(f"`{path.name}`:\n\n```sql\n{path.read_text().strip()}\n```\n")
    return "\n".join(parts)


# Code map -------------------------------------------------------------------------------

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _summary(path: Path) -> str:
    """The first paragraph of a module's docstring, in Markdown."""
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(docstring.split("\n\n", 1)[0].split())
    return _ROLE.sub(r"`\1`", first).replace("``", "`").replace("|", "&#124;")


def code_map() -> str:
    """A table per package: each module and what its docstring says it holds."""
    packages = sorted(
        path.parent for path in PACKAGE.rglob("__init__.py") if "__pycache__" not in path.parts
    )
    parts = []
    for package in packages:
        modules = sorted(p for p in package.glob("*.py") if p.name != "__init__.py")
        if not modules:
            continue
        dotted = ".".join(package.relative_to(ROOT).parts)
        lines = [f"### `{dotted}`", ""]
        if summary := _summary(package / "__init__.py"):
            lines += [summary, ""]
        lines += ["| module | holds |", "| --- | --- |"]
        lines += [f"| `{module.name}` | {_summary(module)} |" for module in modules]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
