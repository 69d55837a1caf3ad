"""Two questions about a native binary, never mixed: who built it, and what it runs on.

:class:`Toolchain` ("built by"): the backend, the code generator and its version, the
driver that compiled it (when a driver did). It is part of the cache key: a different
compiler is a different entry. It never decides whether bytes may be loaded.

:class:`Requirements` ("runs on"): what a device must be for the bytes to run -- an
Intel GPU's IP version and the zebin format version its runtime decodes, the CPU OpenCL
runtime's own identity, later an NVIDIA SM. Each backend answers
``can_run(info, device) -> (ok, reason)`` from these alone; that is the load gate.
So a zebin built offline by ``ocloc:pvc`` runs on a Level Zero PVC, and a driver update
does not by itself throw a valid binary away.

:class:`DeviceId` describes a live (or offline) device: what ``kernbin devices`` lists and
what a gate compares requirements against (``facts`` holds the backend-specific ones,
e.g. ``ip_version``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["DeviceId", "Toolchain", "Requirements", "ip_version_text"]


def _canon(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


_SCALARS = frozenset((str, int, bool, type(None)))


def _json_value(v, what: str, depth: int = 0):
    """Check that ``v`` is plain JSON data of bounded depth (no floats needed, no NaN)."""
    if depth > 8:
        raise ValueError(f"{what} is nested too deeply")
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, list):
        return [_json_value(x, what, depth + 1) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise ValueError(f"{what} keys must be strings")
        return {k: _json_value(x, what, depth + 1) for k, x in v.items()}
    raise ValueError(f"{what} holds a {type(v).__name__}, not JSON data")


def ip_version_text(value: int) -> str:
    """Level Zero / OpenCL Intel IP version (``ze_device_ip_version_ext_t``) as ``major.minor.revision``:
    ``0x030f0007`` -> ``"12.60.7"`` (the spelling ``ocloc ids`` prints)."""
    return f"{value >> 22}.{(value >> 14) & 0xFF}.{value & 0x3FFF}"


@dataclass(frozen=True)
class DeviceId:
    """A device as kernbin sees it. ``facts`` carries what gates compare (``ip_version``, ...)."""
    backend: str                 # "opencl", "level-zero", "ocloc", "cuda"
    vendor: str
    name: str
    arch: str
    driver_version: str
    compiler_version: str        # runtime or offline-compiler version that makes its code
    facts: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"backend": self.backend, "vendor": self.vendor, "name": self.name, "arch": self.arch,
                "driver_version": self.driver_version, "compiler_version": self.compiler_version,
                "facts": dict(self.facts)}

    @property
    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of everything that identifies this device."""
        import hashlib                   # (not on the load path: OpenSSL's init costs milliseconds)
        return hashlib.sha256(_canon(self.to_json()).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.backend} {self.name} ({self.arch}, driver {self.driver_version})"


@dataclass(frozen=True)
class Toolchain:
    """Who built a binary: ``backend``, ``compiler`` (code generator and version), ``driver``
    (the driver version when a driver compiled it, else "") and ``versions`` of every tool
    involved (recorded, not keyed: kernbin's own version does not change the bytes)."""
    backend: str
    compiler: str
    driver: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)

    def key(self) -> str:
        return _canon([self.backend, self.compiler, self.driver])

    def to_json(self) -> dict:
        return {"backend": self.backend, "compiler": self.compiler, "driver": self.driver,
                "versions": dict(self.versions)}

    @classmethod
    def from_json(cls, obj) -> "Toolchain":
        if not isinstance(obj, dict):
            raise ValueError("toolchain must be an object")
        for k in ("backend", "compiler", "driver"):
            if not isinstance(obj.get(k), str):
                raise ValueError(f"toolchain field {k!r} must be a string")
        versions = obj.get("versions", {})
        if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in versions.items()):
            raise ValueError("toolchain versions must map names to strings")
        return cls(obj["backend"], obj["compiler"], obj["driver"], dict(versions))

    def describe(self) -> str:
        return f"{self.backend} ({self.compiler}" + (f", driver {self.driver})" if self.driver else ")")


