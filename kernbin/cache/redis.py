"""The Redis tier (``KERNBIN_REMOTE=redis://host:port/db``, ``rediss://``, ``unix:///path``), via redis-py.

Entries live at ``kernbin:v1:<key>`` (signed values, see :mod:`kernbin.cache.remote`). A read asks
for the length and the first MiB in one script call (atomic): a value over ``max_entry_size`` is
refused unread, one within the first MiB is done. A longer value is read under ``WATCH`` into one
``bytearray`` of its length, a MiB per ``GETRANGE`` (redis-py copies each reply two or three times
while parsing it: a MiB at a time that is nothing, the whole value at once it was 2.7 times the value);
if the key changed meanwhile (``EXEC`` fails) the read is retried, twice, then counts as a miss.

Bounded in time and size whatever the server does: connecting and each read from the socket
have a ``timeout`` (0.5 s), and each command (sending it and reading its whole reply) a deadline
``deadline`` seconds away (5 s); a reply is never read past ``max_entry_size`` + 64 KiB bytes
(redis-py buffers a reply before parsing it, so that is also the memory a reply can take). Both
are enforced on every read, by the socket redis-py reads from (see :class:`_BoundedSocket`). A
reply of the wrong shape (an integer where a string belongs, a server that is not Redis) is a
failed call, as is any exception redis-py raises.

Leases for fleet-wide single flight live at ``kernbin:v1:<key>:lease``: taken with
``SET NX PX <ttl>``, renewed and released by compare-and-set / compare-and-delete Lua scripts
(only the holder's exact value is replaced or deleted). A value there that is not a valid lease
(wrong type, unsigned, forged, long expired) is replaced atomically, only if it is still the
value that was judged.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from .remote import (OK, Lease, LeaseAttempt, RejectedEntry, RemoteCallError, RemoteConfigError, RemoteStore,
                     _LEASE_MAX, _redact, holder_id, remote_text)

__all__ = ["RedisStore"]

# -> {1, "", -1} taken (free), {2, "", -1} taken (replaced ARGV[3], judged invalid), {3, "", -1} taken (the
#    key held something not a string), {0, value, pttl} held (value cut to ARGV[4] + 1 bytes, for the
#    caller to judge; pttl: its milliseconds left, -1 for none)
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, '', -1} end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return {3, '', -1}
end
local cur = redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[4]))
if ARGV[5] == '1' and cur == ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return {2, '', -1} end
return {0, cur, redis.call('PTTL', KEYS[1])}
"""
# ARGV[1] the new value, ARGV[2] its PX, ARGV[3..] the values that are ours (Lease.values) -> 1 renewed, 0 not ours
_RENEW = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local cur = redis.call('GET', KEYS[1])
for i = 3, #ARGV do
  if cur == ARGV[i] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
