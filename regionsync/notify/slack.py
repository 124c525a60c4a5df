"""A notification as a Slack incoming-webhook message: a ``text`` summary plus blocks.

Changes are grouped ("Lost carrier support", "Added", ...), one line per region
("United States: Tracfone lost carrier support"), each group cut with "…and N more" past
:data:`LINES_PER_GROUP` lines or Slack's limit of 3,000 characters per section text.
"""

from __future__ import annotations

from typing import Any

#: Slack's limits: a section's text, blocks per message.
MAX_SECTION_CHARS = 3000
MAX_BLOCKS = 50
LINES_PER_GROUP = 15
MAX_NAME_CHARS = 120

GROUPS = (
    ("lost", "Lost carrier support"),
    ("gained", "Gained carrier support"),
    ("hosting", "Hosting region changed"),
    ("added", "Added"),
    ("removed", "Removed"),
    ("restored", "Restored"),
)


def escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _name(change: dict[str, Any]) -> str:
    name = change.get("display_name") or change.get("region_id") or "?"
    name = str(name)
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1] + "…"
    return escape(name)


def _value(value: Any) -> str:
    return "none" if value is None else escape(str(value)[:MAX_NAME_CHARS])


def _carrier(enabled: Any) -> str:
    return "carrier enabled" if enabled else "carrier not enabled"


def describe(change: dict[str, Any]) -> tuple[str, str]:
    """(group, line) for one change of the webhook payload."""
    name = _name(change)
    carrier = change.get("carrier_enabled") or {}
    hosting = change.get("hosting_region") or {}
    kind = change.get("kind")
    if kind in ("added", "restored"):
        verb = "was added" if kind == "added" else "is back"
        where = f", hosted in {_value(hosting.get('after'))}" if hosting.get("after") else ""
        return kind, f"{name} {verb} ({_carrier(carrier.get('after'))}{where})"
    if kind == "removed":
        return "removed", f"{name} was removed (no longer listed for the agent)"
    moved = ""
    if hosting.get("before") != hosting.get("after"):
        moved = f"hosting region {_value(hosting.get('before'))} → {_value(hosting.get('after'))}"
    if carrier.get("before") != carrier.get("after"):
        gained = bool(carrier.get("after"))
        line = f"{name} {'gained' if gained else 'lost'} carrier support"
        return ("gained" if gained else "lost"), line + (f" ({moved})" if moved else "")
    return "hosting", f"{name}: {moved or 'changed'}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _group_text(title: str, lines: list[str]) -> str:
    head = f"*{title}* ({len(lines)})"
    shown: list[str] = []
    for line in lines[:LINES_PER_GROUP]:
        rest = len(lines) - len(shown) - 1
        tail = f"\n…and {rest} more" if rest else ""
        candidate = "\n".join([head, *shown, f"• {line}"]) + tail
        if len(candidate) > MAX_SECTION_CHARS:
            break
        shown.append(f"• {line}")
    more = len(lines) - len(shown)
    return "\n".join([head, *shown]) + (f"\n…and {more} more" if more else "")


def render(payload: dict[str, Any]) -> dict[str, Any]:
    """The Slack message for one delivery's payload."""
    data = payload.get("data", {})
    changes: list[dict[str, Any]] = data.get("changes", [])
    grouped: dict[str, list[str]] = {key: [] for key, _ in GROUPS}
    for change in changes:
        group, line = describe(change)
        grouped[group].append(line)
    summary = ", ".join(
        f"{len(grouped[key])} {title.lower()}" for key, title in GROUPS if grouped[key]
    )
    part = f" (part {data.get('part')} of {data.get('parts')})" if data.get("parts", 1) > 1 else ""
    count = len(changes)
    text = (
        f"regionsync: {count} region change{'s' if count != 1 else ''} in sync run "
        f"{data.get('run_id')}{part}: {summary or 'none'}"
    )
    blocks = [_section(f"*{escape(text)}*")]
    blocks += [_section(_group_text(title, grouped[key])) for key, title in GROUPS if grouped[key]]
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"Fetched from Kaleyra at {data.get('changed_at')}"}
            ],
        }
    )
    return {"text": text[:MAX_SECTION_CHARS], "blocks": blocks[:MAX_BLOCKS]}
