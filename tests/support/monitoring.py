"""The shipped alert rules and Grafana dashboard, as tests read them: every PromQL query they
hold, split between the daemon's and the fleet's, and the names a live ``/metrics`` lacks.

The daemon's: ``docker/prometheus/alerts.yml`` and the dashboard's panels above its fleet row.
The fleet's: ``docker/prometheus/fleet-alerts.yml``, the panels of the fleet row, and the
rules of ``alerts.yml`` that apply to a worker's syncs too (docs/fleet.md, *Seen from
outside*).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "docker" / "prometheus" / "alerts_test.yml"
FLEET_ALERTS = ROOT / "docker" / "prometheus" / "fleet-alerts.yml"
FLEET_ALERT_TESTS = ROOT / "docker" / "prometheus" / "fleet-alerts_test.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "regionsync.json"
#: The rules of alerts.yml on the sync metrics a worker counts as the daemon does.
SHARED_RULES = (
    "RegionsyncCredentialsRefused",
    "RegionsyncMassRemovalGuardTripped",
    "RegionsyncRecordsRejected",
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)

Part = Literal["daemon", "fleet", "all"]

SELECTOR = re.compile(r"\b((?:regionsync|process)_[a-z0-9_]+)\b(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_RULE = re.compile(r"^\s+- alert: (\w+)\n\s+expr: (>\n(?:\s{10}.*\n)+|.*\n)", re.M)


def rules(path: Path) -> list[tuple[str, str]]:
    """``(alert name, PromQL)`` of every rule of an alert file."""
    return [
        (name, " ".join(expr.removeprefix(">\n").split()))
        for name, expr in _RULE.findall(path.read_text())
    ]


def panels(part: Part) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` of the dashboard's panels: above the fleet row (the
    daemon's), in it (the fleet's), or all of them."""
    found = []
    in_fleet = False
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            in_fleet = "Fleet" in panel["title"]
            continue
        if part == "all" or in_fleet == (part == "fleet"):
            found += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return found


def queries(part: Part) -> list[tuple[str, str]]:
    """``(where, PromQL)`` of every alert rule and dashboard query of ``part``."""
    if part == "daemon":
        alerts = rules(ALERTS)
    elif part == "fleet":
        alerts = [r for r in rules(ALERTS) if r[0] in SHARED_RULES] + rules(FLEET_ALERTS)
    else:
        alerts = rules(ALERTS) + rules(FLEET_ALERTS)
    return [(f"alert {name}", expr) for name, expr in alerts] + [
        (f"panel {title!r}", expr) for title, expr in panels(part)
    ]


def exposed_names(text: str) -> dict[str, dict[str, set[str]]]:
    """Every sample name of an exposition, with the values each of its labels takes."""
    names: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = names.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return names


def missing_names(text: str, used: list[tuple[str, str]]) -> list[str]:
    """The metric names and label values the queries ``used`` select that the exposition
    ``text`` lacks (``job`` and ``instance`` are Prometheus's own)."""
    exposed = exposed_names(text)
    missing = []
    for where, expr in used:
        for name, matchers in SELECTOR.findall(expr):
            if name not in exposed:
                missing.append(f"{where}: {name}")
                continue
            for label, op, value in MATCHER.findall(matchers):
                if label in ("job", "instance") or op.startswith("!"):
                    continue
                wanted = value.split("|") if op == "=~" else [value]
                for one in wanted:
                    if one not in exposed[name].get(label, set()):
                        missing.append(f'{where}: {name}{{{label}="{one}"}}')
    return missing
