"""The local directory store.

Layout under the cache root (``KERNBIN_CACHE_DIR``)::

    v1/objects/<k[:2]>/<key>.knb   entries (.knb without the IR), published atomically
    v1/locks/<key>.lock             per-key build locks (flock: released when the holder dies)
    v1/events.log                   append-only counters, one "<name> <value>" line per event
    v1/stats.json                   counters folded in from events.log by `stats()`
    v1/usage                        running estimate of the store's size (see "Size bound")
    v1/.maintenance.lock            serialises eviction, clearing and folding

Every read is verified (all checksums of the ``.knb`` and that its build info hashes
to the key it was found under); a bad entry is removed, counted, and is a miss.
Recency for LRU eviction is the file's mtime, refreshed on a hit (at most once a second).

The directory is not an attack surface. The root must belong to this user and not be writable
by everyone (:func:`kernbin.paths.check_cache_dir`). Below the root no symlink is followed: entries
are opened ``O_NOFOLLOW | O_NONBLOCK`` relative to their shard directory, itself opened
``O_NOFOLLOW``; walks (prune, clear, listing) go through directory descriptors and remove things
with ``unlinkat``, so a symlinked ``v1/locks`` or ``v1/objects/ab`` is unlinked as a link and never
entered. Only regular files are read: a FIFO, socket, directory or symlink at an entry's name is
junk (removed, counted ``corrupt``, a miss); an entry that cannot be opened (``EACCES``: another
user's file) is a plain miss. Files and directories are created with the process umask, so a group
can share a cache (``umask 002``, a setgid directory and ``KERNBIN_CACHE_ALLOW_SHARED=1``).

Size bound: ``put`` costs O(1). It adds the entry's size to ``v1/usage`` (a 64-byte record,
updated under an ``flock`` of its own) and runs a full scan only when that estimate passes the
bound, or after max(1024, entries / 2) puts since the last scan (to correct drift: writers
killed mid-write, files removed by hand); either way a scan of n entries is paid for by
O(n) puts. A scan sweeps temp files of dead writers (their bytes count
against the bound until then), evicts least recently used entries down to 90 % of the bound
(so the next scan is many puts away), and rewrites the estimate. ``get`` never scans.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import sys
import threading
import time
import weakref
from contextlib import contextmanager

from .._fs import TMP_PREFIX, atomic_write, read_fd
from ..artifact import NativeBinary
from ..errors import InvalidBinary, KernbinError
from ..paths import UnsafeCacheDir, check_cache_dir
from .key import key_for_info

__all__ = ["LocalStore", "parse_size", "DEFAULT_MAX_SIZE", "COUNTERS", "UnsafeCacheDir"]

DEFAULT_MAX_SIZE = 2 << 30          # 2 GiB
COUNTERS = ("hits", "misses", "builds", "corrupt", "evicted", "remote_hits", "remote_errors",
            "rejected", "fleet_waits", "fleet_hits", "lease_takeovers", "fleet_wait_timeouts",
            "build_seconds_saved")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_STALE_TMP_SECONDS = 3600
_TOUCH_GRANULARITY = 1.0    # seconds: LRU recency is refreshed at most this often per entry
_LOW_WATER = 0.9            # an eviction triggered by a put goes down to this fraction of the bound
_RESCAN_MIN = 1024          # a full scan at least every max(this, entries / 2) puts, to correct drift
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC      # a directory to list
_DIR_PATH = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_FILE = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC     # never a symlink, never a hang


def parse_size(text: "str | int") -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"12345"`` -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise KernbinError(f"bad size {text!r}: use bytes or a number with K, M, G or T (e.g. 500M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


_FLUSH_SECONDS = 1.0


def _append(path: str, text: str) -> None:
    """One O_APPEND write; never through a symlink, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _FILE, 0o666)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def _umask() -> int:
    """The process umask, read without changing it where the system allows (/proc)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _is_junk(mode: int) -> bool:
    """Not a regular file: nothing kernbin wrote (a symlink, FIFO, socket, device or directory)."""
    return not stat.S_ISREG(mode)


def _remove_at(dfd: int, name: str, st: os.stat_result | None = None) -> bool:
    """Remove ``name`` in the directory ``dfd`` without following it; a directory is removed with
    its contents (never through a symlink). With ``st``, only if it is still that same file."""
    try:
        now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if st is not None and (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        if stat.S_ISDIR(now.st_mode):
            if sys.version_info >= (3, 11):
                shutil.rmtree(name, dir_fd=dfd)          # descriptor-based: symlinks inside are unlinked
            else:
                os.rmdir(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)
        return True
    except OSError:
        return False


def _open_subdir(parent: int, name: str, where: str, allow_shared: bool, *, repair: bool = True) -> int:
    """Open the store directory ``name`` under ``parent`` without following a symlink. With ``repair``
    a missing one is created and a symlink there is removed (the link, never its target) and replaced
    by a real directory; without, either is FileNotFoundError (nothing to list)."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except FileNotFoundError:
        if not repair:
            raise
        fd = None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise UnsafeCacheDir(os.path.join(where, name), "not-a-directory", "not a directory",
                                 uid=st.st_uid, mode=st.st_mode) from None
        if not repair:
            raise FileNotFoundError(errno.ENOENT, "a symlink, not followed", os.path.join(where, name)) from None
        os.unlink(name, dir_fd=parent)
        fd = None
    if fd is None:
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(name, _DIR, dir_fd=parent)
    try:
        check_cache_dir(os.path.join(where, name), os.fstat(fd), allow_shared=allow_shared)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Usage:
    """``v1/usage``: bytes, entries, puts since the last full scan, as one fixed 64-byte record
    read and rewritten under an ``flock`` of the file itself (a few system calls per put)."""

    SIZE = 64

    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def _parse(raw: bytes):
        parts = raw.split()
        if len(parts) != 5 or parts[:2] != [b"kernbin-usage", b"1"]:
            return None
        try:
            values = tuple(int(p) for p in parts[2:])
        except ValueError:
            return None
        return values if min(values) >= 0 else None

    def read(self):
        """``(bytes, entries, puts)``, or None when unknown."""
        return self.update(lambda u: None)[0]

    def repair(self) -> None:
        """Unlink anything but a regular file at the usage file's name (the next update recreates it)."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    def update(self, fn):
        """``fn(old)`` under the lock, ``old`` being ``(bytes, entries, puts)`` or None when unknown
        (missing or unreadable); ``fn`` returns the new triple (or None to leave it). Returns
        ``(old, new)``; ``(None, None)`` when the file cannot be used at all."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0),
                         0o666)
        except OSError:
            return None, None
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, None
            raw = os.pread(fd, self.SIZE + 1, 0)
            old = self._parse(raw) if len(raw) == self.SIZE else None
            new = fn(old)
            if new is not None:
                new = tuple(max(0, int(v)) for v in new)
                line = f"kernbin-usage 1 {new[0]} {new[1]} {new[2]}".encode().ljust(self.SIZE - 1) + b"\n"
                os.pwrite(fd, line, 0)
                if len(raw) != self.SIZE:
                    os.ftruncate(fd, self.SIZE)
            return old, new
        except OSError:
            return None, None
        finally:
            os.close(fd)


