"""The artifact model: a native device binary and what is needed to trust it.

``NativeBinary`` = device binary bytes + :class:`BuildInfo` (+ optionally the IR
it came from, so that a loader can rebuild when the binary does not fit).
It is stored as a ``.knb`` file; the format is specified in ``docs/knb-format.md``
and every byte of it is verified (header hash, section hashes, exact length)
before anything reaches a runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import msgspec

from . import container
from ._fs import atomic_write, read_regular_file
from .device import Requirements, Toolchain
from .errors import InvalidBinary, InvalidIR, KernbinError
from .ir import IR, read_ir
from .options import BuildOptions

__all__ = ["KernelInfo", "BuildInfo", "NativeBinary", "KNB_MAGIC", "KNB_VERSION", "MAX_HEADER"]

KNB_MAGIC = b"\x89KNB\r\n\x1a\n"
KNB_VERSION = 2                 # 1: kernbin 0.1 (SHA-256, own layout); 2: the shared container (BLAKE3)
MAX_HEADER = 1 << 20            # 1 MiB of JSON is far more than any real header


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
    """How a native binary was made and what it needs.

    ``toolchain`` says who built it ("built by": it keys the cache), ``requires`` what a
    device must be to run it ("runs on": the load gate reads only that). ``options`` is
    what the caller asked for; ``flags`` what the compiler finally received (the register-file
    policy may have added one; a rebuild from the IR uses exactly these). ``register_file``
    records the policy's attempts and choice when one ran.
    """
    target: str
    toolchain: Toolchain
    requires: Requirements
    ir_kind: str
    ir_sha256: str
    options: BuildOptions
    flags: tuple[str, ...]
    binary_format: str                       # e.g. "opencl-cpu-elf", "zebin", "zebin-fat", "cubin"
    kernels: tuple[KernelInfo, ...] = ()
    built_on: str = ""                       # the device it was built on or for, in words
    device_fingerprint: str = ""             # that device's DeviceId.fingerprint (part of the cache key)
    build_log: str = ""
    build_seconds: float = 0.0
    register_file: Mapping[str, object] | None = None
    extra: Mapping[str, object] = field(default_factory=dict)   # backend-specific facts

    def kernel(self, name: str) -> KernelInfo | None:
        return next((k for k in self.kernels if k.name == name), None)

    @property
    def toolchain_key(self) -> str:
        return self.toolchain.key()

    @property
    def flags_text(self) -> str:
        return " ".join(self.flags)

    def to_json(self) -> dict:
        return {
            "target": self.target, "toolchain": self.toolchain.to_json(), "requires": self.requires.to_json(),
            "ir_kind": self.ir_kind, "ir_sha256": self.ir_sha256, "options": self.options.to_json(),
            "flags": list(self.flags), "binary_format": self.binary_format,
            "kernels": [k.to_json() for k in self.kernels], "built_on": self.built_on,
            "device_fingerprint": self.device_fingerprint,
            "build_log": self.build_log, "build_seconds": self.build_seconds,
            "register_file": None if self.register_file is None else dict(self.register_file),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, obj) -> "BuildInfo":
        """Parse and type-check a JSON object; raises ValueError (or KernbinError from the options)
        on any defect. The same typed schema (:class:`_BuildJSON`) as the ``.knb`` reader uses."""
        try:
            j = msgspec.convert(obj, _BuildJSON)
        except msgspec.ValidationError as e:
            raise ValueError(f"build info: {e}") from None
        return _info_from(j)


# -- the typed JSON schema of BuildInfo (decoded in C by msgspec; unknown keys are ignored so that
# a newer kernbin may add fields without a format bump) -----------------------------------------

class _KernelJSON(msgspec.Struct, gc=False):
    name: str
    attributes: dict[str, int | str] = {}


class _ToolchainJSON(msgspec.Struct, gc=False):
    backend: str
    compiler: str
    driver: str
    versions: dict[str, str] = {}


class _OptionsJSON(msgspec.Struct, gc=False):
    flags: list[str]
    register_file: str = "default"
    spill_threshold: int = 0


class _BuildJSON(msgspec.Struct, gc=False):
    target: str
    toolchain: _ToolchainJSON
    requires: dict[str, Any]
    ir_kind: str
    ir_sha256: str
    options: _OptionsJSON
    flags: list[str]
    binary_format: str
    kernels: list[_KernelJSON] = []
    built_on: str = ""
    device_fingerprint: str = ""
    build_log: str = ""
    build_seconds: float = 0.0
    register_file: dict[str, Any] | None = None
    extra: dict[str, Any] = {}


class _MetaJSON(msgspec.Struct, gc=False):
    build: _BuildJSON


class _NameJSON(msgspec.Struct, gc=False):
    name: str


class _GateBuild(msgspec.Struct, gc=False):
    """What the load gate reads of a build info (the decoder skips the rest); ``requires`` stays JSON
    text: one :class:`Requirements` per distinct text is built per process (:func:`requirements_of`)."""
    requires: msgspec.Raw
    toolchain: _ToolchainJSON
    target: str
    kernels: list[_NameJSON] = []


class _GateMeta(msgspec.Struct, gc=False):
    build: _GateBuild


class _GateBuildRaw(msgspec.Struct, gc=False):
    """:class:`_GateBuild` with ``requires`` and ``toolchain`` left as JSON text: a bundle read in bulk
    builds one :class:`Requirements` per distinct text, however many entries share it."""
    requires: msgspec.Raw
    toolchain: msgspec.Raw
    target: str
    kernels: list[_NameJSON] = []


_META = msgspec.json.Decoder(_MetaJSON)
_BUILD = msgspec.json.Decoder(_BuildJSON)
_GATE_META = msgspec.json.Decoder(_GateMeta)
_GATE_BUILD = msgspec.json.Decoder(_GateBuild)


_MAX_DEPTH = 32


def _check_depth(value, what: str) -> None:
    """Refuse JSON data nested deeper than :data:`_MAX_DEPTH` (checked without recursion), so a
    header is read the same way every time (the memoised, frozen copy walks it recursively)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= _MAX_DEPTH:
                raise ValueError(f"build info {what!r} is nested deeper than {_MAX_DEPTH} levels")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def _info_from(j: _BuildJSON, raw: bytes = b"") -> BuildInfo:
    """BuildInfo from its decoded JSON; ``raw`` (the JSON bytes) lets the depth walk be skipped
    when the text holds fewer brackets than the limit (strings can only make the count larger)."""
    if not 0 <= j.build_seconds < 1e9:
        raise ValueError("build info 'build_seconds' must be a number of seconds")
    if not raw or raw.count(b"[") + raw.count(b"{") >= _MAX_DEPTH:
        _check_depth(j.extra, "extra")
        if j.register_file is not None:
            _check_depth(j.register_file, "register_file")
    t = j.toolchain
    return BuildInfo(
        target=j.target, toolchain=Toolchain(t.backend, t.compiler, t.driver, t.versions),
        requires=Requirements.from_json(j.requires), ir_kind=j.ir_kind, ir_sha256=j.ir_sha256,
        options=BuildOptions(tuple(j.options.flags), j.options.register_file, j.options.spill_threshold),
        flags=tuple(j.flags), binary_format=j.binary_format,
        kernels=tuple(KernelInfo(k.name, k.attributes) for k in j.kernels), built_on=j.built_on,
        device_fingerprint=j.device_fingerprint, build_log=j.build_log, build_seconds=j.build_seconds,
        register_file=j.register_file, extra=j.extra)


