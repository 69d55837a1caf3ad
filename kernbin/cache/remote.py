"""The Redis tier (``KERNBIN_REMOTE=redis://host:port/db``), via redis-py.

Values are ``b"KBR1"`` + a flag byte + a 32-byte HMAC-SHA256 + the ``.knb`` bytes. The
tier needs ``KERNBIN_CACHE_HMAC_KEY``: entries are signed on write over the cache key and
the bytes (an entry cannot be replayed under another key), and on read an entry without
a valid signature is rejected: a poisoned shared cache must not put foreign code on a GPU.
The ``.knb`` checksums catch corruption, not forgery, so there is no unsigned mode: a
store without a key is refused (:class:`RemoteConfigError`, rule ``"no-hmac-key"``), and
:meth:`Cache.from_env <kernbin.cache.Cache.from_env>` then runs local-only with one
:class:`RemoteDisabledWarning`. So does a malformed URL (rule ``"url"``) or a missing
redis-py (rule ``"redis-py"``).

Redis down or slow: every call has a short timeout; the first failure warns once
(:class:`RemoteUnavailableWarning`) and the tier is skipped for ``retry_after`` seconds, so the
local cache keeps working. Each call reports :data:`OK`, :data:`FAILED` (counted as
``remote_errors``) or :data:`SKIPPED` (not tried: the tier is resting; not an error).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import warnings
from urllib.parse import urlsplit

from ..errors import KernbinError, KernbinWarning

__all__ = ["RedisStore", "RejectedEntry", "RemoteConfigError", "RemoteDisabledWarning",
           "RemoteUnavailableWarning", "RemoteRejectedWarning", "check_url", "OK", "FAILED", "SKIPPED"]

_MAGIC = b"KBR1"
_SIGNED, _UNSIGNED = 1, 0
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
_SCHEMES = ("redis", "rediss", "unix")


class RejectedEntry(KernbinError):
    """A remote entry refused before its bytes were parsed. ``rule``: ``"format"`` (not a kernbin
    value), ``"truncated"``, ``"unsigned"`` or ``"signature"`` (HMAC mismatch)."""

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


class RemoteDisabledWarning(KernbinWarning):
    """The remote tier is off for this process; ``url``, ``rule`` and ``reason`` as in the
    :class:`RemoteConfigError` that turned it off. Issued once per process and configuration."""

    def __init__(self, error: RemoteConfigError):
        self.url, self.rule, self.reason = error.url, error.rule, error.reason
        super().__init__(f"kernbin: remote cache {error.url!r} disabled ({error.reason}); "
                         "using the local cache only")


class RemoteUnavailableWarning(KernbinWarning):
    """Redis could not be reached or answered with an error: ``url``, ``error`` (the exception),
    ``retry_after`` (seconds the tier is skipped). Issued once per store."""

    def __init__(self, url: str, error: BaseException, retry_after: float):
        self.url, self.error, self.retry_after = url, error, retry_after
        super().__init__(f"kernbin: remote cache {url} unavailable ({error}); using the local cache only "
                         f"(retrying every {retry_after:g} s)")


class RemoteRejectedWarning(KernbinWarning):
    """A remote entry was refused: ``key`` and ``rule`` (see :class:`RejectedEntry`)."""

    def __init__(self, key: str, error: RejectedEntry):
        self.key, self.rule, self.reason = key, error.rule, error.reason
        super().__init__(f"kernbin: rejected remote cache entry {key[:16]}: {error.reason}")


def check_url(url: str) -> None:
    """Raise :class:`RemoteConfigError` (rule ``"url"``) unless ``url`` is a usable Redis URL:
    ``redis://``, ``rediss://`` or ``unix://``, a numeric port, a numeric database."""
    try:
        u = urlsplit(url)
        u.port                              # ValueError for "notaport" or out of range
    except ValueError as e:
        raise RemoteConfigError(url, "url", f"not a Redis URL ({e})") from None
    if u.scheme not in _SCHEMES:
        raise RemoteConfigError(url, "url", "not a Redis URL: use redis://host:port/db, rediss://... or "
                                "unix:///path")
    if u.scheme != "unix":
        if not u.hostname:
            raise RemoteConfigError(url, "url", "no host: use redis://host:port/db")
        db = u.path.strip("/")
        if db and not db.isdigit():
            raise RemoteConfigError(url, "url", f"database {db!r} is not a number")
    elif not u.path:
        raise RemoteConfigError(url, "url", "no socket path: use unix:///path/to/redis.sock")


