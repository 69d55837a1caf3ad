"""Where kernbin keeps files: ``KERNBIN_CACHE_DIR``, default the user cache directory; and the
check that a cache directory is not one other users can write (whoever can write the cache can
put native code on your GPU, so such a directory is refused unless sharing was asked for).
"""

from __future__ import annotations

import os
import stat

from .errors import KernbinError

__all__ = ["cache_dir", "check_cache_dir", "UnsafeCacheDir"]


class UnsafeCacheDir(KernbinError):
    """A cache directory other users could write, refused. ``path`` is the directory; ``rule`` says why:
    ``"owner"`` (owned by another user), ``"world-writable"`` (writable by everyone, no sticky bit) or
    ``"not-a-directory"``; ``uid`` and ``mode`` are what was found. ``KERNBIN_CACHE_ALLOW_SHARED=1``
    accepts the first two for a cache shared on purpose."""

    def __init__(self, path: str, rule: str, reason: str, *, uid: int | None = None, mode: int | None = None):
        self.path, self.rule, self.reason, self.uid, self.mode = path, rule, reason, uid, mode
        super().__init__(f"refusing cache directory {path}: {reason}")


def cache_dir() -> str:
    env = os.environ.get("KERNBIN_CACHE_DIR")
    if env:
        return env
    from platformdirs import user_cache_dir
    return user_cache_dir("kernbin", appauthor=False)


def check_cache_dir(path: str, st: os.stat_result, *, allow_shared: bool = False) -> None:
    """Raise :class:`UnsafeCacheDir` unless ``st`` (the directory's stat) is a directory of this user
    that not everyone can write. A group-writable directory passes: group sharing is a choice its
    owner made; a sticky world-writable one passes too (others cannot remove or rename our files)."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDir(path, "not-a-directory", "not a directory", uid=st.st_uid, mode=st.st_mode)
    if allow_shared:
        return
    if st.st_uid != os.geteuid():
        raise UnsafeCacheDir(path, "owner", f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
                             "set KERNBIN_CACHE_ALLOW_SHARED=1 to use a cache shared on purpose",
                             uid=st.st_uid, mode=st.st_mode)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafeCacheDir(path, "world-writable", f"writable by every user (mode {stat.S_IMODE(st.st_mode):o}, "
                             "no sticky bit): anyone could plant native code in it; chmod o-w it, or set "
                             "KERNBIN_CACHE_ALLOW_SHARED=1", uid=st.st_uid, mode=st.st_mode)