class _PendingIR:
    """The IR section of a verified ``.knb`` container, not yet checked or parsed: a native load
    never needs it, so its digest, parse and hash are paid only when the IR is first used."""
    __slots__ = ("container", "info")

    def __init__(self, c: "container.Container", info: "BuildInfo"):
        self.container, self.info = c, info

    def resolve(self) -> IR:
        """The checked IR; :class:`InvalidBinary` (``rule`` ``section-digest`` or ``ir``) when the
        section is corrupt, does not parse, or is not the IR the build info names."""
        info = self.info
        j = info.j if type(info) is _PendingInfo else info
        try:
            data = self.container.section("ir")
        except container.ContainerError as e:
            raise InvalidBinary(f"digest mismatch in section {e.section} (corrupted data)", rule="section-digest",
                                build_info=_resolved_or_none(info) if j is not info else info) from None
        try:
            ir = read_ir(data, j.ir_kind)
        except InvalidIR as e:
            raise InvalidBinary(f"embedded IR is invalid: {e}", rule="ir",
                                build_info=_resolved_or_none(info) if j is not info else info) from None
        if ir.sha256 != j.ir_sha256:
            raise InvalidBinary("embedded IR does not match the build info's IR hash", rule="ir",
                                build_info=_resolved_or_none(info) if j is not info else info)
        return ir

    def __reduce__(self):               # pickling (process pools) sends the checked IR itself
        return (_same, (self.resolve(),))


def _same(x):
    return x


