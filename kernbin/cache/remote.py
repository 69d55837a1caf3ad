"""Remote tiers of the cache: what every one shares (signing, fail-safe calls, leases).

``KERNBIN_REMOTE`` names one or more tiers, whitespace-separated, each a URL:
``redis://host:port/db`` (``rediss://``, ``unix:///path``) is a :class:`~kernbin.cache.redis.RedisStore`,
``http://host:port/prefix`` (``https://``) an :class:`~kernbin.cache.http.HttpStore`.
:func:`open_remote` picks the class from the scheme; :func:`check_url` validates a URL.

Values are ``b"KBR1"`` + a flag byte + a 32-byte HMAC-SHA256 + the ``.knb`` bytes. A tier needs
``KERNBIN_CACHE_HMAC_KEY``: entries are signed on write over the cache key and the bytes (an
entry cannot be replayed under another key), and on read an entry without a valid signature is
rejected: a poisoned shared cache must not put foreign code on a GPU. The ``.knb`` checksums
catch corruption, not forgery, so there is no unsigned mode: a store without a key is refused
(:class:`RemoteConfigError`, rule ``"no-hmac-key"``), and
:meth:`Cache.from_env <kernbin.cache.Cache.from_env>` then leaves that tier out with one
:class:`RemoteDisabledWarning`. So does a malformed URL (rule ``"url"``) or a missing redis-py
(rule ``"redis-py"``), or a host name that is not a valid IDNA name (``a..b``, a label over 63
characters). A value longer than ``max_entry_size`` is never read whole: it is refused
(:class:`RejectedEntry`, rule ``"oversized"``). A value is read into one buffer of its size (a
``bytearray``, filled in place; :meth:`RemoteStore.unwrap` returns a view of it), so reading one
takes about its size in memory, not two or three copies of it. What a remote says in words (an
error message, a reason phrase) is escaped and cut (:func:`remote_text`) before it reaches a
warning or an exception's message: a server chooses it.

A tier down, slow or answering garbage: every call is bounded in time (and in the bytes it
reads); the first failure warns once (:class:`RemoteUnavailableWarning`) and the tier is skipped
for ``retry_after`` seconds, so the local cache keeps working. Each call reports :data:`OK`,
:data:`FAILED` (counted as ``remote_errors``) or :data:`SKIPPED` (not tried: the tier is
resting, or the value is larger than the tier takes; not an error); no exception of the tier's
client escapes a call. :class:`RemoteStore` holds that logic once; a tier implements ``_get``,
``_put`` and ``_delete``.

Leases (fleet-wide single flight) need an atomic "set if absent" with an expiry: Redis has it
(``SET NX PX``), plain HTTP does not, so only :class:`~kernbin.cache.redis.RedisStore` supports
them (:attr:`RemoteStore.supports_leases`). A lease value is signed like an entry (domain-separated)
and carries its holder, expiry and time to live, see :meth:`RemoteStore.lease_value`; a value that
fails verification, or whose expiry is long past, counts as no lease and is replaced.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import KernbinError, KernbinWarning

__all__ = ["RemoteStore", "Lease", "LeaseAttempt", "RejectedEntry", "RemoteConfigError", "RemoteCallError",
           "RemoteDisabledWarning", "RemoteUnavailableWarning", "RemoteRejectedWarning", "FleetWaitWarning",
           "check_url", "open_remote", "remote_text", "OK", "FAILED", "SKIPPED", "DEFAULT_MAX_ENTRY_SIZE",
           "MAX_REMOTE_TEXT"]

_MAGIC = b"KBR1"
_SIGNED, _UNSIGNED = 1, 0
_LEASE_MAGIC = b"KBL1"
_LEASE_MAX = 512                    # bytes: a longer lease value is not one of ours
LEASE_TTL_MIN, LEASE_TTL_MAX = 0.5, 3600.0   # seconds: a lease's time to live is clamped to this
_RENEW_KEEP = 3                     # renewals whose outcome is unknown, remembered (see Lease)
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
DEFAULT_MAX_ENTRY_SIZE = 256 << 20  # a remote value larger than this is refused unread
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_HTTP_SCHEMES = ("http", "https")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class RejectedEntry(KernbinError):
    """A remote value refused before its bytes were parsed. ``rule``: ``"format"`` (not a kernbin
    value), ``"truncated"``, ``"unsigned"``, ``"signature"`` (HMAC mismatch), ``"oversized"``
    (longer than the tier's ``max_entry_size``: not read); for lease values ``"lease-format"``,
    ``"lease-signature"``, ``"lease-expired"``."""

    def __init__(self, rule: str, reason: str):
        self.rule, self.reason = rule, reason
        super().__init__(reason)


class RemoteConfigError(KernbinError):
    """``KERNBIN_REMOTE`` cannot be used. ``url``; ``rule``: ``"url"`` (malformed), ``"no-hmac-key"``
    (``KERNBIN_CACHE_HMAC_KEY`` unset: unsigned entries could be forged) or ``"redis-py"`` (not
    installed); ``reason`` in words."""

    def __init__(self, url: str, rule: str, reason: str):
        self.url, self.rule, self.reason = url, rule, reason
        super().__init__(f"remote cache {url!r}: {reason}")


class RemoteCallError(KernbinError):
    """A remote answered, but not as the protocol allows (an HTTP 500, a redirect, a Redis reply of
    the wrong type). ``url``, ``status`` (the HTTP status, None when there is none), ``reason``.
    Handled like an unreachable tier: one warning, a rest period."""

    def __init__(self, url: str, status: int | None, reason: str):
        self.url, self.status, self.reason = url, status, remote_text(reason)
        super().__init__(f"{url}: {self.reason}")


class RemoteDisabledWarning(KernbinWarning):
    """The remote tier is off for this process; ``url``, ``rule`` and ``reason`` as in the
    :class:`RemoteConfigError` that turned it off. Issued once per process and configuration."""

    def __init__(self, error: RemoteConfigError):
        self.url, self.rule, self.reason = error.url, error.rule, error.reason
        super().__init__(f"kernbin: remote cache {error.url!r} disabled ({error.reason}); "
                         "using the local cache only")


class RemoteUnavailableWarning(KernbinWarning):
    """A remote tier could not be reached or answered with an error: ``url``, ``error`` (the
    exception), ``detail`` (its text as shown: escaped and cut, see :func:`remote_text`: a server
    chooses it), ``retry_after`` (seconds the tier is skipped). Issued once per store."""

    def __init__(self, url: str, error: BaseException, retry_after: float):
        self.url, self.error, self.retry_after = url, error, retry_after
        self.detail = remote_text(error)
        super().__init__(f"kernbin: remote cache {url} unavailable ({self.detail}); using the local cache only "
                         f"(retrying every {retry_after:g} s)")


class RemoteRejectedWarning(KernbinWarning):
    """A remote entry or lease value was refused: ``key`` and ``rule`` (see :class:`RejectedEntry`)."""

    def __init__(self, key: str, error: RejectedEntry):
        self.key, self.rule, self.reason = key, error.rule, remote_text(error.reason)
        super().__init__(f"kernbin: rejected remote cache entry {key[:16]}: {self.reason}")


class FleetWaitWarning(KernbinWarning):
    """A process waited ``waited`` seconds (its bound) for another host's build of ``key`` (lease
    held by ``holder``) and builds it itself."""

    def __init__(self, key: str, waited: float, holder: str | None):
        self.key, self.waited, self.holder = key, waited, holder
        super().__init__(f"kernbin: waited {waited:g} s for {holder or 'another host'} to build {key[:16]}; "
                         "building it here")


#: a remote's own text (an error message, an HTTP reason phrase) is cut to this many characters
#: before it reaches a warning, an exception message or a terminal
MAX_REMOTE_TEXT = 200


def remote_text(text, limit: int = MAX_REMOTE_TEXT) -> str:
    """``text`` from a remote (or its client), fit for a warning or stderr: control characters (escape
    sequences, newlines, NUL) shown escaped (``\\x1b``), then cut to ``limit`` characters, saying how
    many were left out. A hostile server cannot style, move or flood a terminal with it."""
    text = str(text)
    if len(text) > 4 * limit:                       # escaping may only lengthen what is kept
        text, cut = text[:4 * limit], len(text) - 4 * limit
    else:
        cut = 0
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        cut += len(text) - limit
        text = text[:limit]
    return f"{text}... ({cut} more characters)" if cut else text


def _redact(url: str) -> str:
    """``url`` without the password of its userinfo (for messages and statistics)."""
    try:
        u = urlsplit(url)
        if u.password is None:
            return url
        host = u.netloc.rpartition("@")[2]
        return urlunsplit((u.scheme, f"{u.username or ''}:***@{host}", u.path, u.query, u.fragment))
    except ValueError:
        return url


def _check_host(shown: str, host: str) -> None:
    """The host must encode as IDNA, as the resolver will encode it (``a..b``, a label longer than
    63 characters would fail every call with ``UnicodeError``)."""
    try:
        host.encode("idna")
    except (UnicodeError, ValueError) as e:
        raise RemoteConfigError(shown, "url", f"host {host!r} is not a valid host name ({e})") from None


def check_url(url: str) -> None:
    """Raise :class:`RemoteConfigError` (rule ``"url"``) unless ``url`` is a usable remote URL:
    ``redis://host:port/db`` (``rediss://``, ``unix:///path``; numeric port and database) or
    ``http(s)://host[:port]/prefix`` (no query, no fragment); the host a valid (IDNA) name."""
    try:
        u = urlsplit(url)
        u.port                              # ValueError for "notaport" or out of range
    except ValueError as e:
        raise RemoteConfigError(_redact(url), "url", f"not a remote cache URL ({e})") from None
    shown = _redact(url)
    if u.scheme in _HTTP_SCHEMES:
        if not u.hostname:
            raise RemoteConfigError(shown, "url", "no host: use http://host:port/prefix")
        _check_host(shown, u.hostname)
        if u.query or u.fragment:
            raise RemoteConfigError(shown, "url", "no query or fragment: use http://host:port/prefix")
        return
    if u.scheme not in _REDIS_SCHEMES:
        raise RemoteConfigError(shown, "url", "not a remote cache URL: use redis://host:port/db, rediss://..., "
                                "unix:///path, http://host:port/prefix or https://...")
    if u.scheme != "unix":
        if not u.hostname:
            raise RemoteConfigError(shown, "url", "no host: use redis://host:port/db")
        _check_host(shown, u.hostname)
        db = u.path.strip("/")
        if db and not db.isdigit():
            raise RemoteConfigError(shown, "url", f"database {db!r} is not a number")
    elif not u.path:
        raise RemoteConfigError(shown, "url", "no socket path: use unix:///path/to/redis.sock")


