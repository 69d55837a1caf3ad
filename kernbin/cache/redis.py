"""The Redis tier (``KERNBIN_REMOTE=redis://host:port/db``, ``rediss://``, ``unix:///path``), via redis-py.

Entries live at ``kernbin:v1:<key>`` (signed values, see :mod:`kernbin.cache.remote`); a read
fetches at most ``max_entry_size + 1`` bytes (``GETRANGE``), so a huge value is refused unread.

Leases for fleet-wide single flight live at ``kernbin:v1:<key>:lease``: taken with
``SET NX PX <ttl>``, renewed and released by compare-and-set / compare-and-delete Lua scripts
(only the holder's exact value is replaced or deleted). A value there that is not a valid lease
(wrong type, unsigned, forged, long expired) is replaced atomically, only if it is still the
value that was judged.
"""

from __future__ import annotations

from .remote import (OK, Lease, LeaseAttempt, RejectedEntry, RemoteConfigError, RemoteStore, _LEASE_MAX,
                     _redact, holder_id)

__all__ = ["RedisStore"]

# -> {1, ""} taken (free), {2, ""} taken (replaced ARGV[3], judged invalid), {3, ""} taken (the key held
#    something not a string), {0, value} held (value cut to ARGV[4] + 1 bytes, for the caller to judge)
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ''} end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return {3, ''}
end
local cur = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[4]))
if ARGV[5] == '1' and cur == ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return {2, ''} end
return {0, cur}
"""
_RENEW = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]); return 1
end
return 0
"""
_RELEASE = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore(RemoteStore):
    """Signed entries and leases in Redis. Every call has a ``timeout`` (seconds) for connecting and
    for the answer; failures are handled by :class:`~kernbin.cache.remote.RemoteStore`."""

    supports_leases = True

    def __init__(self, url: str, hmac_key: bytes | None, timeout: float = 0.5,
                 retry_after: float = 30.0, prefix: str = "kernbin:v1:", **kw):
        """Raises :class:`RemoteConfigError` for a malformed ``url``, an empty ``hmac_key`` or a
        missing redis-py. Connects lazily: an unreachable server is a :data:`FAILED` call, not an error.
        ``kw``: ``max_entry_size``."""
        super().__init__(url, hmac_key, retry_after=retry_after, **kw)
        try:
            import redis
        except ImportError:
            raise RemoteConfigError(self.url, "redis-py", "redis-py is not installed: pip install "
                                    "'kernbin[redis]'") from None
        self.prefix = prefix
        self._redis = redis
        self._errors = (redis.exceptions.RedisError,)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                retry_on_timeout=False)
        except (ValueError, TypeError) as e:
            raise RemoteConfigError(_redact(url), "url", f"redis-py refuses it ({e})") from None
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    # -- entries --------------------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        try:
            value = self._client.getrange(self.prefix + key, 0, self.max_entry_size)
        except self._redis.exceptions.ResponseError as e:
            if str(e).startswith("WRONGTYPE"):
                raise RejectedEntry("format", "not a kernbin remote entry (not a string)") from None
            raise
        return bytes(value) if value else None       # GETRANGE of a missing key is b""

    def _put(self, key: str, value: bytes) -> None:
        self._client.set(self.prefix + key, value)

    def _delete(self, key: str) -> None:
        self._client.delete(self.prefix + key)

    # -- leases ---------------------------------------------------------------------
    def _lease_key(self, key: str) -> str:
        return self.prefix + key + ":lease"

    def acquire_lease(self, key: str, ttl: float) -> LeaseAttempt:
        """``SET <key>:lease <signed value> NX PX <ttl>``; when it is held, the holder's value is read
        (bounded) and verified: a valid lease means wait, anything else is replaced if unchanged."""
        self._check_key(key)
        holder = holder_id()
        value = self.lease_value(key, ttl, holder)
        px, lk = max(1, int(ttl * 1000)), self._lease_key(key)
        rejected, expected = None, None
        for _ in range(3):
            args = [value, px, expected or b"", _LEASE_MAX, "1" if expected is not None else "0"]
            res, status = self._call(lambda: self._acquire(keys=[lk], args=args))
            if status != OK:
                return LeaseAttempt(status, rejected=rejected)
            code, current = int(res[0]), bytes(res[1] or b"")
            if code == 3:
                rejected = RejectedEntry("lease-format", "lease key held a value that is not a string")
            if code != 0:
                return LeaseAttempt(OK, Lease(self, key, value, ttl, holder), rejected=rejected)
            try:
                other, _ = self.read_lease(key, current, ttl)
                return LeaseAttempt(OK, holder=other, rejected=rejected)
            except RejectedEntry as e:
                rejected, expected = e, current        # replace it, if it is still that value
        return LeaseAttempt(OK, rejected=rejected)      # changing under us: someone is active

    def _renew_lease(self, lease: Lease, value: bytes) -> bool:
        px = max(1, int(lease.ttl * 1000))
        return bool(self._renew(keys=[self._lease_key(lease.key)], args=[lease.value, value, px]))

    def _release_lease(self, lease: Lease) -> bool:
        return bool(self._release(keys=[self._lease_key(lease.key)], args=[lease.value]))
