"""The local directory store.

Layout under the cache root (``KERNBIN_CACHE_DIR``)::

    v1/objects/<k[:2]>/<key>.knb   entries (.knb without the IR), published atomically
    v1/locks/<key>.lock             per-key build locks (flock: released when the holder dies)
    v1/events.log                   append-only counters, one "<name> <value>" line per event
    v1/stats.json                   counters folded in from events.log by `stats()`
    v1/.maintenance.lock            serialises eviction and folding

Every read is verified (all checksums of the ``.knb`` and that its build info hashes
to the key it was found under); a bad entry is removed, counted, and is a miss.
Recency for LRU eviction is the file's mtime, refreshed on a hit (at most once a second).
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import weakref
from contextlib import contextmanager

from .._fs import TMP_PREFIX, atomic_write
from ..artifact import NativeBinary
from ..errors import InvalidBinary, KernbinError
from .key import key_for_info

__all__ = ["LocalStore", "parse_size", "DEFAULT_MAX_SIZE", "COUNTERS"]

DEFAULT_MAX_SIZE = 2 << 30          # 2 GiB
COUNTERS = ("hits", "misses", "builds", "corrupt", "evicted", "remote_hits", "remote_errors",
            "rejected", "build_seconds_saved")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_STALE_TMP_SECONDS = 3600
_TOUCH_GRANULARITY = 1.0    # seconds: LRU recency is refreshed at most this often per entry
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40,
          "TIB": 1 << 40}


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
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


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


class LocalStore:
    def __init__(self, root: str, max_size: int | None = DEFAULT_MAX_SIZE):
        self.root = os.path.join(root, "v1")
        self.objects = os.path.join(self.root, "objects")
        self.locks = os.path.join(self.root, "locks")
        self.max_size = max_size
        self._events = os.path.join(self.root, "events.log")
        self._hits = _PendingHits(self._events)
        weakref.finalize(self, self._hits.flush)          # also runs at interpreter exit
        os.makedirs(self.objects, exist_ok=True)
        os.makedirs(self.locks, exist_ok=True)

    # -- entries ---------------------------------------------------------------
    def path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise KernbinError(f"bad cache key {key!r}")
        return f"{self.objects}{os.sep}{key[:2]}{os.sep}{key}.knb"

    def get(self, key: str, *, touch: bool = True) -> NativeBinary | None:
        """The verified entry for ``key``, or None. A corrupt entry is removed and counted.
        ``touch`` marks it as just used (LRU); inspection passes False."""
        path = self.path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                native = NativeBinary.read_from(f, st.st_size)   # sections straight into their buffers
            if key_for_info(native.info) != key:
                raise InvalidBinary("entry's build info does not hash to its key (misplaced entry)")
            mtime = st.st_mtime
        except FileNotFoundError:
            return None
        except InvalidBinary:
            self._remove(path)
            self.record("corrupt")
            return None
        if touch and time.time() - mtime > _TOUCH_GRANULARITY:
            try:
                os.utime(path)          # LRU recency
            except OSError:
                pass
        return native

    def put(self, key: str, native: NativeBinary) -> str:
        """Publish atomically (temp file, fsync, rename); readers never see a torn entry."""
        if key_for_info(native.info) != key:
            raise KernbinError("refusing to store a binary under a key its build info does not hash to")
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, native.without_ir().to_bytes())
        if self.max_size is not None:
            self.prune(self.max_size, _only_if_over=True)
        return path

    def delete(self, key: str) -> bool:
        return self._remove(self.path(key))

    def entries(self) -> list[dict]:
        """Every entry: key, size, last use (mtime), least recently used first."""
        out = []
        try:
            shards = os.listdir(self.objects)
        except FileNotFoundError:
            return out
        for shard in shards:
            d = os.path.join(self.objects, shard)
            try:
                names = os.listdir(d)
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if not name.endswith(".knb") or name.startswith("."):
                    continue
                try:
                    st = os.stat(os.path.join(d, name))
                except FileNotFoundError:
                    continue
                out.append({"key": name[:-4], "size": st.st_size, "last_used": st.st_mtime})
        out.sort(key=lambda e: (e["last_used"], e["key"]))
        return out

    def prune(self, max_size: int, _only_if_over: bool = False) -> list[str]:
        """Evict least-recently-used entries until the store holds at most ``max_size`` bytes;
        also removes temp files left by writers that died more than an hour ago."""
        entries = self.entries()
        total = sum(e["size"] for e in entries)
        if _only_if_over and total <= max_size:
            return []
        evicted = []
        with self._maintenance():
            entries = self.entries()
            total = sum(e["size"] for e in entries)
            for e in entries:
                if total <= max_size:
                    break
                if self._remove(self.path(e["key"])):
                    total -= e["size"]
                    evicted.append(e["key"])
            self._remove_stale_tmp()
        if evicted:
            self.record("evicted", len(evicted))
        return evicted

    def clear(self) -> int:
        n = 0
        with self._maintenance():
            for e in self.entries():
                n += self._remove(self.path(e["key"]))
            for name in os.listdir(self.locks):
                self._remove(os.path.join(self.locks, name))
        return n

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
                with open(stats_path) as f:
                    saved = json.load(f)
                counts.update({k: v for k, v in saved.items() if k in counts and isinstance(v, (int, float))})
            except (OSError, ValueError):
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
                    with open(path) as f:
                        for line in f:
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
                atomic_write(stats_path, json.dumps(counts).encode())
                for path in foldings:
                    self._remove(path)
        counts["build_seconds_saved"] = round(counts["build_seconds_saved"], 6)
        return counts

    def stats(self) -> dict:
        entries = self.entries()
        return {"entries": len(entries), "bytes": sum(e["size"] for e in entries),
                "max_size": self.max_size, **self.counters()}

    # -- helpers ------------------------------------------------------------------
    @contextmanager
    def _maintenance(self):
        from filelock import FileLock
        with FileLock(os.path.join(self.root, ".maintenance.lock"), timeout=60):
            yield

    def _remove(self, path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def _remove_stale_tmp(self) -> None:
        """Temp files of writers that died, older than an hour: in the store's own directories
        (its root, ``objects/`` and below, ``locks/``), never through a symlink."""
        now = time.time()
        if os.path.islink(self.root) or os.path.islink(self.objects):
            return                      # never sweep through a symlink: it may lead anywhere
        places = [(self.root, [n for n in os.listdir(self.root)])] + \
            [(d, names) for d, _, names in os.walk(self.objects)] + [(self.locks, os.listdir(self.locks))]
        for dirpath, names in places:
            for name in names:
                if name.startswith(TMP_PREFIX):
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(p)
                        if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TMP_SECONDS:
                            os.unlink(p)
                    except OSError:
                        pass
