"""Ahead-of-time bundles: one file, many kernels x targets, the right binary picked at load.

A bundle is a :mod:`kernbin.container` (magic ``\\x89KBN\\r\\n\\x1a\\n``, version 1, sections aligned
to 64 bytes so they can be used straight from a mapping). Its ``meta`` is the manifest::

    {"kbundle": 1, "created_by": "kernbin 0.1.0",
     "kernels": {"softmax": {"ir": "b2", "ir_kind": "spirv", "ir_sha256": "...",
                             "entries": [{"blob": "b0", "info": {BuildInfo}}, ...]}}}

Blobs (``b0``, ``b1``, ...) are the device binaries and the IR, each stored once however many
entries share it (deduplicated by content); an optional ``signature`` section signs the manifest and
every blob's digest (:mod:`kernbin.signing`). The spec is ``docs/bundle-format.md``.

Reading (:func:`kernbin.open_bundle`) maps the file and parses the header and the manifest only; a blob is
read and its digest checked when a kernel that uses it is loaded. :meth:`Bundle.load` asks the
device's backend which entries it can run (``Backend.can_run``), takes the best, and otherwise
rebuilds from the IR with the recorded options (through the cache), or says which targets the
bundle holds and what device it found. The choice and why is on ``module.bundle_choice``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec

from . import container
from .artifact import BuildInfo, NativeBinary, _GateBuildRaw, _PendingInfo, requirements_of
from .errors import InvalidBinary
from .ir import read_ir

__all__ = ["BUNDLE_MAGIC", "BUNDLE_VERSION", "Bundle", "BundleEntry", "BundleError", "write_bundle", "read_all",
           "is_bundle", "NAME_PATTERN"]

BUNDLE_MAGIC = b"\x89KBN\r\n\x1a\n"
BUNDLE_VERSION = 1
ALIGN = 64
READ_WHOLE = 64 << 20                 # bundles up to this size are read whole at open
MAX_MANIFEST = 64 << 20                # a manifest of thousands of kernels x targets fits easily
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_BLOB = re.compile(r"b[0-9]{1,9}")


class _EntryJSON(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    blob: str
    info: msgspec.Raw                 # what the gate reads is decoded when the entry is first asked for


class _KernelJSON(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    entries: list[_EntryJSON]
    ir: str | None = None
    ir_kind: str | None = None
    ir_sha256: str | None = None


class _ManifestJSON(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    kbundle: int
    kernels: dict[str, msgspec.Raw]   # each kernel decoded and checked when first asked for
    created_by: str = ""


class _EntryGateJSON(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    blob: str
    info: _GateBuildRaw               # what the gate reads; the decoder skips the rest


class _KernelGateJSON(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    entries: list[_EntryGateJSON]
    ir: str | None = None
    ir_kind: str | None = None
    ir_sha256: str | None = None


class _ManifestGateJSON(msgspec.Struct, gc=False):
    kernels: dict[str, _KernelGateJSON]


_MANIFEST = msgspec.json.Decoder(_ManifestJSON)
_KERNEL = msgspec.json.Decoder(_KernelJSON)
_MANIFEST_GATE = msgspec.json.Decoder(_ManifestGateJSON)


class BundleError(InvalidBinary):
    """A bundle that breaks a rule of ``docs/bundle-format.md`` (``rule`` names it)."""


class BundleEntry:
    """One native binary of one kernel: where it is (``blob``) and how it was built (``info``, a
    :class:`BuildInfo` built on first access; the gate reads only ``requires`` and ``toolchain_key``,
    from the fields read first, which stay on ``pending`` whatever is built later)."""
    __slots__ = ("kernel", "index", "blob", "pending", "_built")

    def __init__(self, kernel: str, index: int, blob: str, pending: _PendingInfo):
        self.kernel, self.index, self.blob, self.pending, self._built = kernel, index, blob, pending, None

    @property
    def info(self) -> BuildInfo:
        v = self._built
        if v is None:
            try:
                v = self._built = self.pending.resolve()
            except InvalidBinary as err:
                raise BundleError(f"kernel {self.kernel!r} entry {self.index}: {err.reason}",
                                  rule="build-info") from None
        return v

    @property
    def _info(self):
        """What a NativeBinary of this entry starts from: the built info, else the pending one."""
        return self._built if self._built is not None else self.pending

    @property
    def target(self) -> str:
        return self.pending.target

    @property
    def requires(self):
        return self.pending.requires

    @property
    def toolchain_key(self) -> str:
        try:
            return self.pending.toolchain_key
        except InvalidBinary as err:
            raise BundleError(f"kernel {self.kernel!r} entry {self.index}: {err.reason}", rule="build-info") from None

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return self.pending.kernel_names

    def __eq__(self, other) -> bool:
        return isinstance(other, BundleEntry) and (self.kernel, self.index, self.blob) == \
            (other.kernel, other.index, other.blob)

    def __hash__(self) -> int:
        return hash((self.kernel, self.index, self.blob))

    def __repr__(self) -> str:
        return f"BundleEntry({self.kernel!r}, {self.index}, {self.blob!r}, target={self.target!r})"


class Bundle:
    """A read-only view of a bundle file. Use :func:`open_bundle`; close it (or use ``with``)."""

    def __init__(self, path, *, trusted_keys=None, require_signature: bool | None = None):
        from ._fs import FileRefused
        import stat
        self.trusted_keys = trusted_keys
        if isinstance(path, (bytes, bytearray, memoryview)):       # a bundle already in memory
            self.path, self._map = "<bytes>", bytes(path)
        else:
            self.path = os.fspath(path)
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise FileRefused(self.path, "not-regular", "bundle is not a regular file")
                if st.st_size == 0:
                    raise BundleError("empty file is not a bundle", rule="truncated")
            except BaseException:
                os.close(fd)
                raise
            # read, never mapped: a file truncated or replaced under an open bundle gives a clear error
            # (or this bundle keeps its own view), never a SIGBUS. Up to READ_WHOLE bytes are read at
            # once (one system call; blobs are then slices in memory); larger bundles are read by
            # pread as their blobs are asked for.
            if st.st_size <= READ_WHOLE:
                try:
                    self._map = container.pread_exact(fd, st.st_size, 0)
                finally:
                    os.close(fd)
            else:
                self._map = container.FileView(fd, st.st_size)
        try:
            self._c = container.Container.parse(self._map, magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,),
                                                max_header=MAX_MANIFEST)
            self.signed_by = _check_signature(self._c, trusted_keys, require_signature)
            self._manifest = _decode_manifest(self._c)
        except BaseException:
            self.close()
            raise
        self.created_by = self._manifest.created_by
        self._entries: dict[str, list[BundleEntry]] = {}
        self._kernels: dict[str, _KernelJSON] = {}

    # -- what is inside -------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Kernel (module) names, sorted (the manifest is written with sorted keys)."""
        return tuple(self._manifest.kernels)

    def _kernel(self, name: str) -> _KernelJSON:
        k = self._kernels.get(name)
        if k is None:
            raw = self._manifest.kernels.get(name)
            if raw is None:
                from .errors import KernelNotFound
                raise KernelNotFound(name, self.names)
            k = self._kernels[name] = _decode_kernel(self._c, name, raw)
        return k

    def read_all_entries(self) -> None:
        """Decode what the gate reads of every entry of every kernel in one pass (one typed decode
        of the whole manifest, one :class:`~kernbin.device.Requirements` per distinct requirement):
        what a loader does before making many kernels ready. Entries already read are kept."""
        if len(self._entries) == len(self._manifest.kernels):
            return
        try:
            m = _MANIFEST_GATE.decode(self._c.meta_raw)
        except (msgspec.DecodeError, RecursionError, ValueError):
            for name in self.names:         # the precise error, kernel by kernel
                self.entries(name)
            raise BundleError("bad manifest", rule="manifest") from None
        c, blob_ok, got = self._c, _BLOB.fullmatch, self._entries
        for name, k in m.kernels.items():
            if name in got:
                continue
            out = []
            for i, e in enumerate(k.entries):
                if not blob_ok(e.blob) or e.blob not in c:
                    raise BundleError(f"kernel {name!r} names blob {e.blob!r}, which the file does not hold",
                                      rule="blob")
                g = e.info
                try:
                    req = requirements_of(bytes(g.requires))
                except InvalidBinary as err:
                    raise BundleError(f"kernel {name!r} entry {i}: {err.reason}", rule="build-info") from None
                out.append(BundleEntry(name, i, e.blob, _PendingInfo(_RawInfo(self, name, i), None, False, g, req)))
            if k.ir is not None:
                self._kernel(name)          # the IR reference's checks, as a lazy read does them
            got[name] = out

    def _entry_raw(self, name: str, i: int) -> bytes:
        k = self._kernels.get(name)        # (its blob references were checked when it was read)
        if k is None:
            k = _KERNEL.decode(self._manifest.kernels[name])
        return bytes(k.entries[i].info)

    def entries(self, name: str) -> list[BundleEntry]:
        """The native entries of kernel ``name`` (a dictionary lookup: the manifest is not scanned;
        each entry's build info is decoded and type-checked here, the first time it is asked for)."""
        got = self._entries.get(name)
        if got is None:
            got = self._entries[name] = [BundleEntry(name, i, e.blob, _entry_info(name, i, e))
                                         for i, e in enumerate(self._kernel(name).entries)]
        return list(got)

    def targets(self, name: str | None = None) -> tuple[str, ...]:
        """The targets the bundle holds (for one kernel, or for all)."""
        names = [name] if name is not None else self.names
        out = []
        for n in names:
            for e in self.entries(n):
                if e.target not in out:
                    out.append(e.target)
        return tuple(out)

    def ir(self, name: str):
        """The kernel's IR (digest-checked on first use), or None when the bundle carries none."""
        k = self._kernel(name)
        if k.ir is None:
            return None
        data = self._section(k.ir)
        ir = read_ir(data, k.ir_kind)
        if k.ir_sha256 and ir.sha256 != k.ir_sha256:
            raise BundleError(f"kernel {name!r}: IR does not match its recorded hash", rule="ir")
        return ir

    def native(self, entry: BundleEntry, *, with_ir: bool = True) -> NativeBinary:
        """The entry as a verified :class:`NativeBinary` (with the kernel's IR, when present)."""
        binary = self.blob(entry.blob)
        ir = self.ir(entry.kernel) if with_ir else None
        if ir is not None and ir.sha256 != entry.info.ir_sha256:
            raise BundleError(f"kernel {entry.kernel!r}: entry {entry.index} was built from other IR", rule="ir")
        return NativeBinary._of(binary, entry._info, ir)

    def blob(self, blob: str) -> bytes:
        """The bytes of blob ``blob``, digest-checked on first use (:class:`BundleError` otherwise)."""
        try:
            return self._section(blob)
        except container.ContainerError as e:
            why = "fails its digest (corrupted data)" if e.rule == "section-digest" else e.reason
            raise BundleError(f"blob {blob!r} {why}", rule=e.rule) from None

    def _section(self, blob: str) -> bytes:
        if blob not in self._c:
            raise BundleError(f"manifest names blob {blob!r}, which the file does not hold", rule="blob")
        return self._c.section(blob)            # digest checked on first access (ContainerError otherwise)

    def require_signature_by(self, trusted_keys) -> str:
        """Verify the signature against ``trusted_keys`` now (an open bundle handed to a loader that
        trusts only those keys): sets and returns ``signed_by``; :class:`~kernbin.signing.SignatureError`
        otherwise."""
        from . import signing
        keys = list(trusted_keys)
        self.signed_by = signing.verify(self._c, keys, magic=BUNDLE_MAGIC)
        self.trusted_keys = keys
        return self.signed_by

    def verify(self) -> None:
        """Check every blob's digest now (``kernbin bundle verify``); raise on the first bad one."""
        self._c.verify_all()
        for name in self.names:
            self.ir(name)
            for e in self.entries(name):
                self._section(e.blob)

    def describe(self) -> dict:
        """The manifest as plain data (``kernbin bundle inspect``)."""
        out = {"file": self.path, "bytes": len(self._map), "created_by": self.created_by,
               "signed_by": self.signed_by, "blobs": len([n for n in self._c.names if n != "signature"]),
               "kernels": {}}
        for name in self.names:
            k = self._kernel(name)
            out["kernels"][name] = {
                "ir": {"kind": k.ir_kind, "sha256": k.ir_sha256, "bytes": self._c.size(k.ir)} if k.ir else None,
                "entries": [{"target": e.target, "blob": e.blob, "bytes": self._c.size(e.blob) if e.blob in self._c
                             else None, "binary_format": e.info.binary_format, "runs_on": e.info.requires.describe(),
                             "built_by": e.info.toolchain.describe(), "flags": list(e.info.flags),
                             "kernels": [{"name": ki.name, **ki.attributes} for ki in e.info.kernels]}
                            for e in self.entries(name)]}
        return out

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            self._c = None
            if isinstance(m, container.FileView):
                m.close()
            self._map = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RawInfo:
    """A bundle entry's build info JSON, cut out of its kernel's manifest entry when first needed."""
    __slots__ = ("bundle", "name", "i")

    def __init__(self, bundle, name: str, i: int):
        self.bundle, self.name, self.i = bundle, name, i

    def __call__(self) -> bytes:
        return self.bundle._entry_raw(self.name, self.i)


