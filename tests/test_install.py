"""The migrations are found however regionsync is imported: installed, editable, or from a
checkout's source tree (``python -m regionsync`` at the repository root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from regionsync.store import schema
from tests.support import clean_environ

ROOT = Path(__file__).resolve().parents[1]


def test_an_editable_install_finds_the_repository_migrations() -> None:
    # This checkout is installed editable (``pip install -e``) for the tests.
    found = schema.migrations_directory()
    assert found.resolve() == (ROOT / "migrations").resolve()
    assert schema.head_revision()


def _python(
    args: list[str], *, path: list[Path], cwd: Path, data: Path
) -> subprocess.CompletedProcess[str]:
    """Python without site (so no editable finder), importing from ``path`` only."""
    env = clean_environ()
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in path),
        XDG_DATA_HOME=str(data),
        REGIONSYNC_LOG_FORMAT="json",
    )
    return subprocess.run(
        [sys.executable, "-S", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_migrate_works_installed_and_from_the_source_tree(tmp_path: Path) -> None:
    dependencies = Path(sysconfig.get_paths()["purelib"])
    site = tmp_path / "site"
    # From a copy, so that pip's in-tree build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "*.db"),
    )
    install = ["install", "--quiet", "--no-deps", "--target", str(site), "."]
    built = subprocess.run(
        [sys.executable, "-m", "pip", *install],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert (site / "regionsync" / "migrations" / "env.py").is_file()

    # Installed, run from elsewhere: the package's own migrations.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _python(
        ["-c", "from regionsync.store import schema; print(schema.migrations_directory())"],
        path=[site, dependencies],
        cwd=outside,
        data=tmp_path / "a",
    )
    assert where.stdout.strip() == str(site / "regionsync" / "migrations"), where.stderr
    done = _python(
        ["-m", "regionsync", "migrate"], path=[site, dependencies], cwd=outside, data=tmp_path / "a"
    )
    assert done.returncode == 0, done.stderr
    assert "migrated: empty -> " in done.stdout

    # Installed, run at the repository root: the source tree shadows the installed package.
    done = _python(
        ["-m", "regionsync", "migrate"], path=[site, dependencies], cwd=ROOT, data=tmp_path / "b"
    )
    assert done.returncode == 0, done.stderr
    assert "migrated: empty -> " in done.stdout

    # Not installed at all, run from the source tree.
    done = _python(
        ["-m", "regionsync", "migrate"], path=[dependencies], cwd=ROOT, data=tmp_path / "c"
    )
    assert done.returncode == 0, done.stderr
    assert "migrated: empty -> " in done.stdout


def test_every_package_of_the_source_tree_ships() -> None:
    """pyproject.toml names the packages a plain ``pip install .`` copies: a new subpackage
    left out installs fine editable (as the tests run) and fails on import once installed."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "regionsync").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, sorted(found - listed)