class _PendingInfo:
    """The build info of a verified ``.knb`` header or bundle entry, read in two steps.

    A load needs only what the gate reads: one typed decode (in C) of ``requires``, the target, the
    toolchain and the kernel names (:class:`_GateBuild`); the rest is skipped by the decoder.
    Everything else (the whole typed :class:`_BuildJSON`, then the :class:`BuildInfo` object with the
    depth and range checks of its free-form parts) is decoded and built only when someone asks for
    ``native.info`` (or ``verify()``): a defect there is an :class:`InvalidBinary` (rule ``build-info``)
    then. ``raw`` is the JSON (``{"build": {...}}`` when ``wrapped``: a ``.knb`` header's meta; else
    the build info itself), or a function giving it (a bundle entry: cut out of its kernel's
    manifest entry only when needed)."""
    __slots__ = ("raw", "digest", "wrapped", "requires", "names", "target", "_tc", "_j")

    def __init__(self, raw, digest: bytes | None, wrapped: bool, gate=None, requires=None):
        if gate is None:
            try:
                gate = _GATE_META.decode(raw).build if wrapped else _GATE_BUILD.decode(raw)
            except (msgspec.DecodeError, ValueError, TypeError, RecursionError, ArithmeticError) as e:
                raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None
        self.raw, self.digest, self.wrapped, self._j = raw, digest, wrapped, None
        self.requires = requires if requires is not None else requirements_of(bytes(gate.requires))
        self.names, self.target, self._tc = gate.kernels, gate.target, gate.toolchain

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.names)

    @property
    def toolchain_key(self) -> str:
        t = self._tc
        if type(t) is not _ToolchainJSON:           # raw JSON (a bundle read in bulk): decode it now
            try:
                t = self._tc = msgspec.json.decode(t, type=_ToolchainJSON)
            except (msgspec.DecodeError, ValueError, RecursionError) as e:
                raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None
        return Toolchain(t.backend, t.compiler, t.driver, t.versions).key()

    def _raw(self) -> bytes:
        return self.raw if type(self.raw) is bytes else self.raw()

    @property
    def j(self) -> "_BuildJSON":
        """The whole build info, typed (decoded on first use)."""
        j = self._j
        if j is None:
            try:
                raw = self._raw()
                j = self._j = _META.decode(raw).build if self.wrapped else _BUILD.decode(raw)
            except (msgspec.DecodeError, ValueError, TypeError, RecursionError, ArithmeticError) as e:
                raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None
        return j

    def resolve(self) -> "BuildInfo":
        j = self.j
        try:
            if self.digest is not None:
                return _info_for_digest(self.digest, j, self._raw())
            return _info_from(j, self._raw())
        except (ValueError, TypeError, KernbinError, RecursionError, ArithmeticError) as e:
            raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None

    def __reduce__(self):               # pickling (process pools) sends the BuildInfo itself
        return (_same, (self.resolve(),))


class _LazyField:
    """A :class:`NativeBinary` field held as given, or (read from a ``.knb`` or a bundle) as a pending
    value (:class:`_PendingInfo`, :class:`_PendingIR`) resolved and kept on first access."""

    def __init__(self, slot: str, pending: type, required: bool):
        self.slot, self.pending, self.required = slot, pending, required

    def __get__(self, obj, owner=None):
        if obj is None:
            if self.required:
                raise AttributeError(self.slot)     # no default: the dataclass field is required
            return None                             # the dataclass default
        v = obj.__dict__.get(self.slot)
        if type(v) is self.pending:
            v = v.resolve()
            obj.__dict__[self.slot] = v
        return v

    def __set__(self, obj, value):      # only __init__ gets here (the dataclass is frozen)
        obj.__dict__[self.slot] = value


