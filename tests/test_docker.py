"""The container files: every setting reaches the compose services that need it, and the
image's health check is the daemon's ``/healthz``, so it follows the schedule.

docker/smoke.sh (CI's docker step) builds and runs all of it on a real engine; these tests
need none: they read the files as compose and Docker do and run the health check's command.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from regionsync.daemon.metrics import DaemonMetrics, MetricsServer
from regionsync.settings import known_variables
from tests.support import clean_environ

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
#: What compose fixes for the services it runs: the database, and where /healthz listens.
PINNED = {"REGIONSYNC_DATABASE_URL", "REGIONSYNC_METRICS_PORT", "REGIONSYNC_METRICS_HOST"}
DOCKER_COMPOSE = shutil.which("docker-compose")


def settings() -> set[str]:
    """Every regionsync setting; DATABASE_URL only stands in for REGIONSYNC_DATABASE_URL."""
    return {name for name in known_variables() if name.startswith(("REGIONSYNC_", "KALEYRA_"))}


#: Not regionsync's own, but what it needs to reach Kaleyra or a webhook from a company
#: network: a private CA (docs/operations.md, *Trusting a private CA*) and a proxy.
NETWORK = {
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTPS_PROXY",
    "NO_PROXY",
}


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, in its exec (JSON) form."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "the Dockerfile has no HEALTHCHECK in exec form"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.mark.parametrize("service", ["migrate", "daemon"])
def test_compose_passes_every_setting_through(service: str) -> None:
    environment = services()[service]["environment"]
    assert set(environment) >= settings() - PINNED, settings() - PINNED - set(environment)
    assert environment["REGIONSYNC_DATABASE_URL"].startswith("postgresql://")
    passed = {name: value for name, value in environment.items() if name not in PINNED}
    # A bare name: compose takes its value from its environment or env file, else unset.
    assert passed == dict.fromkeys((settings() - PINNED) | NETWORK)


def test_compose_demo_takes_none_of_the_real_settings() -> None:
    demo = services()["demo"]["environment"]
    assert not {"REGIONSYNC_WEBHOOK_URL", "REGIONSYNC_DB_SCHEMA", "KALEYRA_POD"} & set(demo)
    assert all(value is not None for value in demo.values())


@pytest.mark.parametrize("service", ["daemon", "demo"])
def test_compose_daemons_keep_the_images_health_check(service: str) -> None:
    check = services()[service].get("healthcheck", {})
    assert "test" not in check
    assert not check.get("disable")


@pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)
def test_compose_takes_every_setting_from_an_env_file(tmp_path: Path) -> None:
    assert DOCKER_COMPOSE is not None
    values = {name: f"value-of-{name.lower()}" for name in settings() - PINNED}
    env_file = tmp_path / "regionsync.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    done = subprocess.run(
        [DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    resolved = yaml.safe_load(done.stdout)["services"]
    for service in ("migrate", "daemon"):
        environment = resolved[service]["environment"]
        assert {name: environment[name] for name in values} == values


# The image's health check ---------------------------------------------------------------


@pytest.fixture
def healthz() -> Iterator[tuple[MetricsServer, list[bool]]]:
    """A real /healthz on a free loopback port; fresh or stale as the list's last value says."""
    fresh = [True]
    metrics = DaemonMetrics(max_age=timedelta(hours=3))
    server = MetricsServer(metrics, 0, health=lambda: (fresh[-1], {"fresh": fresh[-1]})).start()
    try:
        yield server, fresh
    finally:
        server.stop()


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The image's health check, run as Docker runs it, with this Python as ``python``."""
    command = healthcheck_command()
    assert command[0] == "python", command
    env = {**clean_environ(), "REGIONSYNC_METRICS_PORT": str(port)}
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_images_health_check_is_healthz_at_the_metrics_port(
    healthz: tuple[MetricsServer, list[bool]],
) -> None:
    server, fresh = healthz
    done = run_healthcheck(server.port)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"fresh": True}
    fresh.append(False)  # /healthz answers 503: three periods of the schedule passed
    done = run_healthcheck(server.port)
    assert done.returncode == 1
    assert "503" in done.stderr


def test_the_images_health_check_fails_when_nothing_answers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: the connection is refused
        assert run_healthcheck(port).returncode == 1


def test_the_image_serves_healthz_on_the_port_it_probes() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ENV REGIONSYNC_METRICS_PORT=9100\b", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 9100$", text, re.MULTILINE)
