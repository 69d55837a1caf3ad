"""Cache keys: a SHA-256 of everything that changes the native binary.

See ``docs/cache.md`` for the reason behind each part. In short:

- ``ir``: the IR's content hash -- different code, different binary;
- ``backend``: the runtime that built it (the target's backend, not its selector:
  ``opencl:0`` and ``opencl:cpu`` may name the same device, the device part pins it);
- ``device``: every field of the compatibility rule (vendor, arch, name, driver and
  compiler versions) -- a binary is only valid where the rule says it is;
- ``options``: the build options, exactly as passed to the compiler;
- ``policy``: the register-file policy or any other kernbin-side choice that changes
  the flags (empty when none applies);
- ``format``: kernbin's ``.knb`` version and this key scheme's version.

Nothing else: no clock rate, hostname, time or path.
"""

from __future__ import annotations

import hashlib

from ..artifact import KNB_VERSION, BuildInfo
from ..device import COMPAT_FIELDS, DeviceId

__all__ = ["CACHE_FORMAT", "cache_key", "key_for_info"]

CACHE_FORMAT = 1


def cache_key(ir_sha256: str, backend: str, device: DeviceId, options: str, policy: str = "") -> str:
    # Length-prefixed fields: unambiguous whatever the strings contain, and cheap
    # (this runs on every cache read to check the entry belongs to its key).
    fields = (f"kernbin-cache/{KNB_VERSION}/{CACHE_FORMAT}", ir_sha256, backend,
              *(getattr(device, f) for f in COMPAT_FIELDS), options, policy)
    canon = "".join(f"{len(x)}:{x};" for x in fields)
    return hashlib.sha256(canon.encode()).hexdigest()


def key_for_info(info: BuildInfo) -> str:
    """The key an entry with this build info belongs under (checked on every read)."""
    requested = info.extra.get("requested_options", info.options)   # the policy may have added flags
    return cache_key(info.ir_sha256, info.device.backend, info.device, str(requested),
                     str(info.extra.get("policy", "")))
