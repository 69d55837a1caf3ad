"""Triton's cache in kernbin's cache: ``TRITON_CACHE_MANAGER=kernbin.triton:CacheManager``.

Triton 3.6 reads the class from ``knobs.cache.manager_class`` (the environment variable) and makes one
per compile key: ``CacheManager(key, override=False, dump=False)``, then ``get_group`` (a hit needs
every file of the group), ``put`` per stage output, ``put_group`` last; its C helpers (``cuda_utils``,
the per-signature launcher) go through ``get_file`` / ``put``.

Every file Triton stores becomes one kernbin cache entry (a ``.knb`` whose native section is the
file's bytes; the key is derived from Triton's key and the file name), so kernbin's rules apply to
Triton's cache: every read is verified (BLAKE3 digests, the entry hashes to its key; a corrupted entry
is removed, counted ``corrupt`` and is a miss, never handed to Triton), the size bound and LRU
eviction, ``kernbin cache stats`` (a kernel found: one ``hits`` per file; a kernel compiled:
``misses`` then ``builds``), and the Redis tier signed with ``KERNBIN_CACHE_HMAC_KEY``
(``KERNBIN_REMOTE``), which Triton's own Redis backend does not have. A group records the SHA-256 of
each member, so a group is only a hit with exactly the files it was written with.

Triton opens files by path, so a verified entry is written to a private staging directory of this
process (``mkdtemp``: mode 0700, removed at exit by the process that made it; a forked child makes its
own; one that vanished or is no longer ours alone is made again, never re-created by name) and that
path is returned. Triton's key must be ``[0-9A-Za-z_-]{1,128}`` and a file name a plain name: anything
else is a :class:`~kernbin.errors.KernbinError` on a store and a miss on a read; an unusable
``KERNBIN_CACHE_DIR`` is a :class:`~kernbin.errors.KernbinError` that names it. Dump and override managers
(``TRITON_KERNEL_DUMP``, ``TRITON_KERNEL_OVERRIDE``) are directories for people to read and edit: they
stay Triton's ``FileCacheManager``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from typing import Dict, Optional

from triton.runtime.cache import CacheManager as _TritonCacheManager
from triton.runtime.cache import FileCacheManager

from .._fs import atomic_write
from ..errors import KernbinError

__all__ = ["CacheManager", "entry_key"]

_TOOLCHAIN_BACKEND = "triton-cache"
_GROUP_PREFIX = "__grp__"
_MAX_NAME = 255
_KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")
_stage_root: str | None = None
_stage_pid: int | None = None
_stage_lock = threading.Lock()


def _remove_staging(root: str, pid: int) -> None:
    """atexit: only the process that made the directory removes it (a forked child inherits the hook)."""
    if os.getpid() == pid:
        shutil.rmtree(root, True)


def _ours(root: str) -> bool:
    """Whether ``root`` is still the directory mkdtemp made: a real directory (not a link), ours, 0700."""
    try:
        st = os.lstat(root)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


def _staging() -> str:
    """This process's private staging directory (made again if it vanished or was tampered with)."""
    global _stage_root, _stage_pid
    with _stage_lock:
        pid = os.getpid()
        if _stage_root is None or _stage_pid != pid or not _ours(_stage_root):
            root = tempfile.mkdtemp(prefix="kernbin-triton-")                # 0700, ours alone
            atexit.register(_remove_staging, root, pid)
            _stage_root, _stage_pid = root, pid
        return _stage_root


def _after_fork_in_child() -> None:
    global _stage_root, _stage_pid, _stage_lock
    _stage_root = _stage_pid = None                 # the child makes its own at its first use
    _stage_lock = threading.Lock()                  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _plain_name(filename) -> bool:
    return (isinstance(filename, str) and 0 < len(filename) <= _MAX_NAME and filename not in (".", "..")
            and "/" not in filename and os.sep not in filename and "\0" not in filename
            and (os.altsep is None or os.altsep not in filename))


def _toolchain():
    from triton import __version__ as triton_version

    from .. import __version__
    from ..device import Toolchain
    return Toolchain(_TOOLCHAIN_BACKEND, f"Triton {triton_version}", "",
                     {"kernbin": __version__, "triton": triton_version})


def _name_digest(key: str, filename: str) -> str:
    return hashlib.sha256(f"kernbin-triton-cache\0{key}\0{filename}".encode("utf-8", "surrogatepass")).hexdigest()


def entry_key(key: str, filename: str) -> str:
    """The kernbin cache key of Triton's file ``filename`` under Triton's key ``key``."""
    from ..cache import cache_key
    from ..options import BuildOptions
    return cache_key(_name_digest(key, filename), _toolchain(), "", BuildOptions(()))


