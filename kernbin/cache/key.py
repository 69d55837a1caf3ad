"""Cache keys: a SHA-256 of everything that changes the native binary ("built by").

See ``docs/cache.md`` for the reason behind each part. In short:

- ``ir``: the IR's content hash -- different code, different binary;
- ``toolchain``: backend, compiler and driver (:meth:`~kernbin.device.Toolchain.key`) -- a
  different compiler makes different code;
- ``device``: the fingerprint of the device the build was for (name, arch, IP version ...);
- ``options``: :meth:`~kernbin.options.BuildOptions.key` -- the flags asked for and the
  register-file policy;
- ``format``: the ``.knb`` version and this key scheme's version.

Whether a binary may *run* somewhere is not the key's business (that is the load gate's).
Nothing else: no clock rate, hostname, time or path.
"""

from __future__ import annotations

import hashlib

from ..artifact import KNB_VERSION, BuildInfo
from ..device import Toolchain
from ..options import BuildOptions

__all__ = ["CACHE_FORMAT", "cache_key", "key_for_info"]

CACHE_FORMAT = 2


def cache_key(ir_sha256: str, toolchain: Toolchain, device_fingerprint: str, options: BuildOptions) -> str:
    # Length-prefixed fields: unambiguous whatever the strings contain, and cheap
    # (this runs on every cache read to check the entry belongs to its key).
    fields = (f"kernbin-cache/{KNB_VERSION}/{CACHE_FORMAT}", ir_sha256, toolchain.key(), device_fingerprint,
              options.key())
    canon = "".join(f"{len(x)}:{x};" for x in fields)
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


_memo: dict[int, tuple[BuildInfo, str]] = {}


def key_for_info(info: BuildInfo) -> str:
    """The key an entry with this build info belongs under (checked on every read). Memoised per
    BuildInfo object (they are immutable, and the .knb reader hands out one per distinct header)."""
    hit = _memo.get(id(info))
    if hit is not None and hit[0] is info:
        return hit[1]
    key = cache_key(info.ir_sha256, info.toolchain, info.device_fingerprint, info.options)
    if len(_memo) >= 512:
        _memo.clear()
    _memo[id(info)] = (info, key)
    return key