def _close_all(fds: dict) -> None:
    for fd in list(fds.values()):
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class _PendingHits:
    """Hits counted in memory since the last write to the event log (thread-safe; a forked child
    starts from zero, so the parent's pending hits are never counted twice)."""

    def __init__(self, events: str):
        self.events, self.n, self.saved, self.since = events, 0, 0.0, time.monotonic()
        self.lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: (p := ref()) is not None and p._reset())

    def _reset(self) -> None:
        self.lock = threading.Lock()      # the parent's lock may have been held at fork time
        self.n, self.saved = 0, 0.0

    def add(self, saved: float) -> None:
        with self.lock:
            self.n += 1
            self.saved += saved

    def flush(self) -> None:
        with self.lock:
            n, saved, self.n, self.saved = self.n, self.saved, 0, 0.0
            self.since = time.monotonic()
        if n:
            _append(self.events, f"hits {n}\nbuild_seconds_saved {saved!r}\n")


class _Tree:
    """The store's directories opened through descriptors, no symlink followed below the root.
    ``scan`` lists entries, temp files and junk; with ``fix`` it also removes symlinks where a
    directory belongs, junk at entry names and temp files of writers dead for an hour."""

    def __init__(self, store: "LocalStore", *, fix: bool):
        self.store, self.fix, self.fds = store, fix, []
        try:
            self.v1 = self._keep(os.open(store.root, _DIR))
            self.objects = self._keep(_open_subdir(self.v1, "objects", store.root, store.allow_shared, repair=fix))
            try:
                self.locks = self._keep(_open_subdir(self.v1, "locks", store.root, store.allow_shared, repair=fix))
            except FileNotFoundError:
                self.locks = None                 # listing only: nothing to look at there
        except BaseException:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _temp(self, dfd: int, name: str, st: os.stat_result, stale_before: float | None) -> int:
        """Bytes of a temp file still there (0 once swept)."""
        if not stat.S_ISREG(st.st_mode):
            if self.fix and stat.S_ISLNK(st.st_mode):
                _remove_at(dfd, name, st)
            return 0
        if self.fix and stale_before is not None and st.st_mtime < stale_before and _remove_at(dfd, name, st):
            return 0
        return st.st_size

    def scan(self, stale_before: float | None = None) -> tuple[list, int, int]:
        """``(entries, temp_bytes, junk)``: entries as ``(mtime, key, size, shard_fd, name)``; ``junk``
        counts what was removed at an entry's name."""
        entries, temp_bytes, junk = [], 0, 0
        for dfd in (self.v1, self.locks):
            if dfd is None:
                continue
            with os.scandir(dfd) as it:
                for e in it:
                    if e.name.startswith(TMP_PREFIX):
                        try:
                            temp_bytes += self._temp(dfd, e.name, e.stat(follow_symlinks=False), stale_before)
                        except OSError:
                            pass
        with os.scandir(self.objects) as it:
            shards = []
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shards.append(e.name)
                elif e.name.startswith(TMP_PREFIX):
                    temp_bytes += self._temp(self.objects, e.name, st, stale_before)
                elif self.fix and stat.S_ISLNK(st.st_mode):
                    _remove_at(self.objects, e.name, st)          # the link only: never entered
        for shard in shards:
            try:
                sfd = self._keep(os.open(shard, _DIR, dir_fd=self.objects))
            except OSError:
                continue
            with os.scandir(sfd) as it:
                for e in it:
                    name = e.name
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if name.startswith(TMP_PREFIX):
                        temp_bytes += self._temp(sfd, name, st, stale_before)
                    elif name.endswith(".knb") and _KEY_RE.match(name[:-4]):
                        if not _is_junk(st.st_mode):
                            entries.append((st.st_mtime, name[:-4], st.st_size, sfd, name))
                        elif self.fix and _remove_at(sfd, name, st):
                            junk += 1
                    elif self.fix and stat.S_ISLNK(st.st_mode):
                        _remove_at(sfd, name, st)
        return entries, temp_bytes, junk


