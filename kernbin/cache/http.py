"""The HTTP tier (``KERNBIN_REMOTE=http://host:port/prefix`` or ``https://``), stdlib only.

The protocol of ccache's HTTP storage and Bazel's HTTP remote cache: an entry is the resource
``<prefix>/<key>``; ``GET`` reads it (``404``: a miss), ``PUT`` writes it, ``DELETE`` removes it.
Any server that stores what is PUT serves: nginx with ``dav_methods PUT DELETE``, Apache
``mod_dav``, an object store behind a gateway. Values are the signed entries of
:mod:`kernbin.cache.remote`; a server (or anyone who can write to it) can withhold entries, never
forge them. ``http://user:password@host/...`` sends Basic authentication (use ``https://``).

Bounded in time and size: connecting has its own timeout (``connect_timeout``), and each request
as a whole (sending, the status line and headers, the body) has a deadline ``timeout`` seconds
away, enforced on every read from the socket. A response is never read past
``max_entry_size + 1`` bytes: a larger ``Content-Length`` on a ``GET`` that found the entry (200)
is refused without reading the body (:class:`~kernbin.cache.remote.RejectedEntry`, rule
``"oversized"``), so is a body that grows past it. A body is read in place (``readinto``) into one
``bytearray``: of the announced length, or grown a chunk at a time for a chunked body, so a value
takes about its size in memory while it is read (``benchmarks/remote_memory.py``). Any other answer's body (a ``201`` to a ``PUT``,
a ``404`` page) is read up to 64 KiB to keep the connection; a longer one drops the connection
and is ignored (a success status) or a failure (any other).
Header lines and counts are bounded by :mod:`http.client`. Redirects are not followed. A failure
(refused connection, timeout, a ``5xx``, a redirect, a malformed response) warns once and rests the
tier, like Redis. Connections are kept alive, one per thread (and never shared across ``fork``).

No leases: plain HTTP has no atomic "create if absent, with an expiry" (nginx's DAV module ignores
``If-None-Match: *`` on ``PUT``), nor compare-and-delete, so a dead holder's lease could not expire
and could not be taken over safely. Fleet-wide single flight needs a Redis tier in the chain
(``KERNBIN_REMOTE="redis://... https://..."``); the HTTP tier then just stores entries.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import threading
import time
import weakref
from urllib.parse import quote, unquote, urlsplit

from .remote import DEFAULT_MAX_ENTRY_SIZE, RejectedEntry, RemoteCallError, RemoteStore

__all__ = ["HttpStore"]

_DRAIN = 64 << 10          # an error response's body is read (to keep the connection) up to this
_CHUNK = 1 << 20


class _DeadlineReader(io.RawIOBase):
    """Reads from the socket, each ``recv`` bounded by the time left until the request's deadline."""

    def __init__(self, owner: "_DeadlineSocket"):
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self._owner.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("HTTP request deadline passed")
        sock = self._owner.sock
        sock.settimeout(left)
        return sock.recv_into(buf)


class _DeadlineSocket:
    """A connection's socket whose reads (through ``makefile``, as :mod:`http.client` does them) stop
    at ``deadline``; everything else is the socket's own."""

    def __init__(self, sock):
        self.sock = sock
        self.deadline = float("inf")

    def arm(self, timeout: float) -> None:
        """Start a request: it must be over in ``timeout`` seconds (sending is bounded by it too)."""
        self.deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)

    def makefile(self, mode: str = "rb", *args, **kw):
        return io.BufferedReader(_DeadlineReader(self))

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _fill(resp, buf: bytearray, at: int, n: int) -> int:
    """Read up to ``n`` bytes of ``resp``'s body into ``buf[at:at + n]`` (looping over short reads);
    the count read, less than ``n`` only at the end of the body."""
    done = 0
    while done < n:
        view = memoryview(buf)[at + done:at + n]
        try:
            got = resp.readinto(view)
        finally:
            view.release()
        if not got:
            break
        done += got
    return done


def _close_all(conns: set) -> None:
    for conn in list(conns):
        try:
            conn.close()
        except OSError:
            pass
    conns.clear()


