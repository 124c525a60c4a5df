"""One typed settings object, built once from the environment and validated up front.

No other module reads ``os.environ``: the CLI builds :class:`Settings` and passes it in.
Secrets are held in :class:`Secret` and the database URL's password is masked, so
``repr(settings)`` is safe to log.

Each variable (or group) has its own small parser. Not pydantic-settings: a new dependency
whose errors (several lines, naming fields) we would reword into our one line naming the
variable (exit 2), while empty-as-unset and the unknown-variable warnings stay ours anyway.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import io
import ipaddress
import math
import os
import re
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from regionsync.durations import MAX_DURATION, UNITS, format_duration, parse_duration
from regionsync.errors import ConfigError

POD_BASE_URLS = {
    "in": "https://rcs-api.in.kaleyra.io",
    "na": "https://rcs-api.na.kaleyra.io",
}
DEFAULT_REGIONS_PATH = "/v1/{sid}/rcs/agent/agent_regions"
DEFAULT_SCHEDULE = "15m"
DEFAULT_MAX_REMOVAL_FRACTION = 0.5
DEFAULT_MAX_REJECT_FRACTION = 0.5
DEFAULT_LOG_REGION_LINES = 100
#: How long a statement waits for a lock that another session holds before it fails: a
#: sync or a migration never waits without a bound (docs/reliability.md, *Readers beside the
#: sync*).
DEFAULT_LOCK_TIMEOUT = timedelta(seconds=10)
MAX_LOCK_TIMEOUT = timedelta(minutes=10)
#: How long runs that wrote nothing are kept (docs/operations.md, *Run retention*); shorter
#: than an hour is taken for a typo (``30s`` for ``30d``).
DEFAULT_RUNS_RETENTION = timedelta(days=30)
MIN_RUNS_RETENTION = timedelta(hours=1)
#: The longest interval schedule; anything longer is a typo (and overflows the clock).
MAX_SCHEDULE_INTERVAL = timedelta(days=365)
_INTERVAL = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]+)\s*")
#: What an ``--env-file`` may name: an environment variable, ASCII as in POSIX.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The longest account name; names are lowercase letters, digits, ``-`` and ``_``.
ACCOUNT_NAME_MAX = 63
ACCOUNT_NAME = re.compile(rf"[a-z0-9_-]{{1,{ACCOUNT_NAME_MAX}}}")
DEFAULT_ACCOUNT = "default"
#: Variables named so hold an account's API key (``accounts add --api-key-env``): read at
#: sync time, not by :meth:`Settings.from_env`, and not warned about as unknown.
ACCOUNT_KEY_PREFIX = "KALEYRA_API_KEY_"
_NEWLINE = re.compile(r"\r\n|\n|\r")
#: Variables with these prefixes are regionsync's; one it does not read is warned about.
PREFIXES = ("REGIONSYNC_", "KALEYRA_")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The address regionsync's servers (``/metrics``, the fakes) listen on unless told otherwise.
LOOPBACK = "127.0.0.1"

LogFormat = Literal["json", "console"]
#: How a parser reads a variable: its stripped value, None when unset or empty.
Get = Callable[[str], str | None]


class Secret:
    """A string that never shows itself in ``repr()``, ``str()`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_sqlite_path(env: Mapping[str, str]) -> Path:
    """Where the embedded database lives: ``$XDG_DATA_HOME/regionsync/regionsync.db``."""
    data_home = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "regionsync" / "regionsync.db"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_database_url(raw: str, *, setting: str = "REGIONSYNC_DATABASE_URL") -> URL:
    """Turn what users paste (``postgres://``, ``postgresql://``) into a psycopg 3 URL."""
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        # The message may quote the URL, password included: say only where to look.
        raise ConfigError(
            setting, "not a valid database URL (expected postgresql://user:password@host:port/db)"
        ) from None
    backend, _, _driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url.set(drivername="sqlite")
    raise ConfigError(setting, f"unsupported database {backend!r} (use postgresql:// or sqlite://)")


def _sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def check_url(raw: str, *, setting: str, query: bool) -> str:
    """``raw``, stripped, if it is a URL that sends no secret in clear: https, or plain http
    to a loopback host only, with no credentials or fragment (nor a query unless ``query``)."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, "must be an https:// URL with a host")
    if parts.username or parts.password or parts.fragment or (parts.query and not query):
        carried = "credentials or a fragment" if query else "credentials, a query or fragment"
        raise ConfigError(setting, f"must not carry {carried}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(setting, "plain http:// is only allowed for loopback hosts; use https://")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything regionsync is configured with; see docs/settings.md."""

    database_url: URL
    embedded_database: bool
    kaleyra_sid: str | None = None
    kaleyra_api_key: Secret | None = field(default=None, repr=True)
    kaleyra_base_url: str | None = None
    kaleyra_regions_path: str = DEFAULT_REGIONS_PATH
    schedule: str = DEFAULT_SCHEDULE
    timezone: str = "UTC"
    log_format: LogFormat | None = None
    log_level: str = "INFO"
    max_removal_fraction: float = DEFAULT_MAX_REMOVAL_FRACTION
    metrics_port: int | None = None
    metrics_host: str = LOOPBACK
    notifications: NotificationSettings = field(default_factory=lambda: NotificationSettings())
    #: The PostgreSQL schema of this account (docs/operations.md, *Several accounts in one
    #: database*).
    db_schema: str = "public"
    #: ``REGIONSYNC_DB_SCHEMA`` was set, but SQLite has no schemas: warned about, then ignored.
    db_schema_ignored: bool = False
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION
    log_region_lines: int = DEFAULT_LOG_REGION_LINES
    #: The longest a statement waits for a lock another session holds (PostgreSQL).
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT
    #: How long runs that wrote nothing are kept; None (``off``): every run is kept.
    runs_retention: timedelta | None = DEFAULT_RUNS_RETENTION
    #: The variable the database URL came from; None for the embedded default.
    database_setting: str | None = None
    #: The CA certificates TLS to Kaleyra and the webhook trusts; None: certifi's bundle.
    ca_bundle: CABundle | None = None
    #: The account the ``KALEYRA_*`` settings are, while the accounts table is empty; the
    #: account that rows from before accounts existed are given by ``migrate``.
    account: str = DEFAULT_ACCOUNT
    #: Where the key of an account without api_key_env or api_key_file is: ``<dir>/<name>``.
    api_keys_dir: Path | None = None
    #: The environment the settings were read from: accounts name variables holding their
    #: keys, read at sync time. Never shown (``repr``).
    environment: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if name not in ("database_url", "environment")
        )
        shown = self.database_url.render_as_string(hide_password=True)
        return f"Settings(database_url={shown!r}, {fields})"

    @property
    def database_display(self) -> str:
        """The database URL with its password masked, for logs and messages."""
        return self.database_url.render_as_string(hide_password=True)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values, so logs and errors can be scrubbed of them."""
        found = []
        if self.kaleyra_api_key is not None:
            found.append(self.kaleyra_api_key.reveal())
        if self.database_url.password:
            found.append(str(self.database_url.password))
        found.extend(self.notifications.secrets)
        return tuple(s for s in found if s)

    def require_kaleyra(self) -> KaleyraConfig:
        """What fetching from the API needs: a SID, a key and a base URL (or pod)."""
        if not self.kaleyra_sid:
            raise ConfigError("KALEYRA_SID", "is required to fetch from the Kaleyra API")
        if self.kaleyra_api_key is None:
            raise ConfigError("KALEYRA_API_KEY", "is required to fetch from the Kaleyra API")
        if self.kaleyra_base_url is None:
            raise ConfigError(
                "KALEYRA_POD", "set KALEYRA_POD (in or na) or KALEYRA_BASE_URL to reach Kaleyra"
            )
        return KaleyraConfig(
            base_url=self.kaleyra_base_url,
            sid=self.kaleyra_sid,
            api_key=self.kaleyra_api_key,
            regions_path=self.kaleyra_regions_path,
            ca_bundle=self.ca_bundle,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build and validate settings; raises :class:`ConfigError` naming the variable.

        Each variable (or group) has its own parser below, and every one is called,
        unconditionally: the names read through ``get`` are the known ones, and any other
        ``REGIONSYNC_*``/``KALEYRA_*`` is warned about (see :func:`known_variables`).
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or not value.strip():
                return None  # set but empty reads as unset
            return value.strip()

        database = _database(get, env)
        sqlite = database["database_url"].get_backend_name() == "sqlite"
        ca_bundle = _ca_bundle(get)
        return cls(
            **database,
            kaleyra_base_url=_base_url(get),
            kaleyra_regions_path=_regions_path(get),
            kaleyra_sid=_sid(get),
            kaleyra_api_key=_api_key(get),
            timezone=_timezone(get),
            log_format=_log_format(get),
            log_level=_log_level(get),
            max_removal_fraction=_fraction(
                "REGIONSYNC_MAX_REMOVAL_FRACTION", get, DEFAULT_MAX_REMOVAL_FRACTION
            ),
            metrics_port=_metrics_port(get),
            metrics_host=_metrics_host(get("REGIONSYNC_METRICS_HOST")),
            schedule=_schedule(get),
            notifications=NotificationSettings.from_env(get, ca_bundle=ca_bundle),
            **db_schema_settings(get, sqlite=sqlite),
            max_reject_fraction=_fraction(
                "REGIONSYNC_MAX_REJECT_FRACTION", get, DEFAULT_MAX_REJECT_FRACTION
            ),
            log_region_lines=_count("REGIONSYNC_LOG_REGION_LINES", get, DEFAULT_LOG_REGION_LINES),
            lock_timeout=_lock_timeout(get),
            runs_retention=_runs_retention(get),
            ca_bundle=ca_bundle,
            account=check_account_name(
                get("REGIONSYNC_ACCOUNT") or DEFAULT_ACCOUNT, setting="REGIONSYNC_ACCOUNT"
            ),
            api_keys_dir=_api_keys_dir(get),
            environment=env,
        )


@dataclass(frozen=True)
class KaleyraConfig:
    """Everything a fetch from Kaleyra needs, all of it present: see
    :meth:`Settings.require_kaleyra`, the one place that checks."""

    base_url: str
    sid: str
    api_key: Secret
    regions_path: str = DEFAULT_REGIONS_PATH
    ca_bundle: CABundle | None = None
    #: What to check when Kaleyra refuses the credentials (an account names its own).
    credentials: str = "KALEYRA_API_KEY and KALEYRA_SID"

    @property
    def regions_url(self) -> str:
        """The full URL of "Get an Agent's Regions"."""
        return self.base_url + self.regions_path.format(sid=self.sid)


# One parser per variable (or group), each raising ConfigError naming it --------------------


def _database(get: Get, env: Mapping[str, str]) -> dict[str, Any]:
    """``REGIONSYNC_DATABASE_URL``, else ``DATABASE_URL``, else the embedded SQLite file."""
    setting = "REGIONSYNC_DATABASE_URL" if get("REGIONSYNC_DATABASE_URL") else "DATABASE_URL"
    raw = get(setting)
    if raw is None:
        return {
            "database_url": _sqlite_url(default_sqlite_path(env)),
            "embedded_database": True,
            "database_setting": None,
        }
    return {
        "database_url": normalise_database_url(raw, setting=setting),
        "embedded_database": False,
        "database_setting": setting,
    }


def _base_url(get: Get) -> str | None:
    """``KALEYRA_BASE_URL``, else the URL of ``KALEYRA_POD``; both are always read."""
    pod = get("KALEYRA_POD")
    if pod is not None and pod.lower() not in POD_BASE_URLS:
        raise ConfigError("KALEYRA_POD", f"must be one of: {', '.join(POD_BASE_URLS)}")
    raw = get("KALEYRA_BASE_URL")
    if raw:
        return check_url(raw, setting="KALEYRA_BASE_URL", query=False).rstrip("/")
    return POD_BASE_URLS.get((pod or "").lower())


def _regions_path(get: Get) -> str:
    path = get("KALEYRA_REGIONS_PATH") or DEFAULT_REGIONS_PATH
    if not path.startswith("/") or "{sid}" not in path:
        raise ConfigError(
            "KALEYRA_REGIONS_PATH",
            "must start with / and contain {sid}, e.g. " + DEFAULT_REGIONS_PATH,
        )
    try:
        path.format(sid="x")
    except (KeyError, IndexError, ValueError):
        raise ConfigError("KALEYRA_REGIONS_PATH", "may hold no placeholder but {sid}") from None
    return path


#: Where the CA certificates to trust may be named, the first one set winning: requests' own
#: variables, then OpenSSL's (see docs/operations.md, *Trusting a private CA*).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@dataclass(frozen=True)
class CABundle:
    """The CA certificates outbound TLS trusts instead of certifi's bundle: a PEM file, or a
    directory of them as ``openssl rehash`` leaves it; and the variable that named it."""

    path: Path
    variable: str


def _ca_bundle(get: Get) -> CABundle | None:
    """The first of :data:`CA_BUNDLE_VARIABLES` set, checked now: requests would otherwise
    fail each connection with a message that blames the server."""
    for name in CA_BUNDLE_VARIABLES:
        raw = get(name)
        if raw is None:
            continue
        path = Path(raw).expanduser()
        if path.is_dir() and name != "SSL_CERT_FILE":
            if not os.access(path, os.R_OK | os.X_OK):
                raise ConfigError(name, f"cannot read the directory {raw[:200]}")
            return CABundle(path, name)
        if name == "SSL_CERT_DIR" or not path.is_file():
            kind = "directory" if name == "SSL_CERT_DIR" else "file"
            raise ConfigError(name, f"no such {kind}: {raw[:200]} (the CA certificates to trust)")
        _check_pem_bundle(name, path)
        return CABundle(path, name)
    return None


def _check_pem_bundle(name: str, path: Path) -> None:
    """Refuse a file that TLS could not load CA certificates from (a key, DER, a typo)."""
    import ssl  # only when a bundle is configured: most commands never open a TLS connection

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except OSError as error:  # ssl.SSLError is an OSError too
        reason = getattr(error, "reason", None) or error.strerror or type(error).__name__
        raise ConfigError(
            name, f"cannot load CA certificates from {str(path)[:200]}: {reason} (PEM expected)"
        ) from None


def _sid(get: Get) -> str | None:
    sid = get("KALEYRA_SID")
    if sid is not None and not sid.isalnum():
        raise ConfigError("KALEYRA_SID", "must be letters and digits only")
    return sid


def _api_key(get: Get) -> Secret | None:
    key = get("KALEYRA_API_KEY")
    if key is None:
        return None
    if not _header_safe(key):
        # Say what is wrong, never which character: the key is a secret.
        raise ConfigError(
            "KALEYRA_API_KEY", "must be printable Latin-1 text (it is sent as an HTTP header)"
        )
    return Secret(key)


def check_account_name(name: str, *, setting: str = "NAME") -> str:
    """``name`` if it is a valid account name, else a :class:`ConfigError` naming ``setting``."""
    if ACCOUNT_NAME.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "…"
        raise ConfigError(
            setting,
            f"{shown!r} is not an account name: lowercase letters, digits, - and _, "
            f"1 to {ACCOUNT_NAME_MAX} characters",
        )
    return name


def _api_keys_dir(get: Get) -> Path | None:
    raw = get("REGIONSYNC_API_KEYS_DIR")
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise ConfigError("REGIONSYNC_API_KEYS_DIR", f"{raw[:80]!r} must be an absolute path")
    return path


def _timezone(get: Get) -> str:
    timezone = get("REGIONSYNC_TIMEZONE") or "UTC"
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError("REGIONSYNC_TIMEZONE", f"unknown time zone {timezone!r}") from None
    return timezone


def _log_format(get: Get) -> LogFormat | None:
    raw = get("REGIONSYNC_LOG_FORMAT")
    if raw is None:
        return None
    fmt = raw.lower()
    if fmt == "json":
        return "json"
    if fmt == "console":
        return "console"
    raise ConfigError("REGIONSYNC_LOG_FORMAT", "must be json or console")


def _log_level(get: Get) -> str:
    level = (get("REGIONSYNC_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError("REGIONSYNC_LOG_LEVEL", f"must be one of: {', '.join(LOG_LEVELS)}")
    return level


def _metrics_port(get: Get) -> int | None:
    raw = get("REGIONSYNC_METRICS_PORT")
    if raw is None:
        return None
    if not _ascii_digits(raw) or not 1 <= int(raw) <= 65535:
        raise ConfigError("REGIONSYNC_METRICS_PORT", "must be a port number from 1 to 65535")
    return int(raw)


def _schedule(get: Get) -> str:
    schedule = get("REGIONSYNC_SCHEDULE") or DEFAULT_SCHEDULE
    check_schedule(schedule)
    return schedule


# Several accounts in one database (see docs/operations.md) ------------------------------

DEFAULT_DB_SCHEMA = "public"
#: Names that need no quoting in an analyst's SQL; PostgreSQL keeps names to 63 bytes.
DB_SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_db_schema(raw: str) -> str:
    """A schema name safe to put in SQL and to type unquoted, and not one of PostgreSQL's.

    The system schemas are recognised case-insensitively, before the pattern: PostgreSQL
    folds an unquoted ``INFORMATION_SCHEMA`` to ``information_schema``, so the message says
    what the name is rather than that it has capitals. ``pg_dump`` leaves
    ``information_schema`` out of every backup, and ``pg_*`` is reserved to the server.
    """
    folded = raw.lower()
    if folded == "information_schema" or folded.startswith("pg_"):
        raise ConfigError(
            "REGIONSYNC_DB_SCHEMA",
            f"{raw[:70]!r} names PostgreSQL's own schemas (information_schema and pg_* are "
            "refused); choose another, e.g. public",
        )
    if not DB_SCHEMA_PATTERN.fullmatch(raw):
        raise ConfigError(
            "REGIONSYNC_DB_SCHEMA",
            "must be 1 to 63 lowercase letters, digits or underscores, not starting with a "
            f"digit (got {raw[:70]!r})",
        )
    return raw


def db_schema_settings(get: Get, *, sqlite: bool) -> dict[str, Any]:
    """``db_schema`` and ``db_schema_ignored``: validated even for SQLite, which ignores it."""
    raw = get("REGIONSYNC_DB_SCHEMA")
    schema = DEFAULT_DB_SCHEMA if raw is None else check_db_schema(raw)
    return {"db_schema": schema, "db_schema_ignored": sqlite and raw is not None}


# Notifications (see docs/notifications.md) -----------------------------------------------

WebhookFormat = Literal["json", "slack"]
#: What ``REGIONSYNC_NOTIFY_ON`` may name: kinds of change, or a tracked field that flipped.
NOTIFY_ON_CHOICES = ("added", "removed", "restored", "carrier_enabled", "hosting_region")
NOTIFY_ON_ALIASES = {"all": NOTIFY_ON_CHOICES, "changed": ("carrier_enabled", "hosting_region")}
DEFAULT_WEBHOOK_MAX_AGE = timedelta(hours=24)
#: Standard Webhooks: secrets of 24 to 64 random bytes.
WEBHOOK_SECRET_BYTES = (24, 64)
#: A webhook URL path this long may be a credential (Slack's is): it is scrubbed from logs.
TOKEN_PATH_CHARS = 16
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of a secret, not a secret


def decode_webhook_secret(raw: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; the message never quotes the value."""
    body = raw.strip().removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    low, high = WEBHOOK_SECRET_BYTES
    if not raw.strip().startswith(WEBHOOK_SECRET_PREFIX) or not low <= len(key) <= high:
        raise ConfigError(
            "REGIONSYNC_WEBHOOK_SECRET",
            f"must be whsec_ followed by {low} to {high} random bytes in base64, e.g. "
            "whsec_$(openssl rand -base64 32)",
        )
    return key


def parse_notify_on(raw: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset(NOTIFY_ON_CHOICES)
    chosen: set[str] = set()
    for word in (w.strip().lower() for w in raw.split(",")):
        if word in NOTIFY_ON_ALIASES:
            chosen.update(NOTIFY_ON_ALIASES[word])
        elif word in NOTIFY_ON_CHOICES:
            chosen.add(word)
        else:
            choices = ", ".join((*NOTIFY_ON_CHOICES, *NOTIFY_ON_ALIASES))
            raise ConfigError("REGIONSYNC_NOTIFY_ON", f"unknown {word!r}; a list of: {choices}")
    return frozenset(chosen)


@dataclass(frozen=True)
class NotificationSettings:
    """Where and what to notify; the URL (Slack's holds a token) and the secret are hidden."""

    webhook_url: Secret | None = None
    webhook_secret: Secret | None = None
    webhook_format: WebhookFormat = "json"
    notify_on: frozenset[str] = frozenset(NOTIFY_ON_CHOICES)
    webhook_max_age: timedelta = DEFAULT_WEBHOOK_MAX_AGE
    #: As :attr:`Settings.ca_bundle`: what TLS to the webhook trusts.
    ca_bundle: CABundle | None = None

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None

    @property
    def webhook_display(self) -> str | None:
        """Scheme and host only: a Slack webhook's path is its credential."""
        if self.webhook_url is None:
            return None
        parts = urlsplit(self.webhook_url.reveal())
        return f"{parts.scheme}://{parts.netloc}/…"

    @property
    def secrets(self) -> tuple[str, ...]:
        found = (self.webhook_url, self.webhook_secret)
        hidden = [s.reveal() for s in found if s is not None]
        if self.webhook_url is not None:
            path = urlsplit(self.webhook_url.reveal()).path
            if len(path) >= TOKEN_PATH_CHARS:  # Slack's /services/T…/B…/token, echoed in errors
                hidden.append(path)
        return tuple(s for s in hidden if s)

    @classmethod
    def from_env(cls, get: Get, *, ca_bundle: CABundle | None = None) -> NotificationSettings:
        raw_url = get("REGIONSYNC_WEBHOOK_URL")
        url = check_url(raw_url, setting="REGIONSYNC_WEBHOOK_URL", query=True) if raw_url else None
        raw_secret = get("REGIONSYNC_WEBHOOK_SECRET")
        if raw_secret is not None:
            decode_webhook_secret(raw_secret)
        fmt = (get("REGIONSYNC_WEBHOOK_FORMAT") or "json").lower()
        if fmt not in ("json", "slack"):
            raise ConfigError("REGIONSYNC_WEBHOOK_FORMAT", "must be json or slack")
        if url is not None and fmt == "json" and raw_secret is None:
            raise ConfigError(
                "REGIONSYNC_WEBHOOK_SECRET",
                "is required to sign webhooks (REGIONSYNC_WEBHOOK_FORMAT=json); generate one "
                "with: echo whsec_$(openssl rand -base64 32)",
            )
        max_age = DEFAULT_WEBHOOK_MAX_AGE
        raw_age = get("REGIONSYNC_WEBHOOK_MAX_AGE")
        if raw_age is not None:
            parsed = parse_duration(raw_age)
            if parsed is None:
                raise ConfigError(
                    "REGIONSYNC_WEBHOOK_MAX_AGE",
                    f"must be a duration from 1s to {MAX_DURATION.days}d, like 30m, 24h or 7d",
                )
            max_age = parsed
        return cls(
            webhook_url=Secret(url) if url else None,
            webhook_secret=Secret(raw_secret) if raw_secret else None,
            webhook_format=fmt,  # type: ignore[arg-type]
            notify_on=parse_notify_on(get("REGIONSYNC_NOTIFY_ON")),
            webhook_max_age=max_age,
            ca_bundle=ca_bundle,
        )


def _header_safe(text: str) -> bool:
    """Whether ``text`` can be an HTTP header value: Latin-1, no control characters."""
    return all(" " <= ch <= "~" or "\xa0" <= ch <= "\xff" for ch in text)


def _ascii_digits(text: str) -> bool:
    """``str.isdigit`` also takes full-width and Arabic-Indic digits; a setting takes 0-9."""
    return text.isascii() and text.isdigit()


def _fraction(name: str, get: Get, default: float) -> float:
    """A number from 0 to 1, written in ASCII; ``default`` when unset."""
    raw = get(name)
    if raw is None:
        return default
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise ConfigError(name, f"must be a number from 0 to 1 (1 turns it off), got {raw[:40]!r}")
    return value


def _count(name: str, get: Get, default: int) -> int:
    raw = get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7) or int(raw) > 1_000_000:
        raise ConfigError(name, "must be a whole number from 0 to 1000000 (0: none)")
    return int(raw)


def _lock_timeout(get: Get) -> timedelta:
    raw = get("REGIONSYNC_LOCK_TIMEOUT")
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT
    value = parse_duration(raw) if raw.isascii() else None
    if value is None or value > MAX_LOCK_TIMEOUT:
        raise ConfigError(
            "REGIONSYNC_LOCK_TIMEOUT",
            f"must be a duration from 1s to {format_duration(MAX_LOCK_TIMEOUT)}, such as 10s; "
            f"got {raw[:40]!r}",
        )
    return value


def _runs_retention(get: Get) -> timedelta | None:
    raw = get("REGIONSYNC_RUNS_RETENTION")
    if raw is None:
        return DEFAULT_RUNS_RETENTION
    if raw.lower() == "off":
        return None
    value = parse_duration(raw) if raw.isascii() else None
    if value is None or value < MIN_RUNS_RETENTION:
        raise ConfigError(
            "REGIONSYNC_RUNS_RETENTION",
            f"must be a duration from {format_duration(MIN_RUNS_RETENTION)} to "
            f"{MAX_DURATION.days}d, such as 30d, or off to keep every run; got {raw[:40]!r}",
        )
    return value


def check_schedule(expression: str) -> None:
    """Refuse an interval too long for the clock up front, whatever the command: its
    arithmetic would overflow. The rest of a schedule (a crontab's fields, an interval's
    unit) is checked where it is parsed, so ``check`` can report it on its own line."""
    match = _INTERVAL.fullmatch(expression)
    if match is None or match.group(2).lower() not in UNITS:
        return
    number, unit = match.group(1), match.group(2).lower()
    limit = MAX_SCHEDULE_INTERVAL.total_seconds()
    if len(number) > len(str(int(limit))) or int(number) * UNITS[unit] > limit:
        raise ConfigError(
            "REGIONSYNC_SCHEDULE",
            f"{expression[:40]!r} is too long an interval: at most {MAX_SCHEDULE_INTERVAL.days}d",
        )


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers which variables were asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@functools.cache
def known_variables() -> frozenset[str]:
    """Every variable :meth:`Settings.from_env` reads, found by watching it read."""
    recorder = _Recorder()
    Settings.from_env(recorder)
    return frozenset(recorder.asked)


def environment_warnings(env: Mapping[str, str]) -> list[dict[str, str]]:
    """What deserves a warning in ``env``: regionsync-looking variables it does not read
    (typos, naming the closest known one), and known ones set but empty (read as unset)."""
    known = known_variables()
    found: list[dict[str, str]] = []
    for name in sorted(env):
        if name in known and not env[name].strip():
            found.append({"event": "settings.empty_variable", "variable": name, "read_as": "unset"})
        elif name.startswith(PREFIXES) and name not in known:
            if name.startswith(ACCOUNT_KEY_PREFIX):
                continue  # an account's key, read when that account syncs
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            found.append(
                {
                    "event": "settings.unknown_variable",
                    "variable": name[:100],
                    "closest": close[0] if close else "none",
                }
            )
    return found


def logging_hints(env: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """What logging needs before the settings are validated: the log format if it is a valid
    one, and every value that may be a secret (keys, secrets, URL passwords), so that even a
    failure while reading the settings is logged safely."""
    fmt = env.get("REGIONSYNC_LOG_FORMAT", "").strip().lower()
    secrets: set[str] = set()
    for name, value in env.items():
        if not name.startswith(PREFIXES) and name != "DATABASE_URL":
            continue
        if any(word in name for word in ("KEY", "SECRET", "PASSWORD", "TOKEN", "WEBHOOK_URL")):
            secrets |= {value, value.strip()}
        _scheme, sep, rest = value.partition("://")
        userinfo, at, _host = rest.rpartition("@")
        _user, colon, password = userinfo.partition(":")
        if sep and at and colon and password:
            secrets |= {password, unquote(password)}
    return (fmt if fmt in ("json", "console") else None), tuple(s for s in secrets if s)


def _metrics_host(raw: str | None) -> str:
    """The address ``/healthz`` and ``/metrics`` listen on: loopback unless told otherwise."""
    if raw is None:
        return LOOPBACK
    host = raw.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if host.isascii() and all(
        label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels
    ):
        return host
    raise ConfigError(
        "REGIONSYNC_METRICS_HOST",
        "must be an IP address or a host name (127.0.0.1 by default, 0.0.0.0 for all)",
    )


def read_env_file(path: Path) -> dict[str, str]:
    """Read a ``.env`` file as python-dotenv reads it, ``${VAR}`` left as written
    (docs/settings.md, *The `--env-file` format*); a line it cannot read is refused, naming
    its number.

    python-dotenv's own parser: the reference of the format (quotes, escapes, values over
    several lines, inline comments). Its ``dotenv_values`` would skip such a line with a
    warning, and a setting silently missing is worse than exit 2. The line is never quoted:
    it may hold a secret.
    """
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--env-file", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("--env-file", f"{path} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and not ENV_NAME.fullmatch(binding.key)):
            # A statement's text starts with the blank lines before it: count past them.
            statement = binding.original.string
            blank = statement[: len(statement) - len(statement.lstrip())]
            line = binding.original.line + len(_NEWLINE.findall(blank))
            raise ConfigError(
                "--env-file",
                f"{path}:{line}: expected NAME=VALUE, NAME a variable name (ASCII letters, "
                "digits, _) and VALUE unquoted or in matching quotes",
            )
        if binding.key is not None and binding.value is not None:  # a NAME alone sets nothing
            values[binding.key] = binding.value
    return values