class LocalStore:
    def __init__(self, root: str, max_size: int | None = DEFAULT_MAX_SIZE, *, allow_shared: bool = False):
        """The store under ``root``. Raises :class:`~kernbin.paths.UnsafeCacheDir` when ``root`` (or a
        directory of the store) belongs to another user or is writable by everyone, unless
        ``allow_shared`` (``KERNBIN_CACHE_ALLOW_SHARED=1``)."""
        self.root = os.path.join(root, "v1")
        self.objects = os.path.join(self.root, "objects")
        self.locks = os.path.join(self.root, "locks")
        self.max_size = max_size
        self.allow_shared = allow_shared
        self._events = os.path.join(self.root, "events.log")
        self._usage = _Usage(os.path.join(self.root, "usage"))
        self._shards: dict[str, int] = {}            # shard directory -> an fd opened without following links
        weakref.finalize(self, _close_all, self._shards)
        self._file_mode = 0o666 & ~_umask()
        try:
            os.makedirs(root, exist_ok=True)
        except FileExistsError:
            pass                                    # not a directory: refused just below
        check_cache_dir(root, os.stat(root), allow_shared=allow_shared)     # the root may be a symlink:
        rfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)  # the user chose it
        try:
            check_cache_dir(root, os.fstat(rfd), allow_shared=allow_shared)
            v1 = _open_subdir(rfd, "v1", root, allow_shared)
            try:
                for name in ("objects", "locks"):
                    os.close(_open_subdir(v1, name, self.root, allow_shared))
            finally:
                os.close(v1)
        finally:
            os.close(rfd)
        self._hits = _PendingHits(self._events)
        weakref.finalize(self, self._hits.flush)          # also runs at interpreter exit

    # -- entries ---------------------------------------------------------------
    def path(self, key: str) -> str:
        """Where the entry for ``key`` lives (KernbinError for a key that is not 64 hex digits)."""
        if not _KEY_RE.match(key):
            raise KernbinError(f"bad cache key {key!r}")
        return f"{self.objects}{os.sep}{key[:2]}{os.sep}{key}.knb"

    def get(self, key: str, *, touch: bool = True) -> NativeBinary | None:
        """The verified entry for ``key``, or None. A corrupt entry (or anything but a regular file at
        its name) is removed and counted; an entry that cannot be read (``EACCES``...) is a miss.
        ``touch`` marks it as just used (LRU); inspection passes False. Costs the same whatever the
        number of entries: two ``open``s, a ``read`` per section."""
        path = self.path(key)
        shard = path[:-len(key) - 5]
        dfd = self._shards.get(shard)
        if dfd is not None:
            native = self._read(dfd, key + ".knb", key, touch)
            if native is not None:
                return native               # else the shard may have been replaced since: look again
        try:
            dfd = os.open(shard, _DIR_PATH)                      # the shard, never through a symlink
        except OSError:
            return None
        old = self._shards.get(shard)
        self._shards[shard] = dfd           # kept open (at most 256): a hit costs one open, not two
        if old is not None:
            os.close(old)
        return self._read(dfd, key + ".knb", key, touch)

    def _read(self, dfd: int, name: str, key: str, touch: bool) -> NativeBinary | None:
        try:
            fd = os.open(name, _FILE, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError:                         # ELOOP (a symlink), ENXIO (a socket), EACCES (not ours)...
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                return None
            if _is_junk(st.st_mode):
                self._discard(dfd, name, st)
            return None                         # a regular file we may not read: a plain miss
        try:
            st = os.fstat(fd)
            if _is_junk(st.st_mode):            # a FIFO (opened non-blocking, never read), a directory...
                os.close(fd)
                self._discard(dfd, name, st)
                return None
            f = open(fd, "rb", buffering=0)
        except OSError:
            os.close(fd)
            return None
        try:
            with f:
                native = NativeBinary.read_from(f, st.st_size)   # sections straight into their buffers
                if key_for_info(native.info) != key:
                    raise InvalidBinary("entry's build info does not hash to its key (misplaced entry)")
                if touch and time.time() - st.st_mtime > _TOUCH_GRANULARITY:
                    try:
                        os.utime(fd)            # LRU recency, on the file we read (not a path)
                    except OSError:
                        pass
        except InvalidBinary:
            self._discard(dfd, name, st)
            return None
        except OSError:                         # EIO, a file truncated under us...: a miss
            return None
        return native

    def reject(self, key: str) -> bool:
        """Remove the entry for ``key`` because a device refused what it holds (intact bytes the
        runtime would not load: resealed, or a stale toolchain); counted ``corrupt``. False when
        there was none."""
        removed = self.delete(key)
        if removed:
            self.record("corrupt")
        return removed

    def _discard(self, dfd: int, name: str, st: os.stat_result) -> None:
        """Remove a bad entry (if it is still the file we looked at) and count it."""
        if _remove_at(dfd, name, st) and stat.S_ISREG(st.st_mode):
            self._usage.update(lambda u: u and (u[0] - st.st_size, u[1] - 1, u[2]))
        self.record("corrupt")

    def put(self, key: str, native: NativeBinary) -> str:
        """Publish atomically (temp file, fsync, rename); readers never see a torn entry. O(1): the
        size bound is checked against the running estimate (see the module docstring)."""
        if key_for_info(native.info) != key:
            raise KernbinError("refusing to store a binary under a key its build info does not hash to")
        path = self.path(key)
        shard = os.path.dirname(path)
        try:
            st = os.lstat(shard)
            if not stat.S_ISDIR(st.st_mode):        # a symlink (or file) where a shard belongs: unlink it
                os.unlink(shard)
                os.makedirs(shard, exist_ok=True)
        except FileNotFoundError:
            os.makedirs(shard, exist_ok=True)
        old_size, existed = 0, False
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                old_size, existed = st.st_size, True
            elif stat.S_ISDIR(st.st_mode):          # rename cannot replace a directory
                dfd = os.open(shard, _DIR_PATH)
                try:
                    _remove_at(dfd, os.path.basename(path), st)
                finally:
                    os.close(dfd)
        except FileNotFoundError:
            pass
        data = native.without_ir().to_bytes()
        atomic_write(path, data, mode=self._file_mode)
        if self.max_size is not None:
            delta, new = len(data) - old_size, 0 if existed else 1
            _, usage = self._usage.update(lambda u: u and (u[0] + delta, u[1] + new, u[2] + 1))
            if self._needs_scan(usage):
                self._auto_prune()
        return path

    def delete(self, key: str) -> bool:
        """Remove the entry for ``key`` (never through a symlink); True when something was removed."""
        path = self.path(key)
        try:
            dfd = os.open(os.path.dirname(path), _DIR_PATH)
        except OSError:
            return False
        try:
            try:
                st = os.stat(key + ".knb", dir_fd=dfd, follow_symlinks=False)
            except OSError:
                return False
            if not _remove_at(dfd, key + ".knb", st):
                return False
            if stat.S_ISREG(st.st_mode):
                self._usage.update(lambda u: u and (u[0] - st.st_size, u[1] - 1, u[2]))
            return True
        finally:
            os.close(dfd)

    def entries(self) -> list[dict]:
        """Every entry: key, size, last use (mtime), least recently used first."""
        try:
            with _Tree(self, fix=False) as t:
                found, _, _ = t.scan()
        except FileNotFoundError:
            return []
        return [{"key": k, "size": size, "last_used": mtime} for mtime, k, size, _, _ in sorted(found)]

    def prune(self, max_size: int) -> list[str]:
        """Evict least-recently-used entries until the store (temp files included) holds at most
        ``max_size`` bytes; also removes temp files left by writers that died more than an hour ago
        and junk (symlinks, FIFOs, directories) at entry names. Never follows a symlink."""
        with self._maintenance():
            evicted = self._prune_locked(max_size)
        if evicted:
            self.record("evicted", len(evicted))
        return evicted

    def _needs_scan(self, usage) -> bool:
        """Unknown usage, over the bound, or enough puts since the last scan to correct drift."""
        return usage is None or usage[0] > self.max_size or usage[2] >= max(_RESCAN_MIN, usage[1] // 2)

    def _auto_prune(self) -> None:
        """The bound check of a put: a full scan unless another process is doing one right now (it
        holds the maintenance lock; this put must not wait for it) or has just done one."""
        from filelock import Timeout
        try:
            with self._maintenance(timeout=0):
                if not self._needs_scan(self._usage.read()):    # another process has just scanned
                    return
                evicted = self._prune_locked(int(self.max_size * _LOW_WATER))
        except Timeout:
            return
        if evicted:
            self.record("evicted", len(evicted))

    def _prune_locked(self, target: int) -> list[str]:
        self._usage.repair()
        before = self._usage.read()
        with _Tree(self, fix=True) as t:
            entries, temp_bytes, junk = t.scan(stale_before=time.time() - _STALE_TMP_SECONDS)
            entries.sort()
            total = temp_bytes + sum(e[2] for e in entries)
            evicted = []
            for _, key, size, sfd, name in entries:
                if total <= target:
                    break
                try:
                    os.unlink(name, dir_fd=sfd)
                    evicted.append(key)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                total -= size
            left = len(entries) - len(evicted)
        self._reset_usage(before, total, left)
        if junk:
            self.record("corrupt", junk)
        return evicted

    def _reset_usage(self, before, total: int, entries: int) -> None:
        """Write the scanned totals, plus what other processes added while the scan ran."""
        def fn(now):
            if before is not None and now is not None:
                return total + now[0] - before[0], entries + now[1] - before[1], 0
            return total, entries, 0
        self._usage.update(fn)

    def clear(self) -> int:
        """Remove every entry, temp file and idle lock file; returns the number of entries removed.
        Never follows a symlink: a symlinked ``locks`` or shard directory is unlinked, not entered."""
        n = 0
        with self._maintenance():
            before = self._usage.read()
            with _Tree(self, fix=True) as t:
                entries, _, _ = t.scan(stale_before=time.time() - _STALE_TMP_SECONDS)
                for _, _, _, sfd, name in entries:
                    try:
                        os.unlink(name, dir_fd=sfd)
                        n += 1
                    except OSError:
                        pass
                self._clear_locks(t.locks)
            self._reset_usage(before, 0, 0)
        return n

    @staticmethod
    def _clear_locks(dfd: int) -> None:
        """Unlink lock files nobody holds (a held one keeps its builder's single flight)."""
        import fcntl
        with os.scandir(dfd) as it:
            names = [e.name for e in it]
        for name in names:
            try:
                fd = os.open(name, _FILE, dir_fd=dfd)
            except OSError:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if _is_junk(st.st_mode):
                    _remove_at(dfd, name, st)    # a symlink or socket: the link itself goes
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    _remove_at(dfd, name, st)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue                     # held by a builder right now
                _remove_at(dfd, name, st)
            finally:
                os.close(fd)

    # -- single flight -----------------------------------------------------------
    @contextmanager
    def build_lock(self, key: str, timeout: float):
        """Hold the build lock for ``key``; yields False when ``timeout`` ran out first.

        The lock is an ``flock`` on a per-key file: the kernel releases it when the
        holder exits or is killed, so a crashed builder never blocks others for long.
        """
        from filelock import FileLock, Timeout
        self.path(key)   # validates the key
        lock = FileLock(os.path.join(self.locks, key + ".lock"), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # -- statistics ---------------------------------------------------------------
    def record(self, name: str, value: float = 1) -> None:
        """Count an event: one small O_APPEND write (atomic between processes).
        ``hit`` is special: it counts one hit and adds ``value`` build seconds saved, and hits are
        batched in memory: written with the first hit more than a second after the last write, with
        any other event, on :meth:`counters` and at exit. So a hit costs no system call; a process
        killed by SIGKILL loses the hits it counted since its last write (statistics only)."""
        if name == "hit":
            self._hits.add(value)
            if time.monotonic() - self._hits.since < _FLUSH_SECONDS:
                return
            self._hits.flush()
            return
        self._hits.flush()
        _append(self._events, f"{name} {value}\n")

    def counters(self) -> dict:
        """Counters folded from the event log into stats.json (under the maintenance lock)."""
        self._hits.flush()
        stats_path = os.path.join(self.root, "stats.json")
        with self._maintenance():
            counts = dict.fromkeys(COUNTERS, 0)
            try:
                saved = json.loads(_read_small(stats_path, 1 << 20))
                counts.update({k: v for k, v in saved.items() if k in counts and isinstance(v, (int, float))})
            except (OSError, ValueError, AttributeError):
                pass
            try:
                os.replace(self._events, f"{self._events}.{os.getpid()}.folding")
            except FileNotFoundError:
                pass
            # also folds what a process that died mid-fold left behind
            foldings = [os.path.join(self.root, n) for n in os.listdir(self.root)
                        if n.startswith("events.log.") and n.endswith(".folding")]
            if foldings:
                for path in foldings:
                    try:
                        text = _read_small(path, 256 << 20).decode(errors="replace")
                    except OSError:
                        text = ""                # a symlink or FIFO: removed below, never read
                    for line in text.splitlines():
                        name, _, value = line.strip().partition(" ")
                        if name == "hit":          # one line per hit: "hit <build seconds saved>"
                            counts["hits"] += 1
                            name = "build_seconds_saved"
                        if name in counts:
                            try:
                                v = int(value)
                            except ValueError:
                                try:
                                    v = float(value)
                                except ValueError:
                                    continue
                            if v == v and abs(v) != float("inf"):      # no NaN / inf from a bad line
                                counts[name] += v
                atomic_write(stats_path, json.dumps(counts).encode(), mode=self._file_mode)
                for path in foldings:
                    self._remove(path)
        counts["build_seconds_saved"] = round(counts["build_seconds_saved"], 6)
        return counts

    def stats(self) -> dict:
        """Entries and bytes counted from the files (a scan), the bound, and the counters."""
        entries = self.entries()
        return {"entries": len(entries), "bytes": sum(e["size"] for e in entries),
                "max_size": self.max_size, **self.counters()}

    # -- helpers ------------------------------------------------------------------
    @contextmanager
    def _maintenance(self, timeout: float = 60):
        from filelock import FileLock
        with FileLock(os.path.join(self.root, ".maintenance.lock"), timeout=timeout):
            yield

    def _remove(self, path: str) -> bool:
        """Unlink ``path`` (never what a symlink there points to)."""
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False


def _read_small(path: str, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; OSError for a symlink, FIFO, directory or more."""
    fd = os.open(path, _FILE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise OSError(errno.EINVAL, "not a small regular file", path)
        return read_fd(fd, st.st_size)
    finally:
        os.close(fd)