@dataclass(frozen=True)
class Requirements:
    """What a device must be for a binary to run. ``kind`` names the rule family; ``values``
    its parameters (plain JSON data):

    ``intel-gpu``           ``ip_version`` ("12.60.7"), ``ze_info_version`` ("1.8"), ``device`` (a name)
    ``intel-gpu-fat``       ``members``: a list of ``intel-gpu`` value sets, each with its ``member`` name
    ``opencl-runtime``      ``platform``, ``device``, ``arch``, ``driver``, ``runtime``: that exact runtime
    ``level-zero-driver``   ``driver_version``, ``driver_uuid``, ``device``, ``ip_version``: that exact driver
    """
    kind: str
    values: Mapping[str, object] = field(default_factory=dict)

    def key(self) -> str:
        return _canon([self.kind, dict(self.values)])

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def to_json(self) -> dict:
        return {"kind": self.kind, **{k: v for k, v in self.values.items()}}

    @classmethod
    def from_decoded(cls, obj) -> "Requirements":
        """From decoded JSON (a header's ``requires``): the same checks as :meth:`from_json`, raising
        :class:`~kernbin.errors.InvalidBinary` (rule ``build-info``) instead of ValueError."""
        try:
            return cls.from_json(obj)
        except (ValueError, RecursionError) as e:
            from .errors import InvalidBinary
            raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None

    @classmethod
    def from_json(cls, obj) -> "Requirements":
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ValueError("requirements must be an object with a string 'kind'")
        values = dict(obj)
        kind = values.pop("kind")
        for v in values.values():
            if type(v) not in _SCALARS:           # nested data: checked (and copied) value by value
                values = {k: _json_value(v, "requirements") for k, v in values.items()}
                break
        if "members" in values and not (isinstance(values["members"], list)
                                        and all(isinstance(m, dict) for m in values["members"])):
            raise ValueError("requirements 'members' must be a list of objects")
        return cls(kind, values)

    def describe(self) -> str:
        if self.kind == "intel-gpu":
            return f"Intel GPU IP {self.get('ip_version')} ({self.get('device', '?')}), .ze_info {self.get('ze_info_version', '?')}"
        if self.kind == "intel-gpu-fat":
            return "one of: " + ", ".join(f"{m.get('device', '?')} (IP {m.get('ip_version')})"
                                          for m in _members(self.values))
        if self.kind == "opencl-runtime":
            return (f"exactly this OpenCL runtime: {self.get('platform')} {self.get('driver')} on {self.get('device')} "
                    f"({self.get('arch')})")
        if self.kind == "level-zero-driver":
            return (f"exactly this Level Zero driver: {self.get('driver_version')} ({str(self.get('driver_uuid'))[:8]}) "
                    f"on {self.get('device')}")
        if self.kind == "cuda":
            return f"NVIDIA sm_{self.get('sm')}{self.get('variant', '')} ({self.get('code')}, {_cuda_rule(self.values)})"
        if self.kind == "cuda-fat":
            return "NVIDIA, one of: " + ", ".join(f"{m.get('code')} sm_{m.get('sm')}{m.get('variant', '')}"
                                                  for m in _members(self.values))
        return f"{self.kind} " + ", ".join(f"{k}={v}" for k, v in self.values.items())


def _members(values) -> list:
    raw = values.get("members", [])
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def _cuda_rule(v) -> str:
    sm, variant = v.get("sm"), v.get("variant", "")
    if not isinstance(sm, int):
        return "?"
    if v.get("code") == "ptx":
        return f"JIT on >= sm_{sm}, PTX ISA {v.get('ptx_isa')}"
    return f"exactly sm_{sm}" if variant == "a" else f"sm_{sm // 10}x, x >= {sm % 10}"
