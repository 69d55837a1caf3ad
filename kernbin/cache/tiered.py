"""The cache as callers see it: the local store, plus the Redis tier when configured.

Lookups read through (local, then remote, a remote hit is copied to local); stores
write through (local and remote). ``get_or_build`` adds single flight across
processes: one builds, the others wait on the key's lock and read its result.
A remote tier that cannot be used safely (no HMAC key, malformed URL, no redis-py) is
turned off with one warning; the local cache works on (see ``remote.py``).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from ..artifact import NativeBinary
from ..errors import InvalidBinary, KernbinWarning
from .key import key_for_info
from .local import DEFAULT_MAX_SIZE, LocalStore, parse_size

__all__ = ["Cache"]

DEFAULT_WAIT = 600.0     # seconds a process waits for another's build before building itself


class Cache:
    def __init__(self, local: LocalStore, remote=None, wait_timeout: float = DEFAULT_WAIT):
        self.local = local
        self.remote = remote
        self.wait_timeout = wait_timeout

    @classmethod
    def from_env(cls, root: str | None = None) -> "Cache":
        """``KERNBIN_CACHE_DIR``, ``KERNBIN_CACHE_MAX_SIZE``, ``KERNBIN_CACHE_ALLOW_SHARED``,
        ``KERNBIN_REMOTE``, ``KERNBIN_CACHE_HMAC_KEY``. Raises
        :class:`~kernbin.paths.UnsafeCacheDir` for a cache directory other users can write; a remote
        tier that cannot be used safely is left out with one
        :class:`~kernbin.cache.remote.RemoteDisabledWarning` per process."""
        from ..paths import cache_dir
        max_size = os.environ.get("KERNBIN_CACHE_MAX_SIZE")
        shared = os.environ.get("KERNBIN_CACHE_ALLOW_SHARED", "").strip().lower() in ("1", "true", "yes", "on")
        local = LocalStore(root or cache_dir(), parse_size(max_size) if max_size else DEFAULT_MAX_SIZE,
                           allow_shared=shared)
        remote = None
        url = os.environ.get("KERNBIN_REMOTE")
        if url:
            from .remote import RedisStore, RemoteConfigError, warn_disabled
            key = os.environ.get("KERNBIN_CACHE_HMAC_KEY")
            try:
                remote = RedisStore(url, key.encode() if key else None)
            except RemoteConfigError as e:
                warn_disabled(e)
        return cls(local, remote)

    # -- lookups -------------------------------------------------------------------
    def _remote_get(self, key: str) -> NativeBinary | None:
        if self.remote is None:
            return None
        from .remote import RejectedEntry, RemoteRejectedWarning
        value, status = self.remote.get(key)
        self._remote_status(status)
        if value is None:
            return None
        try:
            native = NativeBinary.from_bytes(self.remote.unwrap(key, value))
            if key_for_info(native.info) != key:
                raise InvalidBinary("remote entry's build info does not hash to its key")
        except RejectedEntry as e:
            self.local.record("rejected")
            warnings.warn(RemoteRejectedWarning(key, e), stacklevel=4)
            return None
        except InvalidBinary:
            self.local.record("corrupt")
            self._remote_status(self.remote.delete(key))
            return None
        self.local.put(key, native)
        self.local.record("remote_hits")
        return native

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

    def put(self, key: str, native: NativeBinary) -> None:
        """Store locally and, when configured, in Redis (signed); a Redis failure only counts."""
        self.local.put(key, native)
        if self.remote is not None:
            self._remote_status(self.remote.put(key, native.without_ir().to_bytes()))

    def get_or_build(self, key: str, build: Callable[[], NativeBinary]) -> tuple[NativeBinary, bool]:
        """(binary, True) from the cache, or (binary, False) built by ``build`` and stored.

        When several processes ask for the same missing key at once, one builds and the
        rest wait (at most ``wait_timeout`` seconds) and read its result.
        """
        native = self.get(key)
        if native is not None:
            return native, True
        with self.local.build_lock(key, self.wait_timeout) as locked:
            if locked:
                native = self.get(key)
                if native is not None:
                    return native, True
            else:
                warnings.warn(f"kernbin: waited {self.wait_timeout:g} s for another process to build "
                              f"{key[:16]}; building it here", KernbinWarning, stacklevel=3)
            self.local.record("misses")
            native = build()
            self.local.record("builds")
            if key_for_info(native.info) != key:
                raise RuntimeError("internal error: built binary does not match its cache key")
            self.put(key, native)
            return native, False

    def stats(self) -> dict:
        """The local store's statistics plus the remote URL (None without a remote tier)."""
        out = self.local.stats()
        out["remote"] = self.remote.url if self.remote is not None else None
        return out
