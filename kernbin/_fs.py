"""Safe file access, one copy for the whole package.

- :func:`atomic_write`: crash-safe publish (temp file in the same directory, fsync,
  rename, fsync of the directory). A reader sees the old file or the whole new one; a
  writer killed midway leaves only a ``.tmp-*`` file behind (the cache sweeps those).
- :func:`read_regular_file`: bounded read of a regular file. FIFOs, devices and
  directories are refused before anything is read (``/dev/zero`` would never end, a
  FIFO would block), and a file larger than the bound is refused without reading it.
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import KernbinError

__all__ = ["atomic_write", "read_regular_file", "read_fd", "TMP_PREFIX", "FileRefused"]

#: every temp file kernbin writes starts with this (the cache's stale-temp sweep looks for it)
TMP_PREFIX = ".tmp-"


class FileRefused(KernbinError):
    """A path that is not a regular file of acceptable size. ``path`` and ``rule`` say which."""

    def __init__(self, path: str, rule: str, reason: str):
        self.path, self.rule, self.reason = path, rule, reason
        super().__init__(f"{path}: {reason}")


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Publish ``data`` at ``path`` atomically (see the module docstring); ``durable=False`` skips the
    fsyncs (a scratch copy that may vanish with a crash, never half-written)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    except OSError as e:              # name the file the caller asked for, not a temp name
        raise type(e)(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if not durable:
        return
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_fd(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``, looping over short reads, stopping at end of file."""
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_regular_file(path: str | os.PathLike, limit: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`FileRefused` otherwise.
    Opened non-blocking so that a FIFO cannot hang the open itself."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
            raise FileRefused(path, "not-regular", f"{what} is {kind}")
        if st.st_size > limit:
            raise FileRefused(path, "too-large", f"{what} is {st.st_size} bytes, more than the {limit}-byte limit")
        data = read_fd(fd, st.st_size + 1)       # one more byte tells a file that grew meanwhile
        if len(data) > limit:
            raise FileRefused(path, "too-large", f"{what} grew past the {limit}-byte limit while being read")
        return data
    finally:
        os.close(fd)