def _entry_info(name: str, i: int, e: _EntryJSON) -> _PendingInfo:
    try:
        return _PendingInfo(bytes(e.info), None, False)
    except InvalidBinary as err:
        raise BundleError(f"kernel {name!r} entry {i}: {err.reason}", rule="build-info") from None


def _decode_manifest(c) -> _ManifestJSON:
    try:
        m = _MANIFEST.decode(c.meta_raw)
    except (msgspec.DecodeError, RecursionError, ValueError) as e:
        raise BundleError(f"bad manifest: {e}", rule="manifest") from None
    if m.kbundle != BUNDLE_VERSION:
        raise BundleError(f"manifest version {m.kbundle} (this kernbin reads {BUNDLE_VERSION})", rule="manifest")
    for name in m.kernels:
        if not _NAME.fullmatch(name):
            raise BundleError(f"kernel name {name!r} is outside the safe alphabet {NAME_PATTERN}", rule="name")
    return m


def _decode_kernel(c, name: str, raw) -> _KernelJSON:
    """One kernel's manifest entry, type-checked, its blob references checked against the file."""
    try:
        k = _KERNEL.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError) as e:
        raise BundleError(f"kernel {name!r}: bad manifest entry: {e}", rule="manifest") from None
    for blob in [k.ir] + [e.blob for e in k.entries]:
        if blob is not None and (not _BLOB.fullmatch(blob) or blob not in c):
            raise BundleError(f"kernel {name!r} names blob {blob!r}, which the file does not hold", rule="blob")
    if k.ir is not None and k.ir_kind not in ("spirv", "ptx"):
        raise BundleError(f"kernel {name!r}: unknown IR kind {k.ir_kind!r}", rule="manifest")
    return k