def open_remote(url: str, hmac_key: bytes | None, **kw) -> "RemoteStore":
    """The store for ``url`` (:class:`~kernbin.cache.redis.RedisStore` or
    :class:`~kernbin.cache.http.HttpStore`, by scheme); keyword arguments go to its constructor.
    Raises :class:`RemoteConfigError` as the constructors do."""
    check_url(url)
    if urlsplit(url).scheme in _HTTP_SCHEMES:
        from .http import HttpStore
        return HttpStore(url, hmac_key, **kw)
    from .redis import RedisStore
    return RedisStore(url, hmac_key, **kw)


_disabled_warned: set = set()


def warn_disabled(error: RemoteConfigError) -> None:
    """One :class:`RemoteDisabledWarning` per process and (url, rule)."""
    if (error.url, error.rule) in _disabled_warned:
        return
    _disabled_warned.add((error.url, error.rule))
    warnings.warn(RemoteDisabledWarning(error), stacklevel=3)


@dataclass(frozen=True)
class LeaseAttempt:
    """What :meth:`RemoteStore.acquire_lease` found. ``status``: :data:`OK` (then ``lease`` is ours,
    or None while ``holder`` holds a valid lease), :data:`FAILED` or :data:`SKIPPED` (no answer: act
    as if there were no remote). ``rejected``: an invalid lease value found (and replaced) on the way.
    ``takeover``: our lease replaced a value that was no valid lease (expired, forged, garbage), not a
    free key. ``expires_in``: while another holds it, the seconds its lease has left on the server
    (None when unknown): a lease found free later, before that time, was released, not expired."""

    status: str
    lease: "Lease | None" = None
    holder: str | None = None
    rejected: RejectedEntry | None = None
    takeover: bool = False
    expires_in: float | None = None