end
return 0
"""
# ARGV: the values that are ours -> 1 deleted, 0 not ours
_RELEASE = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local cur = redis.call('GET', KEYS[1])
for i = 1, #ARGV do
  if cur == ARGV[i] then return redis.call('DEL', KEYS[1]) end
end
return 0
"""
_SLACK = 64 << 10         # bytes a reply may take besides the value (RESP framing, a handshake's map)
# -> {-1, ""} the key holds no string, {0, ""} none, {n, first ARGV[1] bytes} (n > ARGV[2]: nothing read)
_READ_HEAD = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {0, ''} end
if t ~= 'string' then return {-1, ''} end
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[2]) then return {n, ''} end
return {n, redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
"""
_READ_CHUNK = 1 << 20     # bytes per GETRANGE: a value is read into one buffer, this much at a time
_READ_TRIES = 3           # reads of a value that keeps changing meanwhile, before it counts as a miss
_CHANGED = object()


class _ReplyTooLarge(OSError):
    """A Redis reply longer than the connection's byte budget (redis-py turns it into ConnectionError)."""


class _BoundedSocket:
    """A connection's socket whose reads (and sends) stop at the current command's deadline and whose
    reads stop at its byte budget; :meth:`arm` starts a command. A non-blocking read (redis-py's
    "is there data?" check between commands, timeout 0) is left alone. Everything else is the
    socket's own."""

    def __init__(self, sock, deadline: float, budget: int):
        self.sock, self._deadline, self._budget = sock, deadline, budget
        self._timeout = sock.gettimeout()
        self._until, self._left = float("inf"), budget

    def arm(self) -> None:
        self._until, self._left = time.monotonic() + self._deadline, self._budget

    def settimeout(self, timeout) -> None:
        self._timeout = timeout
        self.sock.settimeout(timeout)

    def gettimeout(self):
        return self._timeout

    def _bound(self) -> None:
        if self._timeout == 0:
            return
        left = self._until - time.monotonic()
        if left <= 0:
            raise socket.timeout("Redis command deadline passed")
        self.sock.settimeout(left if self._timeout is None else min(self._timeout, left))

    def _took(self, n: int) -> None:
        self._left -= n
        if self._left < 0:
            raise _ReplyTooLarge(f"Redis reply larger than {self._budget} bytes")

    def recv(self, bufsize: int, *flags) -> bytes:
        self._bound()
        data = self.sock.recv(bufsize, *flags)
        self._took(len(data))
        return data

    def recv_into(self, buffer, nbytes: int = 0, *flags) -> int:
        self._bound()
        n = self.sock.recv_into(buffer, nbytes, *flags)
        self._took(n)
        return n

    def sendall(self, data, *flags):
        self._bound()
        return self.sock.sendall(data, *flags)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _bounded_connection_class(base, deadline: float, budget: int):
    """``base`` (redis-py's connection class for the URL's scheme) with :class:`_BoundedSocket`s."""

    class Bounded(base):
        def _connect(self):
            return _BoundedSocket(super()._connect(), deadline, budget)

        def send_packed_command(self, command, check_health=True):
            if not self._sock:
                self.connect()
            if isinstance(self._sock, _BoundedSocket):
                self._sock.arm()
            return super().send_packed_command(command, check_health)

    Bounded.__name__ = Bounded.__qualname__ = "Bounded" + base.__name__
    return Bounded


class RedisStore(RemoteStore):
    """Signed entries and leases in Redis. ``timeout`` (seconds) bounds connecting and each read,
    ``deadline`` each command as a whole (see the module docstring); failures are handled by
    :class:`~kernbin.cache.remote.RemoteStore`."""

    supports_leases = True
    #: any exception out of redis-py (its own, or one of a malformed reply) is a failed call
    _errors = (Exception,)

    def __init__(self, url: str, hmac_key: bytes | None, timeout: float = 0.5,
                 retry_after: float = 30.0, prefix: str = "kernbin:v1:", *, deadline: float = 5.0, **kw):
        """Raises :class:`RemoteConfigError` for a malformed ``url``, an empty ``hmac_key`` or a
        missing redis-py. Connects lazily: an unreachable server is a :data:`FAILED` call, not an error.
        ``kw``: ``max_entry_size``."""
        super().__init__(url, hmac_key, retry_after=retry_after, **kw)
        try:
            import redis
            from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
        except ImportError:
            raise RemoteConfigError(self.url, "redis-py", "redis-py is not installed: pip install "
                                    "'kernbin[redis]'") from None
        self.prefix = prefix
        self._redis = redis
        base = {"unix": UnixDomainSocketConnection, "rediss": SSLConnection}.get(urlsplit(url).scheme, Connection)
        bounded = _bounded_connection_class(base, max(deadline, timeout), self.max_entry_size + 1 + _SLACK)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                retry_on_timeout=False, connection_class=bounded)
        except (ValueError, TypeError) as e:
            raise RemoteConfigError(_redact(url), "url", f"redis-py refuses it ({remote_text(e)})") from None
        self._read_head = self._client.register_script(_READ_HEAD)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    def _after_failure(self) -> None:
        """Close the idle connections: a failure (a malformed reply, a handshake cut short) may have
        left one half-read or half-initialized, and it must not serve the next call."""
        try:
            self._client.connection_pool.disconnect(inuse_connections=False)
        except Exception:
            pass

    def _malformed(self, what: str, reply) -> RemoteCallError:
        return RemoteCallError(self.url, None, f"{what}: unexpected reply of type {type(reply).__name__}")

    # -- entries --------------------------------------------------------------------
    def _get(self, key: str) -> bytes | bytearray | None:
        """One script call answers the length and the first chunk (atomically); a value that fits
        in it is done. A longer one is read again under ``WATCH``, into one ``bytearray`` of its
        length, a chunk per ``GETRANGE``; changed meanwhile (another host stored the key), the read is
        retried, then given up (a miss)."""
        k = self.prefix + key
        n, first = self._head(k)
        if n == 0:
            return None                              # no such key (or an empty value: not an entry)
        if n <= _READ_CHUNK:
            if len(first) != n:
                raise self._malformed("entry head", first)
            return first
        for _ in range(_READ_TRIES):
            value = self._read_watched(k)
            if value is not _CHANGED:
                return value
        return None

    def _head(self, k: str) -> tuple[int, bytes]:
        """``(length, first chunk)`` of the value at ``k``; :class:`RejectedEntry` ``"format"`` for a
        key that holds no string, ``"oversized"`` (nothing read) for a value over ``max_entry_size``."""
        res = self._read_head(keys=[k], args=[_READ_CHUNK, self.max_entry_size])
        if not (isinstance(res, list) and len(res) == 2 and type(res[0]) is int and isinstance(res[1], bytes)
                and -1 <= res[0] and len(res[1]) <= min(max(res[0], 0), _READ_CHUNK)):
            raise self._malformed("entry head", res)
        if res[0] == -1:
            raise RejectedEntry("format", "not a kernbin remote entry (not a string)")
        if res[0] > self.max_entry_size:
            raise RejectedEntry("oversized", f"value larger than {self.max_entry_size} bytes (not read)")
        return res[0], res[1]

    def _read_watched(self, k: str):
        """The value at ``k`` (read under WATCH into one buffer), None when gone, ``_CHANGED`` when it
        changed while being read."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.watch(k)                            # from here the pipeline runs commands at once
            n = pipe.strlen(k)
            if type(n) is not int:
                raise self._malformed("STRLEN", n)
            if n == 0:
                return None
            if n > self.max_entry_size:
                raise RejectedEntry("oversized", f"value larger than {self.max_entry_size} bytes (not read)")
            buf = bytearray(n)
            at = 0
            while at < n:
                part = pipe.getrange(k, at, min(at + _READ_CHUNK, n) - 1)
                if not isinstance(part, bytes):
                    raise self._malformed("GETRANGE", part)
                if len(part) != min(_READ_CHUNK, n - at):
                    return _CHANGED                  # shorter than the length said: it changed
                buf[at:at + len(part)] = part
                at += len(part)
                del part
            pipe.multi()
            pipe.strlen(k)
            try:
                pipe.execute()                       # EXEC fails if the key changed since WATCH
            except self._redis.exceptions.WatchError:
                return _CHANGED
            return buf

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
            res, status = self._call(self._acquire_call, lk, args)
            if status != OK:
                return LeaseAttempt(status, rejected=rejected)
            code, current, pttl = res
            if code == 3:
                rejected = RejectedEntry("lease-format", "lease key held a value that is not a string")
            if code != 0:
                return LeaseAttempt(OK, Lease(self, key, value, ttl, holder), rejected=rejected,
                                    takeover=code in (2, 3))
            try:
                other, _ = self.read_lease(key, current, ttl)
                return LeaseAttempt(OK, holder=other, rejected=rejected,
                                    expires_in=pttl / 1000 if pttl >= 0 else None)
            except RejectedEntry as e:
                rejected, expected = e, current        # replace it, if it is still that value
        return LeaseAttempt(OK, rejected=rejected)      # changing under us: someone is active

    def _acquire_call(self, lk: str, args: list) -> tuple[int, bytes, int]:
        res = self._acquire(keys=[lk], args=args)
        if not (isinstance(res, list) and len(res) == 3 and type(res[0]) is int and res[0] in (0, 1, 2, 3)
                and isinstance(res[1], bytes) and type(res[2]) is int):
            raise self._malformed("lease script", res)
        return res[0], res[1], res[2]

    def _flag(self, what: str, res) -> bool:
        if type(res) is not int or res not in (0, 1):
            raise self._malformed(what, res)
        return bool(res)

    def _renew_lease(self, lease: Lease, value: bytes) -> bool:
        px = max(1, int(lease.ttl * 1000))
        return self._flag("lease renewal", self._renew(keys=[self._lease_key(lease.key)],
                                                        args=[value, px, *lease.values()]))

    def _release_lease(self, lease: Lease) -> bool:
        return self._flag("lease release", self._release(keys=[self._lease_key(lease.key)], args=lease.values()))
