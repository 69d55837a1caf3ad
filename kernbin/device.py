"""Device identity and the rule deciding whether a native binary fits a device.

A native binary is machine code for one device architecture made by one
compiler. :class:`DeviceId` records what determines that code; the
compatibility rule (:meth:`DeviceId.compatible_with`) is deliberately strict:

- ``backend``, ``vendor`` and ``arch`` must match: the code is for that ISA;
- ``name`` must match: the same arch string can hide different feature sets
  (CPU models with and without AVX-512 share ``x86_64``); the name pins it;
- ``driver_version`` and ``compiler_version`` must match: a runtime only
  promises to read binaries its own version produced (the Level Zero spec
  promises native binaries only within one driver), and a different compiler
  would have produced different code.

When any field differs the binary is not used; kernbin rebuilds from the IR.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

__all__ = ["DeviceId", "COMPAT_FIELDS"]

#: The fields that must be equal for a native binary to be loaded, in order.
COMPAT_FIELDS = ("backend", "vendor", "arch", "name", "driver_version", "compiler_version")


@dataclass(frozen=True)
class DeviceId:
    backend: str                 # "opencl", "level-zero", "ocloc", "cuda"
    vendor: str
    name: str
    arch: str
    driver_version: str
    compiler_version: str        # runtime or offline-compiler version that made the code

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "DeviceId":
        if not isinstance(obj, dict):
            raise ValueError("device must be a JSON object")
        names = {f.name for f in fields(cls)}
        missing = names - obj.keys()
        if missing:
            raise ValueError(f"device is missing {sorted(missing)}")
        for k in names:
            if not isinstance(obj[k], str):
                raise ValueError(f"device field {k!r} must be a string")
        return cls(**{k: obj[k] for k in names})

    @property
    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of the fields the compatibility rule compares."""
        canon = json.dumps([getattr(self, f) for f in COMPAT_FIELDS], separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def mismatches(self, other: "DeviceId") -> list[str]:
        """Fields (in :data:`COMPAT_FIELDS` order) where ``other`` differs from this one."""
        return [f for f in COMPAT_FIELDS if getattr(self, f) != getattr(other, f)]

    def compatible_with(self, other: "DeviceId") -> tuple[bool, str]:
        """Whether a binary built for ``self`` may run on ``other``, and if not, why."""
        diff = self.mismatches(other)
        if not diff:
            return True, ""
        reason = "; ".join(f"{f} {getattr(self, f)!r} != {getattr(other, f)!r}" for f in diff)
        return False, f"built for {self.describe()}, this device differs in {reason}"

    def describe(self) -> str:
        return f"{self.backend} {self.name} ({self.arch}, driver {self.driver_version})"