class CacheManager(_TritonCacheManager):
    """Triton's ``CacheManager`` interface on kernbin's cache (see the module docstring)."""

    def __init__(self, key, override=False, dump=False):
        self.key = key
        self._files = FileCacheManager(key, override=override, dump=dump) if (override or dump) else None
        if self._files is None:
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise KernbinError(f"kernbin Triton cache: key {key!r} is not [0-9A-Za-z_-]{{1,128}}")
            from ..api import default_cache
            try:
                self._cache = default_cache()
            except OSError as e:
                raise KernbinError(f"kernbin Triton cache: the kernbin cache directory (KERNBIN_CACHE_DIR="
                                   f"{os.environ.get('KERNBIN_CACHE_DIR', '')!r}) is unusable: {e}") from e
            self._written: dict[str, str] = {}            # filename -> sha256 of what this manager stored

    # -- kernbin entries ---------------------------------------------------------------------------
    def _native(self, filename: str, data: bytes):
        from ..artifact import BuildInfo, NativeBinary
        from ..device import Requirements
        from ..options import BuildOptions
        info = BuildInfo(target="triton-cache", toolchain=_toolchain(), requires=Requirements("triton-file", {}),
                         ir_kind="none", ir_sha256=_name_digest(self.key, filename), options=BuildOptions(()),
                         flags=(), binary_format="triton-file", built_on="Triton cache",
                         extra={"triton_key": self.key, "filename": filename})
        return NativeBinary(binary=bytes(data), info=info)

    def _read(self, filename: str) -> bytes | None:
        native = self._cache.get(entry_key(self.key, filename))
        if native is None:
            return None
        if native.info.extra.get("filename") != filename or native.info.extra.get("triton_key") != self.key:
            return None                                          # a hash collision: never in practice
        return native.binary

    @staticmethod
    def _check_name(filename) -> None:
        if not _plain_name(filename):
            raise KernbinError(f"kernbin Triton cache: file name {filename!r} is not a plain file name")

    def _key_dir(self) -> str:
        """``<staging>/<key>``: made inside the private root (never the root itself by name)."""
        d = os.path.join(_staging(), self.key)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                raise KernbinError(f"kernbin Triton cache: {d} is not this process's directory") from None
        return d

    def _materialize(self, filename: str, data: bytes) -> str:
        self._check_name(filename)
        path = os.path.join(self._key_dir(), filename)
        atomic_write(path, data, durable=False)                  # a scratch copy: no fsync
        return path

    # -- Triton's interface ------------------------------------------------------------------------
    def get_file(self, filename) -> Optional[str]:
        """The path of a verified copy of ``filename``, or None (a miss)."""
        if self._files is not None:
            return self._files.get_file(filename)
        if not _plain_name(filename):
            return None
        data = self._read(filename)
        return None if data is None else self._materialize(filename, data)

    def put(self, data, filename, binary=True) -> str:
        """Store ``data`` as ``filename`` (in kernbin's cache, and the remote tier when configured)."""
        if self._files is not None:
            return self._files.put(data, filename, binary=binary)
        self._check_name(filename)                               # before anything is stored
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            data = str(data).encode("utf-8")
        self._cache.put(entry_key(self.key, filename), self._native(filename, data))
        self._written[filename] = hashlib.sha256(data).hexdigest()
        return self._materialize(filename, data)

    def get_group(self, filename: str) -> Optional[Dict[str, str]]:
        """Every file of the group, verified and matching the digests the group recorded, or None."""
        if self._files is not None:
            return self._files.get_group(filename)
        if not _plain_name(filename) or not _plain_name(_GROUP_PREFIX + filename):
            self._cache.local.record("misses")
            return None
        raw = self._read(_GROUP_PREFIX + filename)
        group = None
        if raw is not None:
            try:
                group = json.loads(raw)
            except ValueError:
                group = None
        children = group.get("children") if isinstance(group, dict) else None
        if not isinstance(children, dict):
            self._cache.local.record("misses")
            return None
        out = {}
        for child, digest in children.items():
            if not _plain_name(child) or not isinstance(digest, str):
                self._cache.local.record("misses")             # a group naming no plain file: a miss
                return None
            data = self._read(child)
            if data is None or hashlib.sha256(data).hexdigest() != digest:
                self._cache.local.record("misses")
                return None
            out[child] = self._materialize(child, data)
        return out

    def put_group(self, filename: str, group: Dict[str, str]):
        """Record the group (its members and their digests) last: the commit of a compile."""
        if self._files is not None:
            return self._files.put_group(filename, group)
        children = {}
        for child in group:
            digest = self._written.get(child)
            if digest is None:
                data = self._read(child)
                if data is None:
                    raise KernbinError(f"kernbin Triton cache: group {filename!r} names {child!r}, "
                                       f"which was never stored")
                digest = hashlib.sha256(data).hexdigest()
            children[child] = digest
        path = self.put(json.dumps({"children": children}, sort_keys=True), _GROUP_PREFIX + filename)
        self._cache.local.record("builds")
        return path