class HttpStore(RemoteStore):
    """Signed entries as ``<prefix>/<key>`` on an HTTP(S) server (see the module docstring)."""

    supports_leases = False
    _errors = (http.client.HTTPException,)

    def __init__(self, url: str, hmac_key: bytes | None, *, connect_timeout: float = 0.5, timeout: float = 5.0,
                 retry_after: float = 30.0, max_entry_size: int = DEFAULT_MAX_ENTRY_SIZE, ssl_context=None):
        """Raises :class:`~kernbin.cache.remote.RemoteConfigError` for a malformed ``url`` or an empty
        ``hmac_key``. Connects lazily. ``ssl_context`` (https): default, the system's trusted CAs."""
        super().__init__(url, hmac_key, retry_after=retry_after, max_entry_size=max_entry_size)
        u = urlsplit(url)
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname, u.port
        self._base = quote(unquote(u.path).rstrip("/"), safe="/") + "/"
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._headers = {"User-Agent": "kernbin"}
        if u.username is not None or u.password is not None:
            cred = f"{unquote(u.username or '')}:{unquote(u.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        self._ssl = ssl_context
        self._local = threading.local()
        self._open: set = set()                   # every thread's connection, closed with the store
        weakref.finalize(self, _close_all, self._open)

    # -- connections ------------------------------------------------------------------
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, opened if needed; True when it was already open (may be stale)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and conn.sock is not None:
            return conn, True
        if self._https:
            import ssl
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout)
        self._local.conn, self._local.pid = None, os.getpid()
        conn.connect()
        conn.sock = _DeadlineSocket(conn.sock)
        self._local.conn = conn
        self._open.add(conn)
        return conn, False

    def close(self) -> None:
        """Close every connection of this store (they reopen on the next call)."""
        _close_all(self._open)

    def _drop(self) -> None:
        """Close this thread's connection (after an error, or a body left unread)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            self._open.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _request(self, method: str, key: str, body: bytes | None = None):
        """Send one request; returns ``(response, connection)`` with the headers read. A kept-alive
        connection the server has closed meanwhile is retried once on a fresh one."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        for attempt in (0, 1):
            conn, reused = self._connection()
            conn.sock.arm(self.timeout)
            try:
                conn.request(method, self._base + key, body=body, headers=headers)
                return conn.getresponse(), conn
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.BadStatusLine):
                self._drop()
                if not reused or attempt:
                    raise
            except BaseException:
                self._drop()
                raise
        raise AssertionError("unreachable")

    def _read_body(self, resp, limit: int) -> bytearray | None:
        """The body, at most ``limit`` bytes, read in place into one buffer (``readinto``: no chunk list
        joined, no copy); None (the caller drops the connection) when there are more. With a
        ``Content-Length`` the buffer is allocated once at that size; without one (chunked, or up to
        the close) it grows a chunk at a time and reading stops one byte past ``limit``."""
        if resp.length is not None:
            if resp.length > limit:
                return None
            if resp.length == 0:               # (a 204): read() marks the response done
                resp.read()
                return bytearray()
            buf = bytearray(resp.length)
            n = _fill(resp, buf, 0, len(buf))
            if n < len(buf):                   # the server closed early
                raise http.client.IncompleteRead(bytes(0), len(buf) - n)
            return buf
        buf, n = bytearray(), 0
        while True:
            want = min(_CHUNK, limit + 1 - n)
            del buf[n:]
            buf.extend(bytes(want))
            got = _fill(resp, buf, n, want)
            n += got
            if n > limit:
                return None
            if got < want:                      # end of the body
                del buf[n:]
                return buf

    def _finish(self, resp, ok: tuple, what: str) -> bytearray | bytes | None:
        """The body of an answer whose status is in ``ok`` (bounded); RemoteCallError for another status.
        Only a value (``GET`` 200) longer than ``max_entry_size`` is :class:`RejectedEntry`; another
        answer's body over 64 KiB is not read (the connection is dropped): ``b""`` for a status in ``ok``."""
        entry = resp.status == 200 and what == "GET"
        try:
            body = self._read_body(resp, self.max_entry_size if entry else _DRAIN)
        except BaseException:
            self._drop()
            raise
        if body is None:
            self._drop()
            if entry:
                raise RejectedEntry("oversized", f"value larger than {self.max_entry_size} bytes (not read)")
            body = b""
        elif resp.will_close:
            self._drop()
        if resp.status not in ok:
            raise RemoteCallError(self.url, resp.status, f"{what} answered {resp.status} {resp.reason}")
        return body

    # -- entries ----------------------------------------------------------------------
    def _get(self, key: str) -> bytearray | None:
        resp, _ = self._request("GET", key)
        if resp.status in (404, 410):
            self._finish(resp, (404, 410), "GET")
            return None
        return self._finish(resp, (200,), "GET")       # an empty body is refused by unwrap ("format")

    def _put(self, key: str, value: bytes) -> None:
        resp, _ = self._request("PUT", key, value)
        self._finish(resp, (200, 201, 204), "PUT")

    def _delete(self, key: str) -> None:
        # 404: already gone; 405 / 501: the server does not delete (the next put overwrites it)
        resp, _ = self._request("DELETE", key)
        self._finish(resp, (200, 202, 204, 404, 405, 501), "DELETE")
