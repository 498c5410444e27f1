"""HTTP attempts that end on time: a wall-clock budget per attempt, and abandonment at shutdown.

requests' ``timeout`` bounds each socket operation, not the answer: a proxy that drips
one byte a second never trips it, and a hung Prometheus holds a thread for as long as the
read timeout allows, however often the daemon is asked to stop. Here every attempt knows
the connection it is using (the connection pools below tell it), so a timer at the end of
its budget, or ``abort_all`` at shutdown, shuts that socket down. The blocked read then
returns at once, in whatever phase it was (connect, headers, body), and the caller learns
why from ``Attempt.cut``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Attempt:
    """One HTTP exchange that a timer or another thread may cut off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self._done = False
        self.cut: str | None = None  # why it was cut off: "deadline" or "shutdown"

    def use(self, connection: HTTPConnection) -> None:
        """Called from the attempt's own thread whenever it takes or (re)connects a connection."""
        with self._lock:
            self._connection = connection
            if self.cut is not None:
                _shut(connection)

    def cut_off(self, why: str) -> None:
        with self._lock:
            if self._done or self.cut is not None:
                return
            self.cut = why
            if self._connection is not None:
                _shut(self._connection)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._connection = None


def _shut(connection: HTTPConnection) -> None:
    """Wake any thread blocked on this connection's socket (TLS included: the raw socket)."""
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _register(connection: HTTPConnection) -> None:
    attempt = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.use(connection)


class _Connection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)


class _TlsConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _register(connection)
        return connection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _register(connection)
        return connection


_POOLS = {"http": _Pool, "https": _TlsPool}


class AbortableAdapter(HTTPAdapter):
    """requests' adapter with pools whose connections report to the current Attempt."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class Attempts:
    """The attempts in flight, so that shutdown can abandon all of them at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Attempt] = set()
        self.closed = threading.Event()

    @contextmanager
    def attempt(self, budget: float) -> Iterator[Attempt]:
        """Run the block as one attempt, cut off after ``budget`` seconds or at ``abort_all``."""
        attempt = Attempt()
        timer = threading.Timer(budget, attempt.cut_off, args=("deadline",))
        timer.daemon = True
        with self._lock:
            self._live.add(attempt)
        if self.closed.is_set():
            attempt.cut_off("shutdown")
        _current.attempt = attempt
        timer.start()
        try:
            yield attempt
        finally:
            timer.cancel()
            attempt.finish()
            _current.attempt = None
            with self._lock:
                self._live.discard(attempt)

    def abort_all(self) -> None:
        """Cut off every attempt in flight and refuse new ones."""
        self.closed.set()
        with self._lock:
            live = list(self._live)
        for attempt in live:
            attempt.cut_off("shutdown")