@dataclass(frozen=True, repr=False)
class NativeBinary:
    """Immutable: device binary bytes, their :class:`BuildInfo`, and optionally the IR.

    Read from a ``.knb``, the embedded IR is checked (digest, parse, hash) when ``ir`` is first
    used: reading it raises :class:`InvalidBinary` if it is corrupt. :meth:`verify` checks it now."""
    binary: bytes
    info: BuildInfo = _LazyField("_info", _PendingInfo, required=True)
    ir: IR | None = _LazyField("_ir", _PendingIR, required=False)

    def __repr__(self) -> str:
        return f"NativeBinary(info={self.info!r})"

    @property
    def has_ir(self) -> bool:
        """Whether an IR is attached (embedded or given), without checking it."""
        return self.__dict__.get("_ir") is not None

    def verify(self) -> "NativeBinary":
        """Check everything now, the whole build info and the embedded IR included (a native load checks
        only what it uses: the digests, the runs-on requirements); returns self."""
        self.info
        self.requires
        self.ir
        return self

    @property
    def sha256(self) -> str:
        import hashlib
        return hashlib.sha256(self.binary).hexdigest()

    @property
    def kernel_names(self) -> tuple[str, ...]:
        v = self.__dict__["_info"]
        return v.kernel_names if type(v) is _PendingInfo else tuple(k.name for k in v.kernels)

    @property
    def requires(self) -> Requirements:
        """What a device must be to run these bytes (``info.requires``, without building the rest of
        the build info: the load gate reads only this)."""
        return self.__dict__["_info"].requires

    @property
    def ir_sha256(self) -> str:
        """``info.ir_sha256`` (the IR it was built from), without building the rest of the build info."""
        v = self.__dict__["_info"]
        return v.j.ir_sha256 if type(v) is _PendingInfo else v.ir_sha256

    @property
    def toolchain_key(self) -> str:
        """``info.toolchain.key()`` (who built it), without building the rest of the build info."""
        v = self.__dict__["_info"]
        return v.toolchain_key if type(v) is _PendingInfo else v.toolchain.key()

    @classmethod
    def _of(cls, binary: bytes, info, ir) -> "NativeBinary":
        """A NativeBinary from parts already verified (no dataclass __init__ on the load path)."""
        nb = object.__new__(cls)
        d = nb.__dict__
        d["binary"], d["_info"], d["_ir"] = binary, info, ir
        return nb

    def without_ir(self) -> "NativeBinary":
        return replace(self, ir=None)

    # -- .knb container -------------------------------------------------
    def to_bytes(self) -> bytes:
        sections = [("native", self.binary)]
        if self.ir is not None:
            sections.append(("ir", self.ir.data))
        return container.pack(KNB_MAGIC, KNB_VERSION, {"build": self.info.to_json()}, sections,
                              max_header=MAX_HEADER)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temp file in the same directory, fsync, rename."""
        atomic_write(os.fspath(path), self.to_bytes())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NativeBinary":
        """Read and verify a ``.knb`` file (a regular file: FIFOs and devices are refused)."""
        return cls.from_bytes(read_regular_file(path, MAX_KNB_BYTES, what=".knb file"))

    @classmethod
    def read_from(cls, f, size: int | None = None) -> "NativeBinary":
        """Parse and verify a ``.knb`` from a binary file object of ``size`` bytes (default: its
        fstat size). Sections are read straight into their own buffers: no copy of the payload."""
        try:
            c = container.Container.read(f, size, magic=KNB_MAGIC, versions=(KNB_VERSION,), max_header=MAX_HEADER)
        except container.ContainerError as e:
            raise _explain(e) from None
        return cls._from_container(c)

    @classmethod
    def from_bytes(cls, data) -> "NativeBinary":
        """Parse and verify a ``.knb``. Raises :class:`InvalidBinary` (``rule`` says which rule
        failed) on any defect. When only the native section is bad, the raised error carries
        the verified ``build_info`` and ``ir`` so a caller can rebuild."""
        try:
            c = container.Container.parse(bytes(data), magic=KNB_MAGIC, versions=(KNB_VERSION,),
                                          max_header=MAX_HEADER)
        except container.ContainerError as e:
            raise _explain(e) from None
        return cls._from_container(c)

    @classmethod
    def _from_container(cls, c: "container.Container") -> "NativeBinary":
        info = _pending_for(c)
        names = c.names
        if "native" not in names or len(names) > 1 and not set(names) <= _KNB_SECTIONS:
            raise InvalidBinary(f"a .knb holds a 'native' section and optionally 'ir' and 'signature', "
                                f"not {sorted(names)}", rule="sections", build_info=_resolved_or_none(info))
        try:
            binary = c.section("native")
        except container.ContainerError as e:
            info = _resolved_or_none(info)
            ir = None
            if "ir" in names and info is not None:     # hand the caller the IR to rebuild from, if intact
                try:
                    ir = _PendingIR(c, info).resolve()
                except InvalidBinary:
                    pass
            raise InvalidBinary(f"digest mismatch in section {e.section} (corrupted data)", rule="section-digest",
                                build_info=info, ir=ir) from None
        return cls._of(binary, info, _PendingIR(c, info) if "ir" in names else None)


_KNB_SECTIONS = frozenset(("native", "ir", "signature"))


def _resolved_or_none(info: "_PendingInfo") -> "BuildInfo | None":
    try:
        return info.resolve()
    except InvalidBinary:
        return None


#: the largest .knb kernbin reads from a file (a device binary of a few hundred MB at most)
MAX_KNB_BYTES = 1 << 30
_info_cache: dict[bytes, object] = {}
_INFO_CACHE_ENTRIES = 256


class _FrozenDict(dict):
    """A dict that refuses changes: BuildInfo objects read from files are shared (memoised by
    header digest), so nothing reachable from them may be mutated. Still a dict for json and ==."""
    def _refuse(self, *a, **k):
        raise TypeError("build info read from a file is immutable")
    __init__ = __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse

    @classmethod
    def of(cls, items) -> "_FrozenDict":
        d = dict.__new__(cls)
        dict.update(d, items)
        return d

    def __reduce__(self):               # pickle by constructor: the default path calls __setitem__
        return (_FrozenDict.of, (dict(self),))


class _FrozenList(list):
    def _refuse(self, *a, **k):
        raise TypeError("build info read from a file is immutable")
    __init__ = __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse

    @classmethod
    def of(cls, items) -> "_FrozenList":
        lst = list.__new__(cls)
        list.extend(lst, items)
        return lst

    def __reduce__(self):
        return (_FrozenList.of, (list(self),))


def _freeze(obj):
    if isinstance(obj, dict):
        return _FrozenDict.of({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return _FrozenList.of([_freeze(v) for v in obj])
    return obj


def _frozen(info: BuildInfo) -> BuildInfo:
    return replace(
        info, extra=_freeze(dict(info.extra)),
        register_file=None if info.register_file is None else _freeze(dict(info.register_file)),
        kernels=tuple(KernelInfo(k.name, _freeze(dict(k.attributes))) for k in info.kernels),
        toolchain=replace(info.toolchain, versions=_freeze(dict(info.toolchain.versions))),
        requires=Requirements(info.requires.kind, _freeze(dict(info.requires.values))))


_REQUIREMENTS: dict[bytes, Requirements] = {}
_REQUIREMENTS_ENTRIES = 256


def requirements_of(text: bytes) -> Requirements:
    """The :class:`Requirements` of a build info's ``requires`` JSON text, one (frozen, shared) object
    per distinct text in this process: many binaries for one device family read it once.
    :class:`InvalidBinary` (rule ``build-info``) for text that is not a valid requirement."""
    req = _REQUIREMENTS.get(text)
    if req is None:
        try:
            obj = msgspec.json.decode(text)
        except (msgspec.DecodeError, ValueError, RecursionError) as e:
            raise InvalidBinary(f"bad build info: {e}", rule="build-info") from None
        req = Requirements.from_decoded(obj)
        try:
            req = Requirements(req.kind, _freeze(dict(req.values)))
        except RecursionError:
            raise InvalidBinary("bad build info: requirements nested too deeply", rule="build-info") from None
        if len(_REQUIREMENTS) >= _REQUIREMENTS_ENTRIES:
            _REQUIREMENTS.clear()
        _REQUIREMENTS[text] = req
    return req


def _pending_for(c) -> "_PendingInfo":
    """The build info of a verified container header: what the gate reads now, the rest lazily."""
    return _PendingInfo(c.meta_raw, c.header_digest, True)


def _info_for_digest(digest: bytes, j: "_BuildJSON", raw: bytes) -> BuildInfo:
    """BuildInfo from its decoded header, memoised by the header's BLAKE3 digest (the same header
    bytes always give the same BuildInfo; its nested data is frozen, since it is shared)."""
    info = _info_cache.get(digest)
    if info is None or info is _SEEN_ONCE:
        info_new = _info_from(j, raw)
        if info is None:              # first sight: this caller alone holds it, no need to freeze
            _remember(digest, _SEEN_ONCE)
            return info_new
        try:
            info = _frozen(info_new)  # seen again (a cache hit path): share one frozen copy
        except RecursionError:
            raise ValueError("nested too deeply") from None
        _remember(digest, info)
    return info


def _info_for(c) -> BuildInfo:
    """BuildInfo from a verified container header, built now (``InvalidBinary`` on any defect)."""
    return _pending_for(c).resolve()


_SEEN_ONCE = object()


def _remember(digest: bytes, value) -> None:
    if len(_info_cache) >= _INFO_CACHE_ENTRIES:
        try:
            _info_cache.pop(next(iter(_info_cache)), None)
        except (RuntimeError, StopIteration):      # another thread is evicting too
            pass
    _info_cache[digest] = value


def _explain(e: "container.ContainerError") -> InvalidBinary:
    if e.rule == "version":
        e.reason = (f"{e.reason}; this kernbin reads .knb format {KNB_VERSION} (files from kernbin 0.1 are "
                    f"format 1: rebuild them, e.g. with `kernbin build`)")
        e.args = (f"invalid native binary: {e.reason}",)
    return e
