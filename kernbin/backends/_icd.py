"""Make the OpenCL ICD loader see Intel's CPU runtime from PyPI (``intel-opencl-rt``).

The wheel's ``.icd`` files point at its build machine's path, so ICD loaders cannot
find it. When it is installed and the user has not set ``OCL_ICD_VENDORS``, kernbin
points the loader at a small vendors directory holding the system's ``.icd`` files
plus one for the wheel's ``libintelocl.so``. Used by the OpenCL backend and, for
drivers layered on OpenCL (the project's Level Zero test driver), by the Level Zero
backend. Imports no runtime.

The loader ``dlopen``s every library an ``.icd`` file there names, in every kernbin
process, so the directory must hold exactly what kernbin wrote. It is published as
``<cache>/icd/<digest>`` (a ``mkdtemp`` directory, 0700, renamed into place) and reused only
when it is a real directory of this user that nobody else can write, holding exactly the
expected files (regular, ours, not group/other-writable) with exactly the expected bytes.
Anything else (an extra ``.icd`` dropped there, a changed one, a symlink) is moved aside and
the directory written afresh; if that fails, this process uses a fresh private directory
of its own. When the cache directory itself is writable by others (a group-shared cache),
the published copy lives in ``$TMPDIR/kernbin-icd-<uid>`` (0700) instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time

__all__ = ["wire_intel_cpu_runtime"]

_SYSTEM_VENDORS = "/etc/OpenCL/vendors"
_ICD_NAME = "kernbin-intel-cpu.icd"
_TMP = ".tmp-icd-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _find_intel_cpu_runtime() -> str | None:
    """Path of ``libintelocl.so`` from the ``intel-opencl-rt`` wheel, if installed. The wheel puts it
    in ``<prefix>/lib`` (two levels above its ``site-packages``): looked up there first, next to the
    wheel's metadata, before asking ``importlib.metadata`` (which costs ~20 ms of imports)."""
    import sys
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            lib = os.path.join(os.path.dirname(os.path.dirname(entry)), "libintelocl.so")
            if os.path.exists(lib) and any(n.startswith("intel_opencl_rt-") and n.endswith(".dist-info")
                                           for n in os.listdir(entry)):
                return os.path.realpath(lib)
    from importlib import metadata
    try:
        dist = metadata.distribution("intel-opencl-rt")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "libintelocl.so":
            path = os.path.realpath(f.locate())
            if os.path.exists(path):
                return path
    return None


def _wanted_icds(lib: str) -> dict[str, bytes]:
    """The files the vendors directory must hold: the system's ``.icd`` files and ours for ``lib``."""
    from .._fs import FileRefused, read_regular_file
    icds = {}
    if os.path.isdir(_SYSTEM_VENDORS):
        for name in sorted(os.listdir(_SYSTEM_VENDORS)):
            if name.endswith(".icd") and name != _ICD_NAME:
                try:
                    icds[name] = read_regular_file(os.path.join(_SYSTEM_VENDORS, name), 1 << 16, what="ICD file")
                except (OSError, FileRefused):
                    pass
    icds[_ICD_NAME] = (lib + "\n").encode()
    return icds


def _only_mine(st: os.stat_result) -> bool:
    """Owned by this user, writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _holds_exactly(path: str, icds: dict[str, bytes]) -> bool:
    """``path`` is a real directory of ours (no symlink followed) that no one else can write, holding
    exactly ``icds``: the same names, each a regular file of ours with the same bytes."""
    try:
        dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return False
    try:
        if not _only_mine(os.fstat(dfd)) or sorted(os.listdir(dfd)) != sorted(icds):
            return False
        for name, data in icds.items():
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or not _only_mine(st) or st.st_size != len(data):
                    return False
                if os.read(fd, len(data) + 1) != data:
                    return False
            finally:
                os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def _write_private(parent: str, icds: dict[str, bytes]) -> str:
    """A fresh directory (``mkdtemp``: 0700, a name nobody could have guessed) holding ``icds``."""
    d = tempfile.mkdtemp(dir=parent, prefix=_TMP)
    for name, data in icds.items():
        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return d


def _remove_tree(path: str) -> None:
    """Remove ``path``: a directory with its contents (shutil's descriptor-based walk never follows
    a symlink), anything else unlinked."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _safe_parent(path: str) -> bool:
    """``path`` is (made, 0700, if missing) a real directory of ours nobody else can write, inside a
    directory where nobody else can rename it away (ours or root's, not writable by others or sticky)."""
    try:
        up = os.stat(os.path.dirname(path))
    except OSError:
        return False
    if up.st_uid not in (os.geteuid(), 0) or (up.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                                              and not up.st_mode & stat.S_ISVTX):
        return False
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _only_mine(st)


def _sweep(parent: str) -> None:
    """Leftovers of processes that died while publishing, older than an hour."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_TMP)]
    except OSError:
        return
    for name in names:
        p = os.path.join(parent, name)
        try:
            if time.time() - os.lstat(p).st_mtime > 3600:
                _remove_tree(p)
        except OSError:
            pass


def _publish(parent: str, digest: str, icds: dict[str, bytes]) -> str:
    """``parent/digest`` when it holds exactly ``icds`` (writing it if missing, replacing it if it
    holds anything else); a fresh private directory when it cannot be replaced."""
    vendors = os.path.join(parent, digest)
    if _holds_exactly(vendors, icds):
        return vendors
    _sweep(parent)
    private = _write_private(parent, icds)
    try:
        os.rename(private, vendors)             # missing (or empty): published
        return vendors
    except OSError:
        pass
    if _holds_exactly(vendors, icds):           # another process published it meanwhile
        _remove_tree(private)
        return vendors
    aside = f"{private}-replaced"               # something else is there: move it aside, never into it
    try:
        os.rename(vendors, aside)
        os.rename(private, vendors)
    except OSError:
        return private                          # used as it is, by this process only
    _remove_tree(aside)
    return vendors


def _vendors_dir(icds: dict[str, bytes]) -> str:
    from blake3 import blake3
    digest = blake3(repr(sorted(icds.items())).encode()).hexdigest()[:16]
    from ..paths import cache_dir
    try:
        os.makedirs(cache_dir(), exist_ok=True)     # a first run: the cache directory may not exist yet
    except OSError:
        pass
    for parent in (os.path.join(cache_dir(), "icd"),
                   os.path.join(tempfile.gettempdir(), f"kernbin-icd-{os.geteuid()}")):
        if _safe_parent(parent):
            try:
                return _publish(parent, digest, icds)
            except OSError:
                continue
    return _write_private(tempfile.gettempdir(), icds)


def wire_intel_cpu_runtime() -> str | None:
    """Make the ICD loader see the PyPI Intel CPU runtime. Returns the vendors path used."""
    if "OCL_ICD_VENDORS" in os.environ:
        return os.environ["OCL_ICD_VENDORS"]
    lib = _find_intel_cpu_runtime()
    if lib is None:
        return None
    vendors = _vendors_dir(_wanted_icds(lib))
    os.environ["OCL_ICD_VENDORS"] = vendors
    return vendors
