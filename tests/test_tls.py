"""Trusting a private CA (docs/operations.md, *Trusting a private CA*): Kaleyra behind a
TLS-inspecting proxy, or a webhook receiver with an internal certificate.

Real TLS on loopback (:mod:`tests.support.tlsfront`) with a CA made by ``openssl`` for the test, in
front of the fake Kaleyra server and the fake webhook receiver; ``regionsync`` run in-process.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import regionsync
from regionsync.errors import TransientSourceError
from regionsync.settings import CA_BUNDLE_VARIABLES, Settings
from regionsync.source.kaleyra import KaleyraClient, RetryPolicy
from regionsync.testing.fakeapi import FakeKaleyra
from regionsync.testing.fakehook import PATH, WebhookReceiver, WebhookServer
from tests.support.cli import Invoke, assert_one_line_error
from tests.support.fakeapi_fixtures import FAST, fake_variables
from tests.support.tlsfront import ConnectProxy, PrivateCA, TlsFront, make_private_ca

SAMPLE = Path(regionsync.__file__).parent / "samples" / "regions.json"
SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes-ok!").decode()


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return make_private_ca(tmp_path_factory.mktemp("private-ca"))


@pytest.fixture(autouse=True)
def no_ca_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets decides what is trusted."""
    for name in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.port is not None
    return parts.hostname or "127.0.0.1", parts.port


@pytest.fixture
def over_tls(private_ca: PrivateCA, fake: FakeKaleyra, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The settings of a run against Kaleyra and a webhook receiver, both behind TLS with
    certificates of the private CA."""
    hooks = WebhookServer(WebhookReceiver(secret=SECRET)).start()
    kaleyra_front = TlsFront(private_ca, _target(fake.url))
    hook_front = TlsFront(private_ca, (hooks.host, hooks.port))
    with kaleyra_front, hook_front:
        yield {
            **fake_variables(fake),
            "KALEYRA_BASE_URL": kaleyra_front.url,
            "REGIONSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'regionsync.db'}",
            "REGIONSYNC_WEBHOOK_URL": hook_front.url + PATH,
            "REGIONSYNC_WEBHOOK_SECRET": SECRET,
        }
    hooks.stop()


@pytest.mark.parametrize("variable", CA_BUNDLE_VARIABLES)
def test_a_private_ca_named_by_any_usual_variable_is_trusted_for_kaleyra_and_webhooks(
    invoke: Invoke,
    over_tls: dict[str, str],
    private_ca: PrivateCA,
    variable: str,
) -> None:
    env = dict(over_tls)
    env[variable] = str(private_ca.ca_dir if variable == "SSL_CERT_DIR" else private_ca.ca_pem)
    assert invoke("migrate", env=env).returncode == 0
    done = invoke("run", env=env)
    assert done.returncode == 0, done.stderr
    assert "notifications: 1 delivered" in done.stdout


def test_without_the_ca_tls_fails_and_says_how_to_trust_it(
    invoke: Invoke, over_tls: dict[str, str]
) -> None:
    env = dict(over_tls)
    assert invoke("migrate", env=env).returncode == 0
    done = invoke("run", env=env)
    assert done.returncode == 1
    assert "certificate verify failed" in done.stderr
    assert "SSL_CERT_FILE or REQUESTS_CA_BUNDLE" in done.stderr


def test_a_webhook_receiver_with_an_untrusted_certificate_is_not_sent_to(
    invoke: Invoke, over_tls: dict[str, str], tmp_path: Path, private_ca: PrivateCA
) -> None:
    env = dict(over_tls)
    env["SSL_CERT_FILE"] = str(private_ca.ca_pem)
    assert invoke("migrate", env=env).returncode == 0
    other = make_private_ca(tmp_path / "other-ca")  # the receiver's CA is not this one
    env["SSL_CERT_FILE"] = str(other.ca_pem)
    done = invoke("run", "--from-file", str(SAMPLE), env=env)
    assert done.returncode == 0, done.stderr
    assert "notifications: 1 failed" in done.stdout
    listed = invoke("notifications", env=env)
    assert "certificate verify failed" in listed.stdout


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR"])
def test_a_ca_bundle_that_is_not_there_is_bad_configuration(
    invoke: Invoke, tmp_path: Path, variable: str
) -> None:
    env = {"REGIONSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    done = invoke("migrate", env={**env, variable: str(tmp_path / "missing.pem")})
    assert_one_line_error(done, 2, variable, "missing.pem")


def test_a_ca_bundle_without_a_certificate_is_bad_configuration(
    invoke: Invoke, tmp_path: Path, private_ca: PrivateCA
) -> None:
    env = {
        "REGIONSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}",
        "SSL_CERT_FILE": str(private_ca.server_key),  # a key, not a certificate
    }
    assert_one_line_error(invoke("migrate", env=env), 2, "SSL_CERT_FILE", "PEM expected")


@pytest.mark.slow
def test_kaleyra_through_a_tls_inspecting_proxy_is_trusted_and_still_bounded(
    monkeypatch: pytest.MonkeyPatch, private_ca: PrivateCA, fake: FakeKaleyra
) -> None:
    """The proxy's CA in SSL_CERT_FILE, the proxy in HTTPS_PROXY; a drip through the proxy
    still ends at the fetch's deadline (the tunnel's socket is watched like a direct one)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with TlsFront(private_ca, _target(fake.url)) as front, ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        settings = Settings.from_env(
            {
                **fake_variables(fake),
                "KALEYRA_BASE_URL": front.url,
                "SSL_CERT_FILE": str(private_ca.ca_pem),
            }
        )
        client = KaleyraClient(settings.require_kaleyra(), retry=FAST)
        assert len(client.fetch().records) == 12
        assert proxy.tunnels == [front.url.removeprefix("https://")]

        fake.fail("drip:0.2", times=None)
        budget = RetryPolicy(attempts=1, total_seconds=2.0, connect_timeout=30, read_timeout=30)
        started = time.monotonic()
        with pytest.raises(TransientSourceError) as caught:
            KaleyraClient(settings.require_kaleyra(), retry=budget).fetch()
        assert time.monotonic() - started < 3.0
    assert caught.value.code == "timeout"
