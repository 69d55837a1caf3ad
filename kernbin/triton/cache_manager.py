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
process (mode 0700, removed at exit) and that path is returned. Dump and override managers
(``TRITON_KERNEL_DUMP``, ``TRITON_KERNEL_OVERRIDE``) are directories for people to read and edit: they
stay Triton's ``FileCacheManager``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import threading
from typing import Dict, Optional

from triton.runtime.cache import CacheManager as _TritonCacheManager
from triton.runtime.cache import FileCacheManager

from .._fs import atomic_write

__all__ = ["CacheManager", "entry_key"]

_TOOLCHAIN_BACKEND = "triton-cache"
_GROUP_PREFIX = "__grp__"
_MAX_NAME = 255
_stage_root: str | None = None
_stage_lock = threading.Lock()


def _staging() -> str:
    global _stage_root
    with _stage_lock:
        if _stage_root is None:
            _stage_root = tempfile.mkdtemp(prefix="kernbin-triton-")        # 0700, ours alone
            atexit.register(shutil.rmtree, _stage_root, True)
        return _stage_root


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
            from ..api import default_cache
            self._cache = default_cache()
            self._dir = os.path.join(_staging(), key)
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

    def _materialize(self, filename: str, data: bytes) -> str:
        if os.sep in filename or filename in ("", ".", "..") or len(filename) > _MAX_NAME:
            raise ValueError(f"Triton cache file name {filename!r} is not a plain file name")
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        path = os.path.join(self._dir, filename)
        atomic_write(path, data, durable=False)                  # a scratch copy: no fsync
        return path

    # -- Triton's interface ------------------------------------------------------------------------
    def get_file(self, filename) -> Optional[str]:
        """The path of a verified copy of ``filename``, or None (a miss)."""
        if self._files is not None:
            return self._files.get_file(filename)
        data = self._read(filename)
        return None if data is None else self._materialize(filename, data)

    def put(self, data, filename, binary=True) -> str:
        """Store ``data`` as ``filename`` (in kernbin's cache, and the remote tier when configured)."""
        if self._files is not None:
            return self._files.put(data, filename, binary=binary)
        if not isinstance(data, bytes):
            data = str(data).encode("utf-8")
        self._cache.put(entry_key(self.key, filename), self._native(filename, data))
        self._written[filename] = hashlib.sha256(data).hexdigest()
        return self._materialize(filename, data)

    def get_group(self, filename: str) -> Optional[Dict[str, str]]:
        """Every file of the group, verified and matching the digests the group recorded, or None."""
        if self._files is not None:
            return self._files.get_group(filename)
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
                    raise RuntimeError(f"kernbin Triton cache: group {filename!r} names {child!r}, "
                                       f"which was never stored")
                digest = hashlib.sha256(data).hexdigest()
            children[child] = digest
        path = self.put(json.dumps({"children": children}, sort_keys=True), _GROUP_PREFIX + filename)
        self._cache.local.record("builds")
        return path
