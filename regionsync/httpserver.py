"""A small threaded HTTP server that a hostile or broken client cannot starve.

Used by the daemon's ``/healthz`` and ``/metrics`` and by the fake Kaleyra API and webhook
receiver. The standard library's ``ThreadingHTTPServer`` starts a thread per connection and
waits for each one without limit: idle or half-sent requests pile up until the process runs
out of threads or file descriptors, and then everything else in the process (the sync's
database connections included) fails with it. Here:

- at most ``max_connections`` connections are served at once; one more is closed at once;
- each read waits at most ``idle_timeout`` seconds, and a connection lives at most
  ``lifetime`` seconds in all (a request dripped a byte at a time is dropped too);
- when ``accept()`` fails for want of file descriptors the server pauses briefly instead
  of spinning, and it never prints a traceback.

See docs/operations.md, *Health and metrics*, for the bind address.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

logger = structlog.get_logger("regionsync.httpserver")

#: How long accepting waits after running out of file descriptors.
EMFILE_PAUSE = 0.1
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class BoundedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection limit and a wall-clock limit per connection."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = 32,
        idle_timeout: float = 5.0,
        lifetime: float = 15.0,
    ) -> None:
        if max_connections < 1 or not idle_timeout > 0 or not lifetime > 0:
            raise ValueError("max_connections, idle_timeout and lifetime must be positive")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as error:
            if error.errno in _OUT_OF_DESCRIPTORS:
                time.sleep(EMFILE_PAUSE)  # the listening socket stays readable: do not spin
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        request.settimeout(self.idle_timeout)
        with self._open_lock:
            self._open[request] = time.monotonic() + self.lifetime
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._open_lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: cut connections past their lifetime."""
        now = time.monotonic()
        with self._open_lock:
            expired = [sock for sock, deadline in self._open.items() if deadline <= now]
        for sock in expired:
            with contextlib.suppress(OSError):  # wakes the handler's blocked read or write
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished or misbehaved is not worth a traceback on stderr."""
        logger.debug("http.connection_error", client=str(client_address))


class ServerThread:
    """A :class:`BoundedHTTPServer` serving from a daemon thread until :meth:`stop`."""

    def __init__(self, server: BoundedHTTPServer, *, name: str, poll_interval: float = 0.2) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": poll_interval},
            name=name,
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


__all__ = ["BoundedHTTPServer", "ServerThread"]