class RemoteStore:
    """A remote tier: signed values (:meth:`wrap` / :meth:`unwrap`), fail-safe calls (:meth:`get`,
    :meth:`put`, :meth:`delete`) and, where the tier supports them, leases. Subclasses implement
    ``_get(key) -> bytes | None`` (at most ``max_entry_size + 1`` bytes read; :class:`RejectedEntry`
    for a value it will not read), ``_put(key, value)`` and ``_delete(key)``; every exception they let
    through that is an ``OSError``, a :class:`RemoteCallError`, a ``UnicodeError`` or ``ValueError``
    (a host name the resolver cannot encode) or one of :attr:`_errors` makes the call :data:`FAILED`
    (a :class:`RejectedEntry` goes to the caller of :meth:`get`; :meth:`put` and :meth:`delete`
    report it as :data:`FAILED`)."""

    #: whether :meth:`acquire_lease` can work on this tier (an atomic set-if-absent with expiry)
    supports_leases = False
    #: exceptions of the client library that mean "this call failed" (besides those above)
    _errors: tuple = ()

    def __init__(self, url: str, hmac_key: bytes | None, *, retry_after: float = 30.0,
                 max_entry_size: int = DEFAULT_MAX_ENTRY_SIZE):
        """Raises :class:`RemoteConfigError` for a malformed ``url`` or an empty ``hmac_key``."""
        check_url(url)
        if not hmac_key:
            raise RemoteConfigError(_redact(url), "no-hmac-key", "KERNBIN_CACHE_HMAC_KEY is not set: without it "
                                    "entries cannot be authenticated (anyone who can write to the remote "
                                    "cache could forge one)")
        self.url = _redact(url)
        self.hmac_key = bytes(hmac_key)
        self.retry_after = retry_after
        self.max_entry_size = int(max_entry_size)
        self._down_until = 0.0
        self._warned = False

    # -- framing ------------------------------------------------------------------
    def _sign(self, key: str, data) -> bytes:
        """HMAC-SHA256 over the key and the bytes: an entry cannot be replayed under another key.
        (Fed in parts: the value is never copied to be signed.)"""
        h = hmac.new(self.hmac_key, key.encode() + b"\0", hashlib.sha256)
        h.update(data)
        return h.digest()

    def wrap(self, key: str, data) -> bytes:
        """The stored value for ``data`` under ``key``: magic, flag, HMAC over key and bytes, bytes."""
        return b"".join((_MAGIC, bytes([_SIGNED]), self._sign(key, data), data))

    def unwrap(self, key: str, value) -> memoryview:
        """The ``.knb`` bytes of a stored value (``bytes``, or the ``bytearray`` a tier read it into),
        as a view of ``value`` (no copy); :class:`RejectedEntry` unless it is signed with our key and
        no longer than ``max_entry_size``."""
        if len(value) > self.max_entry_size:
            raise RejectedEntry("oversized", f"value larger than {self.max_entry_size} bytes")
        view = memoryview(value).cast("B") if not isinstance(value, memoryview) else value.cast("B")
        if len(view) < 5 or view[:4] != _MAGIC or view[4] not in (_SIGNED, _UNSIGNED):
            raise RejectedEntry("format", "not a kernbin remote entry")
        if view[4] != _SIGNED:
            raise RejectedEntry("unsigned", "entry is not signed")
        if len(view) < 37:
            raise RejectedEntry("truncated", "truncated signature")
        sig, data = view[5:37], view[37:]
        if not hmac.compare_digest(bytes(sig), self._sign(key, data)):
            raise RejectedEntry("signature", "HMAC signature mismatch")
        return data

    # -- lease values -------------------------------------------------------------------
    def _lease_sig(self, key: str, payload: bytes) -> bytes:
        return hmac.new(self.hmac_key, b"kernbin-lease\0" + key.encode() + b"\0" + payload, hashlib.sha256).digest()

    def lease_value(self, key: str, ttl: float, holder: str) -> bytes:
        """A signed lease value: ``KBL1``, HMAC (over a lease-only prefix, the key and the payload),
        payload ``b"<expiry, ms since the epoch> <ttl, ms> <holder>"``. The expiry is in the signed
        part, so a copied value re-stored without a time to live stops counting once it has passed;
        so is the holder's ``ttl`` (clamped to [0.5, 3600] s), by which readers judge the value
        whatever their own setting."""
        ttl_ms = int(min(max(ttl, LEASE_TTL_MIN), LEASE_TTL_MAX) * 1000)
        payload = f"{int((time.time() + ttl) * 1000)} {ttl_ms} {holder}".encode()
        return _LEASE_MAGIC + self._lease_sig(key, payload) + payload

    def read_lease(self, key: str, value: bytes, ttl: float) -> tuple[str, float]:
        """``(holder, expiry)`` of a valid lease value; :class:`RejectedEntry` (rule ``"lease-format"``,
        ``"lease-signature"``, ``"lease-expired"``) otherwise. A lease is valid until one time to live
        after its expiry (clocks differ between hosts) and may claim at most ``max(10 * ttl, 300)``
        seconds ahead, ``ttl`` being the holder's (in the signed payload; ``ttl``, this reader's, for a
        value of an older kernbin that did not write it)."""
        if len(value) > _LEASE_MAX or len(value) < 38 or value[:4] != _LEASE_MAGIC:
            raise RejectedEntry("lease-format", "not a kernbin lease value")
        sig, payload = value[4:36], value[36:]
        if not hmac.compare_digest(sig, self._lease_sig(key, payload)):
            raise RejectedEntry("lease-signature", "lease value: HMAC signature mismatch")
        try:                                # signed by the fleet: decoded leniently (a holder's name)
            parts = payload.decode("utf-8", "replace").split(" ", 2)
            expiry = int(parts[0]) / 1000
            if len(parts) == 3 and parts[1].isdigit():
                ttl, holder = min(max(int(parts[1]) / 1000, LEASE_TTL_MIN), LEASE_TTL_MAX), parts[2]
            else:                           # "<expiry> <holder>": written by an older kernbin
                holder = payload.decode("utf-8", "replace").split(" ", 1)[1]
        except (ValueError, IndexError, OverflowError):     # (a huge number: int / 1000 overflows)
            raise RejectedEntry("lease-format", "lease value: malformed payload") from None
        now = time.time()
        if not now - ttl <= expiry <= now + max(10 * ttl, 300.0):
            raise RejectedEntry("lease-expired", "lease value: expired, or expiring implausibly late")
        return holder, expiry

    # -- calls ---------------------------------------------------------------------
    def _call(self, fn, *args):
        """``(result, OK)``, ``(None, FAILED)`` or ``(None, SKIPPED)`` while the tier rests after a failure.
        :class:`RejectedEntry` raised by ``fn`` goes to the caller (the tier works; the value is bad)."""
        if time.monotonic() < self._down_until:
            return None, SKIPPED
        try:
            return fn(*args), OK
        except RejectedEntry:
            raise
        except (RemoteCallError, OSError, UnicodeError, ValueError, *self._errors) as e:
            self._failed(e)
            return None, FAILED

    def _failed(self, error: BaseException, rest: bool = True) -> None:
        """A call failed with ``error``: rest the tier (unless ``rest`` is false: lease renewals and
        releases do not), warn once, and let the tier drop what the failure may have left broken."""
        if rest:
            self._down_until = time.monotonic() + self.retry_after
        self._after_failure()
        if not self._warned:
            self._warned = True
            warnings.warn(RemoteUnavailableWarning(self.url, error, self.retry_after), stacklevel=5)

    def _after_failure(self) -> None:
        """Called after a failed call (a tier closes its idle connections here)."""

    @staticmethod
    def _check_key(key: str) -> None:
        if not _KEY_RE.match(key):
            raise KernbinError(f"bad cache key {key!r}")

    def get(self, key: str) -> tuple[bytes | None, str]:
        """(value or None, :data:`OK` / :data:`FAILED` / :data:`SKIPPED`). Raises :class:`RejectedEntry`
        (rule ``"oversized"``, ``"format"``) for a value the tier refuses to read."""
        self._check_key(key)
        return self._call(self._get, key)

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` signed; returns :data:`OK`, :data:`FAILED` or :data:`SKIPPED` (resting, or the
        value is larger than ``max_entry_size``: readers would refuse it)."""
        self._check_key(key)
        value = self.wrap(key, data)
        if len(value) > self.max_entry_size:
            return SKIPPED
        return self._write(self._put, key, value)

    def delete(self, key: str) -> str:
        """Delete the entry; returns :data:`OK`, :data:`FAILED` or :data:`SKIPPED`."""
        self._check_key(key)
        return self._write(self._delete, key)

    def _write(self, fn, *args) -> str:
        """The status of a call that returns nothing: a :class:`RejectedEntry` there (no value was
        asked for) is a failed call, never an exception."""
        try:
            return self._call(fn, *args)[1]
        except RejectedEntry as e:
            self._failed(e)
            return FAILED

    def acquire_lease(self, key: str, ttl: float) -> LeaseAttempt:
        """Try to take the build lease on ``key`` for ``ttl`` seconds (see :class:`LeaseAttempt`).
        This tier has no leases: always ``LeaseAttempt(SKIPPED)``."""
        return LeaseAttempt(SKIPPED)

    def _renew_lease(self, lease: "Lease", value: bytes) -> bool:
        """Replace the lease's value by ``value`` (a later expiry) if it is still ours (any of
        :meth:`Lease.values`); raises what the tier's client raises (called by :class:`Lease`, not
        through :meth:`_call`: the tier's rest period does not stop renewals)."""
        raise NotImplementedError

    def _release_lease(self, lease: "Lease") -> bool:
        """Delete the lease if it is still ours (compare and delete, against any of
        :meth:`Lease.values`)."""
        raise NotImplementedError


def holder_id() -> str:
    """Who holds a lease: host, process, and a random part (unique per lease). The host name is cut
    to 64 printable ASCII characters (others become ``?``), as every reader must parse it."""
    host = re.sub(r"[^!-~]", "?", socket.gethostname())[:64] or "?"
    return f"{host}:{os.getpid()}:{os.urandom(6).hex()}"


class Lease:
    """A build lease held on a remote tier. :meth:`start` renews it every ``ttl / 3`` seconds from a
    daemon thread while the build runs; :meth:`release` stops that and deletes the lease if it is
    still ours. A holder that dies stops renewing: the lease expires ``ttl`` seconds later at most
    and a waiter takes it over. A lease lost meanwhile (``lost``: taken over after a stall) only
    means another host may build the same key too; the result is the same.

    Renewals and the release are direct calls, not subject to the tier's rest period (a lease must
    not lapse because some other call timed out). A renewal that fails is retried at the next tick;
    the server may have applied it before the failure was seen (a timeout), so its value is
    remembered: the next renewal, or the release, accepts the last confirmed value or any of the
    last few unconfirmed ones (:meth:`values`), and so adopts the one the server holds. Failed
    renewals and releases warn once (:class:`RemoteUnavailableWarning`) and call ``on_error``."""

    def __init__(self, store: RemoteStore, key: str, value: bytes, ttl: float, holder: str):
        self.store, self.key, self.ttl, self.holder = store, key, ttl, holder
        self.value = value                  # the value the server is known to hold (last confirmed)
        self._unconfirmed: list[bytes] = []  # renewals sent that may or may not have been applied
        self.lost = False
        self.on_error = None                # called (no arguments) for each failed renewal or release
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def values(self) -> list[bytes]:
        """Every value the server may hold for this lease: the confirmed one, then the unconfirmed."""
        return [self.value, *self._unconfirmed]

    def start(self, on_error=None) -> "Lease":
        """Start renewing in the background; ``on_error``: see the class."""
        if on_error is not None:
            self.on_error = on_error
        self._thread = threading.Thread(target=self._renew_loop, name=f"kernbin-lease-{self.key[:8]}", daemon=True)
        self._thread.start()
        return self

    def _error(self, error: BaseException) -> None:
        self.store._failed(error, rest=False)
        if self.on_error is not None:
            try:
                self.on_error()
            except Exception:                 # statistics only
                pass

    def _renew_loop(self) -> None:
        period = self.ttl / 3
        next_at = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            with self._lock:
                if self._stop.is_set() or not self._renew_once():
                    return
            next_at = max(next_at + period, time.monotonic())   # late (a slow call): renew at once

    def _renew_once(self) -> bool:
        """One renewal; False when the lease turned out to be lost."""
        new = self.store.lease_value(self.key, self.ttl, self.holder)
        try:
            ok = self.store._renew_lease(self, new)
        except Exception as e:                # whatever the tier's client raises: never kill the thread
            self._unconfirmed = (self._unconfirmed + [new])[-_RENEW_KEEP:]
            self._error(e)
            return True
        if not ok:
            self.lost = True
            return False
        self.value, self._unconfirmed = new, []
        return True

    def release(self) -> str:
        """Stop renewing and delete the lease if it is still ours: :data:`OK` or :data:`FAILED` (the
        lease then simply expires)."""
        self._stop.set()
        with self._lock:
            if self.lost:
                return OK
            try:
                self.store._release_lease(self)
            except Exception as e:
                self._error(e)
                return FAILED
            return OK


def __getattr__(name: str):
    """``RedisStore`` and ``HttpStore`` are importable from here too (loaded on first use)."""
    if name == "RedisStore":
        from .redis import RedisStore
        return RedisStore
    if name == "HttpStore":
        from .http import HttpStore
        return HttpStore
    raise AttributeError(name)