_disabled_warned: set = set()


def warn_disabled(error: RemoteConfigError) -> None:
    """One :class:`RemoteDisabledWarning` per process and (url, rule)."""
    if (error.url, error.rule) in _disabled_warned:
        return
    _disabled_warned.add((error.url, error.rule))
    warnings.warn(RemoteDisabledWarning(error), stacklevel=3)


class RedisStore:
    def __init__(self, url: str, hmac_key: bytes | None, timeout: float = 0.5,
                 retry_after: float = 30.0, prefix: str = "kernbin:v1:"):
        """Raises :class:`RemoteConfigError` for a malformed ``url``, an empty ``hmac_key`` or a
        missing redis-py. Connects lazily: an unreachable server is a :data:`FAILED` call, not an error."""
        check_url(url)
        if not hmac_key:
            raise RemoteConfigError(url, "no-hmac-key", "KERNBIN_CACHE_HMAC_KEY is not set: without it "
                                    "entries cannot be authenticated (anyone who can write to the Redis "
                                    "server could forge one)")
        try:
            import redis
        except ImportError:
            raise RemoteConfigError(url, "redis-py", "redis-py is not installed: pip install "
                                    "'kernbin[redis]'") from None
        self.url = url
        self.hmac_key = bytes(hmac_key)
        self.prefix = prefix
        self.retry_after = retry_after
        self._redis = redis
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                retry_on_timeout=False)
        except (ValueError, TypeError) as e:
            raise RemoteConfigError(url, "url", f"redis-py refuses it ({e})") from None
        self._down_until = 0.0
        self._warned = False

    # -- framing ------------------------------------------------------------------
    def _sign(self, key: str, data: bytes) -> bytes:
        """HMAC-SHA256 over the key and the bytes: an entry cannot be replayed under another key."""
        return hmac.new(self.hmac_key, key.encode() + b"\0" + data, hashlib.sha256).digest()

    def wrap(self, key: str, data: bytes) -> bytes:
        """The stored value for ``data`` under ``key``: magic, flag, HMAC over key and bytes, bytes."""
        return _MAGIC + bytes([_SIGNED]) + self._sign(key, data) + data

    def unwrap(self, key: str, value: bytes) -> bytes:
        """The ``.knb`` bytes of a stored value; :class:`RejectedEntry` unless it is signed with our key."""
        if len(value) < 5 or value[:4] != _MAGIC or value[4] not in (_SIGNED, _UNSIGNED):
            raise RejectedEntry("format", "not a kernbin remote entry")
        if value[4] != _SIGNED:
            raise RejectedEntry("unsigned", "entry is not signed")
        if len(value) < 37:
            raise RejectedEntry("truncated", "truncated signature")
        sig, data = value[5:37], value[37:]
        if not hmac.compare_digest(sig, self._sign(key, data)):
            raise RejectedEntry("signature", "HMAC signature mismatch")
        return data

    # -- calls ---------------------------------------------------------------------
    def _call(self, fn, *args):
        """``(result, OK)``, ``(None, FAILED)`` or ``(None, SKIPPED)`` while the tier rests after a failure."""
        if time.monotonic() < self._down_until:
            return None, SKIPPED
        try:
            return fn(*args), OK
        except (self._redis.exceptions.RedisError, OSError) as e:
            self._down_until = time.monotonic() + self.retry_after
            if not self._warned:
                self._warned = True
                warnings.warn(RemoteUnavailableWarning(self.url, e, self.retry_after), stacklevel=4)
            return None, FAILED

    def get(self, key: str) -> tuple[bytes | None, str]:
        """(value or None, :data:`OK` / :data:`FAILED` / :data:`SKIPPED`)."""
        return self._call(self._client.get, self.prefix + key)

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` signed; returns :data:`OK`, :data:`FAILED` or :data:`SKIPPED`."""
        return self._call(self._client.set, self.prefix + key, self.wrap(key, data))[1]

    def delete(self, key: str) -> str:
        """Delete the entry; returns :data:`OK`, :data:`FAILED` or :data:`SKIPPED`."""
        return self._call(self._client.delete, self.prefix + key)[1]
