"""Where kernbin keeps files: ``KERNBIN_CACHE_DIR``, default the user cache directory."""

from __future__ import annotations

import os

__all__ = ["cache_dir"]


def cache_dir() -> str:
    env = os.environ.get("KERNBIN_CACHE_DIR")
    if env:
        return env
    from platformdirs import user_cache_dir
    return user_cache_dir("kernbin", appauthor=False)
