"""The artifact model: a native device binary and what is needed to trust it.

``NativeBinary`` = device binary bytes + :class:`BuildInfo` (+ optionally the IR
it came from, so that a loader can rebuild when the binary does not fit).
It is stored as a ``.knb`` file; the format is specified in ``docs/knb-format.md``
and every byte of it is verified (header hash, section hashes, exact length)
before anything reaches a runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field, replace
from typing import Mapping

from .device import DeviceId
from .errors import InvalidBinary, InvalidIR
from .ir import SpirvModule, read_ir

__all__ = ["KernelInfo", "BuildInfo", "NativeBinary", "KNB_MAGIC", "KNB_VERSION", "MAX_HEADER"]

KNB_MAGIC = b"\x89KNB\r\n\x1a\n"
KNB_VERSION = 1
MAX_HEADER = 1 << 20            # 1 MiB of JSON is far more than any real header
_PREFIX = struct.Struct("<8sII32s")   # magic, version, header length, header SHA-256
_SECTIONS = ("native", "ir")


@dataclass(frozen=True)
class KernelInfo:
    """One kernel in a native binary and the properties the runtime reported for it."""
    name: str
    attributes: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, obj) -> "KernelInfo":
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ValueError("kernel entry needs a string 'name'")
        attrs = obj.get("attributes", {})
        if not isinstance(attrs, dict) or not all(isinstance(v, (int, str)) for v in attrs.values()):
            raise ValueError(f"kernel {obj['name']!r}: attributes must map names to numbers")
        return cls(obj["name"], dict(attrs))


@dataclass(frozen=True)
class BuildInfo:
    """How a native binary was made: from which IR, for which device, with what."""
    target: str
    device: DeviceId
    ir_kind: str
    ir_sha256: str
    options: str
    binary_format: str                       # e.g. "opencl-cpu-elf", "zebin", "cubin"
    kernels: tuple[KernelInfo, ...] = ()
    tools: Mapping[str, str] = field(default_factory=dict)
    build_log: str = ""
    build_seconds: float = 0.0
    extra: Mapping[str, object] = field(default_factory=dict)   # backend-specific facts

    def kernel(self, name: str) -> KernelInfo | None:
        return next((k for k in self.kernels if k.name == name), None)

    def to_json(self) -> dict:
        return {
            "target": self.target, "device": self.device.to_json(), "ir_kind": self.ir_kind,
            "ir_sha256": self.ir_sha256, "options": self.options, "binary_format": self.binary_format,
            "kernels": [k.to_json() for k in self.kernels], "tools": dict(self.tools),
            "build_log": self.build_log, "build_seconds": self.build_seconds, "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, obj) -> "BuildInfo":
        if not isinstance(obj, dict):
            raise ValueError("build info must be a JSON object")
        try:
            info = cls(
                target=obj["target"], device=DeviceId.from_json(obj["device"]), ir_kind=obj["ir_kind"],
                ir_sha256=obj["ir_sha256"], options=obj["options"], binary_format=obj["binary_format"],
                kernels=tuple(KernelInfo.from_json(k) for k in obj.get("kernels", [])),
                tools=dict(obj.get("tools", {})), build_log=obj.get("build_log", ""),
                build_seconds=float(obj.get("build_seconds", 0.0)), extra=dict(obj.get("extra", {})),
            )
        except KeyError as e:
            raise ValueError(f"build info is missing {e.args[0]!r}") from None
        for name in ("target", "ir_kind", "ir_sha256", "options", "binary_format", "build_log"):
            if not isinstance(getattr(info, name), str):
                raise ValueError(f"build info field {name!r} must be a string")
        return info


@dataclass(frozen=True)
class NativeBinary:
    """Immutable: device binary bytes, their :class:`BuildInfo`, and optionally the IR."""
    binary: bytes = field(repr=False)
    info: BuildInfo
    ir: SpirvModule | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.binary).hexdigest()

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.info.kernels)

    def without_ir(self) -> "NativeBinary":
        return replace(self, ir=None)

    # -- .knb container -------------------------------------------------
    def to_bytes(self) -> bytes:
        sections = [("native", self.binary)]
        if self.ir is not None:
            sections.append(("ir", self.ir.data))
        header = {
            "kernbin_format": KNB_VERSION,
            "build": self.info.to_json(),
            "sections": [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                         for n, b in sections],
        }
        hbytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        if len(hbytes) > MAX_HEADER:
            raise InvalidBinary(f"header of {len(hbytes)} bytes exceeds the {MAX_HEADER}-byte limit")
        prefix = _PREFIX.pack(KNB_MAGIC, KNB_VERSION, len(hbytes), hashlib.sha256(hbytes).digest())
        return b"".join([prefix, hbytes] + [b for _, b in sections])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temp file in the same directory, fsync, rename."""
        atomic_write(os.fspath(path), self.to_bytes())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NativeBinary":
        with open(path, "rb") as f:
            return cls.read_from(f)

    @classmethod
    def read_from(cls, f, size: int | None = None) -> "NativeBinary":
        """Parse and verify a ``.knb`` from a binary file object of ``size`` bytes (default: its
        fstat size). Sections are read straight into their own buffers: no copy of the payload."""
        if size is None:
            size = os.fstat(f.fileno()).st_size
        return cls._read(f.read, size)

    @classmethod
    def from_bytes(cls, data: bytes) -> "NativeBinary":
        """Parse and verify a ``.knb``. Raises :class:`InvalidBinary` on any defect.

        When only the native section is bad, the raised error carries the
        verified ``build_info`` and ``ir`` so a caller can rebuild.
        """
        data = bytes(data)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            chunk = data[pos:pos + n]
            pos += len(chunk)
            return chunk
        return cls._read(read, len(data))

    @classmethod
    def _read(cls, read, total: int) -> "NativeBinary":
        if total < _PREFIX.size:
            raise InvalidBinary(f"file too short ({total} bytes) for a .knb header")
        prefix = read(_PREFIX.size)
        if len(prefix) != _PREFIX.size:
            raise InvalidBinary("truncated while reading the header")
        magic, version, hlen, hsha = _PREFIX.unpack(prefix)
        if magic != KNB_MAGIC:
            raise InvalidBinary("not a kernbin native binary (bad magic)")
        if version != KNB_VERSION:
            raise InvalidBinary(f"unsupported .knb format version {version} (this kernbin reads {KNB_VERSION})")
        if hlen > MAX_HEADER:
            raise InvalidBinary(f"header length {hlen} exceeds the {MAX_HEADER}-byte limit")
        hend = _PREFIX.size + hlen
        if hend > total:
            raise InvalidBinary(f"truncated: header needs {hend} bytes, file has {total}")
        hbytes = read(hlen)
        if len(hbytes) != hlen or hashlib.sha256(hbytes).digest() != hsha:
            raise InvalidBinary("header checksum mismatch (corrupted header)")
        try:
            header = json.loads(hbytes)
            if not isinstance(header, dict) or header.get("kernbin_format") != KNB_VERSION:
                raise ValueError("header is not a version-1 kernbin header")
            info = BuildInfo.from_json(header.get("build"))
            sections = _check_sections(header.get("sections"), total - hend)
        except (ValueError, TypeError) as e:
            raise InvalidBinary(f"bad header: {e}") from None
        blobs, bad = {}, []
        for name, size, sha in sections:
            blob = read(size)
            if len(blob) != size:
                raise InvalidBinary(f"truncated while reading section {name}", build_info=info)
            if hashlib.sha256(blob).hexdigest() != sha:
                bad.append(name)
            blobs[name] = blob
        ir = None
        if "ir" in blobs and "ir" not in bad:
            try:
                ir = read_ir(blobs["ir"])
            except InvalidIR as e:
                raise InvalidBinary(f"embedded IR is invalid: {e}", build_info=info) from None
            if ir.sha256 != info.ir_sha256:
                raise InvalidBinary("embedded IR does not match the build info's IR hash", build_info=info)
        if bad:
            raise InvalidBinary(f"checksum mismatch in section(s) {', '.join(bad)} (corrupted data)",
                                build_info=info, ir=ir)
        return cls(binary=blobs["native"], info=info, ir=ir)


def _check_sections(sections, payload_len: int) -> list[tuple[str, int, str]]:
    if not isinstance(sections, list) or not sections:
        raise ValueError("'sections' must be a non-empty list")
    out, seen, total = [], set(), 0
    for s in sections:
        if not isinstance(s, dict):
            raise ValueError("section entries must be objects")
        name, size, sha = s.get("name"), s.get("size"), s.get("sha256")
        if name not in _SECTIONS:
            raise ValueError(f"unknown section {name!r}")
        if name in seen:
            raise ValueError(f"duplicate section {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"section {name!r} has a bad size {size!r}")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ValueError(f"section {name!r} has a bad sha256")
        seen.add(name)
        total += size
        out.append((name, size, sha))
    if "native" not in seen:
        raise ValueError("no 'native' section")
    if total != payload_len:
        raise ValueError(f"sections cover {total} bytes but the payload is {payload_len} bytes "
                         f"({'truncated' if total > payload_len else 'trailing data'})")
    return out


def atomic_write(path: str, data: bytes) -> None:
    """Crash-safe publish: a temp file in the same directory, fsync, rename, fsync of the
    directory. A reader sees the old file or the whole new one; a writer killed midway
    leaves only a ``.tmp-*`` file behind."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".knb")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
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
