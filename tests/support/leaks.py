"""What a leaked secret looks like: distinctive test secrets, and a check that a text holds none
of them in any form (raw, escaped once or twice), written independently of the code under
test. Used by test_secrets (every command, failure and process) and test_logs (redaction).
"""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

#: Latin-1 only beyond ASCII: the key travels in an HTTP header.
KEY = "k'e\"y\\é-LEAKKEY7f3a9c-ñ'\"\\"
PASSWORD = "p'a\"s\\s¤-LEAKPW91b2e-wörd€\\"
#: Base64 (as Standard Webhooks wants), so only its marker makes it distinctive.
WEBHOOK_SECRET = "whsec_LEAKWHSEC5d1e" + "A" * 31
MARKERS = ("LEAKKEY7f3a9c", "LEAKPW91b2e", "LEAKWHSEC5d1e")
#: The log formats every leak check runs in.
FORMATS = ("json", "console")


def escaped_forms(secret: str) -> set[str]:
    """The forms a leak would take, written independently of the code under test."""
    once = {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
        quote(secret, safe=""),
        quote_plus(secret),
    }
    return once | {repr(form)[1:-1] for form in once} | {json.dumps(form)[1:-1] for form in once}


FORMS = escaped_forms(KEY) | escaped_forms(PASSWORD) | escaped_forms(WEBHOOK_SECRET)


def assert_clean(text: str, where: str) -> None:
    folded = text.casefold()
    for marker in MARKERS:
        assert marker.casefold() not in folded, f"{marker} in {where}: {text[:2000]}"
    for form in FORMS:
        assert form not in text, f"{form!r} in {where}"
