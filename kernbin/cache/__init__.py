"""Content-addressed store of native binaries: key derivation, a local directory
store and remote tiers (Redis, HTTP; ``remote.py`` is what they share). Stores bytes and
metadata only; never imports a backend.
"""

from .key import CACHE_FORMAT, cache_key, key_for_info
from .local import LocalStore, UnsafeCacheDir, parse_size
from .tiered import Cache

__all__ = ["CACHE_FORMAT", "cache_key", "key_for_info", "LocalStore", "UnsafeCacheDir", "parse_size", "Cache"]
