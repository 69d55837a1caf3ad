"""The cache as callers see it: the local store, plus the remote tiers when configured.

Lookups read through (local, then each remote in order; a remote hit is copied to local and to
the remotes before it that answered "miss"); stores write through (local and every remote).

``get_or_build`` adds single flight. On one host: a per-key file lock, so one process builds
and the others wait on it and read its result. Across a fleet, when a remote supports leases
(Redis; the first such tier of the chain): the process holding the local lock takes a lease on
the key in the remote before building (renewed while the build runs, released after the
result is stored), and a process that finds the lease held polls the remotes for the result
(backoff with jitter) for at most ``remote_wait`` seconds; a lease whose holder died expires
after ``lease_ttl`` and the next waiter takes it over and builds; a waiter past its bound
builds itself. A remote that does not answer makes the cache behave as local-only: the lease
tier not answering ends the wait (the process builds); another tier's failed poll does not.

A remote tier that cannot be used safely (no HMAC key, malformed URL, no redis-py) is left out
with one warning; the local cache works on (see ``remote.py``).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from typing import Callable, Sequence

from ..artifact import NativeBinary
from ..errors import InvalidBinary, KernbinError, KernbinWarning
from .key import key_for_info
from .local import DEFAULT_MAX_SIZE, LocalStore, parse_size

__all__ = ["Cache", "DEFAULT_WAIT", "DEFAULT_LEASE_TTL", "DEFAULT_REMOTE_WAIT"]

DEFAULT_WAIT = 600.0          # seconds a process waits on the local lock before building itself
DEFAULT_LEASE_TTL = 10.0      # seconds a fleet lease lives without renewal (renewed every ttl / 3)
DEFAULT_REMOTE_WAIT = 300.0   # seconds a process waits for another host's build before building itself
MAX_REMOTE_WAIT = 86400.0     # remote_wait is clamped to this (lease_ttl to [0.5, 3600] s, see remote.py)
_POLL_FIRST = 0.05            # first pause between polls for another host's result; doubles up to
_POLL_MAX = 1.0               # this (or ttl / 4, whichever is smaller), each with +-50 % jitter


def _env_seconds(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment; a bad value warns and is ignored."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
        if not value >= 0 or value == float("inf"):
            raise ValueError(text)
        return value
    except ValueError:
        warnings.warn(f"kernbin: {name}={text!r} is not a number of seconds; using {default:g}",
                      KernbinWarning, stacklevel=3)
        return default


def _clamped(name: str, value: float, low: float, high: float) -> float:
    """``value`` within [low, high]; one warning when it was not."""
    clamped = min(max(value, low), high)
    if clamped != value:
        warnings.warn(f"kernbin: {name}={value:g} s is out of range; using {clamped:g} s", KernbinWarning,
                      stacklevel=3)
    return clamped


class Cache:
    """Local store + remote tiers (any number, in lookup order), with single flight in
    :meth:`get_or_build`. ``wait_timeout``: bound of the wait on another local process;
    ``lease_ttl`` and ``remote_wait``: fleet leases (``remote_wait=0`` turns them off). ``lease_ttl``
    outside [0.5, 3600] s and ``remote_wait`` over 86400 s are clamped, with a warning."""

    def __init__(self, local: LocalStore, remote=None, wait_timeout: float = DEFAULT_WAIT, *,
                 lease_ttl: float = DEFAULT_LEASE_TTL, remote_wait: float = DEFAULT_REMOTE_WAIT):
        self.local = local
        if remote is None:
            self.remotes: tuple = ()
        elif isinstance(remote, Sequence):
            self.remotes = tuple(remote)
        else:
            self.remotes = (remote,)
        self.wait_timeout = wait_timeout
        from .remote import LEASE_TTL_MAX, LEASE_TTL_MIN
        if not lease_ttl > 0:
            raise KernbinError(f"lease_ttl must be positive, not {lease_ttl!r}")
        if remote_wait != remote_wait:
            raise KernbinError("remote_wait must be a number of seconds, not nan")
        self.lease_ttl = _clamped("lease_ttl", float(lease_ttl), LEASE_TTL_MIN, LEASE_TTL_MAX)
        self.remote_wait = _clamped("remote_wait", float(remote_wait), float("-inf"), MAX_REMOTE_WAIT)

    @property
    def remote(self):
        """The first remote tier, or None."""
        return self.remotes[0] if self.remotes else None

    @property
    def lease_store(self):
        """The tier that holds fleet leases: the first that supports them, while ``remote_wait > 0``."""
        if self.remote_wait <= 0:
            return None
        return next((r for r in self.remotes if r.supports_leases), None)

    @classmethod
    def from_env(cls, root: str | None = None) -> "Cache":
        """``KERNBIN_CACHE_DIR``, ``KERNBIN_CACHE_MAX_SIZE``, ``KERNBIN_CACHE_ALLOW_SHARED``,
        ``KERNBIN_REMOTE`` (one URL or several, whitespace-separated), ``KERNBIN_CACHE_HMAC_KEY``,
        ``KERNBIN_REMOTE_LEASE_TTL``, ``KERNBIN_REMOTE_WAIT`` (seconds; ``0`` turns fleet leases off).
        Raises :class:`~kernbin.paths.UnsafeCacheDir` for a cache directory other users can write; a
        remote tier that cannot be used safely is left out with one
        :class:`~kernbin.cache.remote.RemoteDisabledWarning` per process (the other tiers stay)."""
        from ..paths import cache_dir
        max_size = os.environ.get("KERNBIN_CACHE_MAX_SIZE")
        shared = os.environ.get("KERNBIN_CACHE_ALLOW_SHARED", "").strip().lower() in ("1", "true", "yes", "on")
        local = LocalStore(root or cache_dir(), parse_size(max_size) if max_size else DEFAULT_MAX_SIZE,
                           allow_shared=shared)
        remotes = []
        urls = os.environ.get("KERNBIN_REMOTE", "").split()
        if urls:
            from .remote import RemoteConfigError, open_remote, warn_disabled
            key = os.environ.get("KERNBIN_CACHE_HMAC_KEY")
            for url in urls:
                try:
                    remotes.append(open_remote(url, key.encode() if key else None))
                except RemoteConfigError as e:
                    warn_disabled(e)
        ttl = _env_seconds("KERNBIN_REMOTE_LEASE_TTL", DEFAULT_LEASE_TTL) or DEFAULT_LEASE_TTL
        return cls(local, remotes, lease_ttl=ttl,
                   remote_wait=_env_seconds("KERNBIN_REMOTE_WAIT", DEFAULT_REMOTE_WAIT))

    # -- lookups -------------------------------------------------------------------
    def _remote_get(self, key: str) -> NativeBinary | None:
        """Read through the remotes in order; a verified hit goes to local and to the remotes
        before it that answered "miss". Bad values are counted and skipped (the next tier is tried)."""
        from .remote import OK, RejectedEntry, RemoteRejectedWarning
        missed = []
        for store in self.remotes:
            try:
                value, status = store.get(key)
                self._remote_status(status)
                if value is None:
                    if status == OK:
                        missed.append(store)
                    continue
                data = store.unwrap(key, value)
                native = NativeBinary.from_bytes(data)
                if key_for_info(native.info) != key:
                    raise InvalidBinary("remote entry's build info does not hash to its key")
            except RejectedEntry as e:
                self.local.record("rejected")
                warnings.warn(RemoteRejectedWarning(key, e), stacklevel=4)
                continue
            except InvalidBinary:
                self.local.record("corrupt")
                self._remote_status(store.delete(key))
                continue
            self.local.put(key, native)
            self.local.record("remote_hits")
            for earlier in missed:
                self._remote_status(earlier.put(key, data))
            return native
        return None

    def get(self, key: str, *, count: bool = True) -> NativeBinary | None:
        """The verified entry, local first then remote (copied to local); ``count`` counts the hit."""
        native = self.local.get(key) or self._remote_get(key)
        if native is not None and count:
            self.local.record("hit", float(native.info.build_seconds))
        return native

    def _remote_status(self, status: str) -> None:
        """Count a remote call that failed (one skipped while the tier rests is not an error)."""
        from .remote import FAILED
        if status == FAILED:
            self.local.record("remote_errors")

    def reject(self, key: str) -> bool:
        """A device refused the entry for ``key``: remove the local copy and count it (``corrupt``).
        A remote tier may still hold the same bytes: the caller rebuilds and puts the result,
        which replaces them everywhere (``get_or_build`` would read them back)."""
        return self.local.reject(key)

    def put(self, key: str, native: NativeBinary) -> None:
        """Store locally and in every remote tier (signed); a remote failure only counts."""
        self.local.put(key, native)
        if self.remotes:
            data = native.without_ir().to_bytes()
            for store in self.remotes:
                self._remote_status(store.put(key, data))

    # -- single flight ---------------------------------------------------------------
    def get_or_build(self, key: str, build: Callable[[], NativeBinary]) -> tuple[NativeBinary, bool]:
        """(binary, True) from the cache, or (binary, False) built by ``build`` and stored.

        When several processes ask for the same missing key at once, one builds and the rest wait
        and read its result: on one host through the key's lock (at most ``wait_timeout`` s), across
        hosts through a lease in the remote (at most ``remote_wait`` s; see the module docstring).
        """
        native = self.get(key)
        if native is not None:
            return native, True
        with self.local.build_lock(key, self.wait_timeout) as locked:
            lease = None
            if locked:
                if self.lease_store is not None:
                    native = self.local.get(key)
                    if native is None:
                        native, lease = self._fleet_flight(key)
                    else:
                        self.local.record("hit", float(native.info.build_seconds))
                else:
                    native = self.get(key)
                if native is not None:
                    return native, True
            else:
                warnings.warn(f"kernbin: waited {self.wait_timeout:g} s for another process to build "
                              f"{key[:16]}; building it here", KernbinWarning, stacklevel=3)
            try:
                self.local.record("misses")
                native = build()
                self.local.record("builds")
                if key_for_info(native.info) != key:
                    raise KernbinError("internal error: built binary does not match its cache key")
                self.put(key, native)
            finally:
                if lease is not None:
                    self._remote_status(lease.release())
            return native, False

    def _fleet_flight(self, key: str):
        """``(native, None)`` when another host's result is (or becomes) available, else
        ``(None, lease)`` to build under our lease, or ``(None, None)`` to build without one (the
        lease tier does not answer, or the wait passed ``remote_wait``)."""
        from .remote import OK, FleetWaitWarning, RemoteRejectedWarning
        store = self.lease_store
        start = time.monotonic()
        deadline = start + self.remote_wait
        delay, poll_max = _POLL_FIRST, min(_POLL_MAX, max(_POLL_FIRST, self.lease_ttl / 4))
        holder, waited = None, False
        seen_until = None       # when the lease last seen held would have run out, had it not been renewed
        while True:
            attempt = store.acquire_lease(key, self.lease_ttl)
            now = time.monotonic()
            if attempt.rejected is not None:
                self.local.record("rejected")
                warnings.warn(RemoteRejectedWarning(key, attempt.rejected), stacklevel=4)
            if attempt.status != OK:                 # no lease tier: as without leases (other tiers may answer)
                self._remote_status(attempt.status)
                return (None if waited else self.get(key)), None
            if attempt.lease is not None:
                # a takeover: we replaced an invalid or expired value, or the lease we saw held ran out
                # (its holder stopped renewing); not a lease its holder released
                if attempt.takeover or (seen_until is not None and now >= seen_until - 0.1):
                    self.local.record("lease_takeovers")
                native = self.get(key)        # published between our look-up and our lease?
                if native is not None:
                    self._remote_status(attempt.lease.release())
                    if waited:
                        self.local.record("fleet_hits")
                    return native, None
                return None, attempt.lease.start(on_error=lambda: self.local.record("remote_errors"))
            if attempt.expires_in is not None:
                seen_until = now + attempt.expires_in
            holder = attempt.holder or holder
            if not waited:
                waited = True
                self.local.record("fleet_waits")
            left = deadline - time.monotonic()
            if left <= 0:
                self.local.record("fleet_wait_timeouts")
                warnings.warn(FleetWaitWarning(key, round(time.monotonic() - start, 3), holder), stacklevel=4)
                return None, None
            time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, poll_max)
            native = self.get(key)
            if native is not None:
                self.local.record("fleet_hits")
                return native, None

    def stats(self) -> dict:
        """The local store's statistics plus the remote URLs (space-separated; None without a remote)."""
        out = self.local.stats()
        out["remote"] = " ".join(r.url for r in self.remotes) or None
        return out
