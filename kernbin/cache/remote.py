"""The Redis tier (``KERNBIN_REMOTE=redis://host:port/db``), via redis-py.

Values are ``b"KBR1"`` + a flag byte + (32-byte HMAC-SHA256 when signed) + the
``.knb`` bytes. With ``KERNBIN_CACHE_HMAC_KEY`` set, entries are signed on write over
the cache key and the bytes (an entry cannot be replayed under another key), and on
read an entry without a valid signature is rejected: a poisoned shared cache must
not put foreign code on a GPU. Without a key, entries are still verified by their
``.knb`` checksums, which catch corruption but not a deliberate forgery.

Redis down or slow: every call has a short timeout; the first failure warns once and
the tier is skipped for ``retry_after`` seconds, so the local cache keeps working.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import warnings

from ..errors import KernbinError, KernbinWarning

__all__ = ["RedisStore", "RejectedEntry"]

_MAGIC = b"KBR1"
_SIGNED, _UNSIGNED = 1, 0


class RejectedEntry(KernbinError):
    """A remote entry whose signature is missing or wrong."""


class RedisStore:
    def __init__(self, url: str, hmac_key: bytes | None = None, timeout: float = 0.5,
                 retry_after: float = 30.0, prefix: str = "kernbin:v1:"):
        try:
            import redis
        except ImportError:
            raise KernbinError("KERNBIN_REMOTE needs redis-py: pip install 'kernbin[redis]'") from None
        self.url = url
        self.hmac_key = hmac_key
        self.prefix = prefix
        self.retry_after = retry_after
        self._redis = redis
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                            retry_on_timeout=False)
        self._down_until = 0.0
        self._warned = False

    # -- framing ------------------------------------------------------------------
    def _sign(self, key: str, data: bytes) -> bytes:
        return hmac.new(self.hmac_key, key.encode() + b"\0" + data, hashlib.sha256).digest()

    def wrap(self, key: str, data: bytes) -> bytes:
        if self.hmac_key:
            return _MAGIC + bytes([_SIGNED]) + self._sign(key, data) + data
        return _MAGIC + bytes([_UNSIGNED]) + data

    def unwrap(self, key: str, value: bytes) -> bytes:
        """The ``.knb`` bytes of a stored value; RejectedEntry when the signature fails."""
        if len(value) < 5 or value[:4] != _MAGIC or value[4] not in (_SIGNED, _UNSIGNED):
            raise RejectedEntry("not a kernbin remote entry")
        if value[4] == _SIGNED:
            if len(value) < 37:
                raise RejectedEntry("truncated signature")
            sig, data = value[5:37], value[37:]
            if self.hmac_key and not hmac.compare_digest(sig, self._sign(key, data)):
                raise RejectedEntry("HMAC signature mismatch")
            return data
        if self.hmac_key:
            raise RejectedEntry("entry is not signed and KERNBIN_CACHE_HMAC_KEY is set")
        return value[5:]

    # -- calls ---------------------------------------------------------------------
    def _call(self, fn, *args):
        if time.monotonic() < self._down_until:
            return None, False
        try:
            return fn(*args), True
        except (self._redis.exceptions.ConnectionError, self._redis.exceptions.TimeoutError, OSError) as e:
            self._down_until = time.monotonic() + self.retry_after
            if not self._warned:
                self._warned = True
                warnings.warn(f"kernbin: remote cache {self.url} unavailable ({e}); using the local "
                              f"cache only (retrying every {self.retry_after:g} s)", KernbinWarning,
                              stacklevel=4)
            return None, False
        except self._redis.exceptions.RedisError as e:
            self._down_until = time.monotonic() + self.retry_after
            if not self._warned:
                self._warned = True
                warnings.warn(f"kernbin: remote cache {self.url} error ({e}); using the local cache only",
                              KernbinWarning, stacklevel=4)
            return None, False

    def get(self, key: str) -> tuple[bytes | None, bool]:
        """(value or None, whether the call reached Redis)."""
        return self._call(self._client.get, self.prefix + key)

    def put(self, key: str, data: bytes) -> bool:
        return self._call(self._client.set, self.prefix + key, self.wrap(key, data))[1]

    def delete(self, key: str) -> bool:
        return self._call(self._client.delete, self.prefix + key)[1]
