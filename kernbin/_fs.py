"""Safe file access, one copy for the whole package.

- :func:`atomic_write`: crash-safe publish (temp file in the same directory, fsync,
  rename, fsync of the directory). A reader sees the old file or the whole new one; a
  writer killed midway leaves only a ``.tmp-*`` file behind (the cache sweeps those).
  It replaces only a regular file (or a symbolic link, itself, never what it points to):
  a device node, FIFO, socket or directory at the path is refused (:func:`check_output`),
  since ``rename`` would put a regular file in its place (``-o /dev/full`` as root).
- :func:`read_regular_file`: bounded read of a regular file. FIFOs, devices and
  directories are refused before anything is read (``/dev/zero`` would never end, a
  FIFO would block), and a file larger than the bound is refused without reading it.
"""

from __future__ import annotations

import os
import stat

from .errors import KernbinError

__all__ = ["atomic_write", "check_output", "read_regular_file", "read_fd", "open_regular", "TMP_PREFIX",
           "FileRefused"]

#: every temp file kernbin writes starts with this (the cache's stale-temp sweep looks for it)
TMP_PREFIX = ".tmp-"


class FileRefused(KernbinError):
    """A path that is not a regular file of acceptable size. ``path`` and ``rule`` say which."""

    def __init__(self, path: str, rule: str, reason: str):
        self.path, self.rule, self.reason = path, rule, reason
        super().__init__(f"{path}: {reason}")


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path: str | os.PathLike, *, what: str = "output") -> None:
    """Refuse (:class:`FileRefused`, rule ``"not-regular"``) an output path where something other than
    a regular file or a symbolic link exists: a directory, a device node, a FIFO or a socket. Nothing
    there, or a regular file, is fine (it is replaced). A symbolic link is replaced itself, so what it
    points to is never written."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        return                      # (a path the write itself will fail on, with its own error)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise FileRefused(path, "not-regular", f"{what} path is {_kind(st.st_mode)}, not a regular file: "
                                               "kernbin writes only regular files")


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Publish ``data`` at ``path`` atomically (see the module docstring); ``durable=False`` skips the
    fsyncs (a scratch copy that may vanish with a crash, never half-written). :class:`FileRefused`
    (rule ``"not-regular"``) when the path holds a directory, device node, FIFO or socket."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    check_output(path)
    try:
        import tempfile                  # (writers only: the load path imports none of it)
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
        check_output(path)              # again, just before the rename (it may have appeared meanwhile)
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


def open_regular(path: str | os.PathLike, *, what: str = "file") -> int:
    """A file descriptor (read-only) of the regular file at ``path``; :class:`FileRefused` (rule
    ``"not-regular"``) for a directory, device, FIFO or socket. Opened non-blocking, so that a FIFO
    cannot hang the open itself; the caller closes it."""
    return _open_regular(os.fspath(path), what)[0]


def _open_regular(path: str, what: str) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, "not-regular", f"{what} is {_kind(st.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular_file(path: str | os.PathLike, limit: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`FileRefused` otherwise.
    Opened non-blocking so that a FIFO cannot hang the open itself."""
    path = os.fspath(path)
    fd, st = _open_regular(path, what)
    try:
        size = st.st_size
        if size > limit:
            raise FileRefused(path, "too-large", f"{what} is {size} bytes, more than the {limit}-byte limit")
        data = os.read(fd, size + 1)             # one more byte tells a file that grew meanwhile
        if len(data) != size:                    # it grew, or a short read (FUSE, NFS): read on, bounded
            data += read_fd(fd, limit + 1 - len(data))
        if len(data) > limit:
            raise FileRefused(path, "too-large", f"{what} grew past the {limit}-byte limit while being read")
        return data
    finally:
        os.close(fd)
