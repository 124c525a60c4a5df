"""The program's start (``regionsync/__main__.py``): what it leaves unimported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from regionsync import __version__
from tests.support import clean_environ

#: A stand-in for each renderer structlog would load: importing it leaves a mark.
STAND_IN = "from pathlib import Path\nPath({mark!r}).write_text('imported')\n"


@pytest.fixture
def installed_renderers(tmp_path: Path) -> tuple[dict[str, str], list[Path]]:
    """An environment where ``rich`` and ``better_exceptions`` are importable; their marks."""
    site = tmp_path / "site"
    (site / "rich").mkdir(parents=True)
    marks = [tmp_path / "rich.mark", tmp_path / "better_exceptions.mark"]
    (site / "rich" / "__init__.py").write_text(STAND_IN.format(mark=str(marks[0])))
    (site / "better_exceptions.py").write_text(STAND_IN.format(mark=str(marks[1])))
    env = {**clean_environ(), "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return env, marks


def test_structlog_would_import_the_installed_renderers(
    installed_renderers: tuple[dict[str, str], list[Path]],
) -> None:
    env, marks = installed_renderers
    subprocess.run([sys.executable, "-c", "import structlog"], env=env, check=True)
    assert all(mark.exists() for mark in marks)


def test_the_program_does_not_import_traceback_renderers_it_never_uses(
    installed_renderers: tuple[dict[str, str], list[Path]],
) -> None:
    env, marks = installed_renderers
    done = subprocess.run(
        [sys.executable, "-m", "regionsync", "--version"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert __version__ in done.stdout
    assert not any(mark.exists() for mark in marks)


def test_a_reader_that_stops_reading_ends_the_program_quietly(tmp_path: Path) -> None:
    """``regionsync schedule --count N | head``: no traceback, no "internal error"; the exit
    code says the pipe broke (128 + SIGPIPE), as a program killed by SIGPIPE would."""
    env = {**clean_environ(), "XDG_DATA_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "regionsync", "schedule", "--count", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.read(30)
    process.stdout.close()
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""