def _check_signature(c, trusted_keys, require_signature) -> str | None:
    """Verify the signature when trust is asked for; return who signed (verified) or None."""
    if trusted_keys is None and not os.environ.get("KERNBIN_TRUSTED_KEYS") and not require_signature:
        return None                   # no trust asked for: checksums only (cryptography not even imported)
    if require_signature is False and "signature" not in c:
        return None
    from . import signing
    if trusted_keys is None and os.environ.get("KERNBIN_TRUSTED_KEYS"):
        trusted_keys = signing.trusted_keys_from_env()
    return signing.verify(c, list(trusted_keys or []), magic=BUNDLE_MAGIC)


# -- writing ------------------------------------------------------------------------------------

def write_bundle(path, kernels: dict[str, dict], *, sign_key=None, created_by: str | None = None) -> str:
    """Write a bundle atomically. ``kernels`` maps a name to ``{"ir": IR or None, "natives":
    [NativeBinary, ...]}``; identical blobs are stored once. ``sign_key``: a private key (or its
    path) to sign with. Returns the path."""
    from . import __version__
    from ._fs import atomic_write
    blobs: list[tuple[str, bytes]] = []
    by_content: dict[bytes, str] = {}

    def blob(data: bytes) -> str:
        from blake3 import blake3
        d = blake3(data).digest()
        name = by_content.get(d)
        if name is None:
            name = by_content[d] = f"b{len(blobs)}"
            blobs.append((name, data))
        return name

    manifest: dict[str, Any] = {"kbundle": BUNDLE_VERSION, "created_by": created_by or f"kernbin {__version__}",
                                "kernels": {}}
    for name, k in kernels.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BundleError(f"kernel name {name!r} is outside the safe alphabet {NAME_PATTERN}", rule="name")
        ir = k.get("ir")
        entry = {"entries": [], "ir": None, "ir_kind": None, "ir_sha256": None}
        if ir is not None:
            entry.update(ir=blob(ir.data), ir_kind=ir.kind, ir_sha256=ir.sha256)
        for nb in k.get("natives", []):
            if ir is not None and nb.info.ir_sha256 != ir.sha256:
                raise BundleError(f"kernel {name!r}: a binary for {nb.info.target} was built from other IR", rule="ir")
            entry["entries"].append({"blob": blob(nb.binary), "info": nb.info.to_json()})
        manifest["kernels"][name] = entry
    data = container.pack(BUNDLE_MAGIC, BUNDLE_VERSION, manifest, blobs, align=ALIGN, max_header=MAX_MANIFEST)
    if sign_key is not None:
        from . import signing
        key = signing.load_private_key(sign_key) if isinstance(sign_key, (str, os.PathLike)) else sign_key
        data = signing.sign(data, key, magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,))
    atomic_write(os.fspath(path), data)
    return os.fspath(path)


def is_bundle(data: bytes) -> bool:
    return bytes(data[:len(BUNDLE_MAGIC)]) == BUNDLE_MAGIC


def read_all(path, *, trusted_keys=None, require_signature: bool | None = False) -> dict[str, dict]:
    """Everything in a bundle as ``write_bundle`` takes it (to add kernels or targets and rewrite),
    every blob digest-checked; with ``trusted_keys`` it must be signed by one of them."""
    with Bundle(path, trusted_keys=trusted_keys, require_signature=require_signature) as b:
        out = {}
        for name in b.names:
            ir = b.ir(name)
            out[name] = {"ir": ir, "natives": [b.native(e, with_ir=False) for e in b.entries(name)]}
        return out
