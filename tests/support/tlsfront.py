"""A private CA made for one test, and TLS on loopback in front of a plain HTTP server.

The CA and the server's certificate (for ``127.0.0.1``) come from the ``openssl`` command,
as an operator would make them; the front terminates TLS with that certificate and forwards
the bytes to the fake Kaleyra server or webhook receiver, which speak plain HTTP.
"""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class PrivateCA:
    """A CA's certificate (what clients must trust: as a PEM file, and as a directory laid
    out by ``openssl rehash``) and a server certificate it signed."""

    ca_pem: Path
    ca_dir: Path
    server_pem: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    program = shutil.which("openssl")
    assert program is not None, "the openssl command makes the test's CA"
    subprocess.run([program, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_private_ca(directory: Path) -> PrivateCA:
    """A new CA in ``directory`` and a certificate it signed for ``127.0.0.1``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=regionsync test private CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    certs = directory / "certs"
    certs.mkdir()
    (certs / "private-ca.pem").write_bytes((directory / "ca.pem").read_bytes())
    _openssl("rehash", str(certs), cwd=directory)
    return PrivateCA(
        directory / "ca.pem", certs, directory / "server.pem", directory / "server.key"
    )


class _LoopbackServer:
    """Accepts connections on a loopback port of its own, each served by ``_serve`` in a
    thread, until the ``with`` block ends."""

    name = "loopback-server"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=self.name, daemon=True)

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(client,), name=f"{self.name}-pair", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class TlsFront(_LoopbackServer):
    """``https://127.0.0.1:port`` serving ``ca``'s server certificate, forwarding to
    ``target`` in plain HTTP; a client that does not trust the CA fails its handshake."""

    name = "tls-front"

    def __init__(self, ca: PrivateCA, target: tuple[str, int]) -> None:
        self.target = target
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(ca.server_pem, ca.server_key)
        super().__init__()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            tls = self._context.wrap_socket(client, server_side=True)
        except OSError:  # the client refused the certificate, or went away
            client.close()
            return
        with tls, socket.create_connection(self.target, timeout=10) as upstream:
            _copy_both_ways(tls, upstream)


class ConnectProxy(_LoopbackServer):
    """An HTTP proxy on loopback that only tunnels (``CONNECT``), as a corporate proxy does
    for ``https://``; :attr:`tunnels` lists the ``host:port`` of each tunnel it opened."""

    name = "connect-proxy"

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _copy_both_ways(client, upstream)


def _copy_both_ways(one: socket.socket, other: socket.socket) -> None:
    """Copy both ways until either side closes; a TLS socket may hold decrypted bytes that
    ``select`` cannot see (``pending()``), so those are read without waiting for it."""
    with selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ)
        selector.register(other, selectors.EVENT_READ)
        with contextlib.suppress(OSError):
            while True:
                ready = [key.fileobj for key, _ in selector.select(timeout=1)]
                for side in (one, other):
                    if isinstance(side, ssl.SSLSocket) and side.pending() and side not in ready:
                        ready.append(side)
                for source in ready:
                    assert isinstance(source, socket.socket)
                    data = source.recv(65536)
                    if not data:
                        return
                    (other if source is one else one).sendall(data)
