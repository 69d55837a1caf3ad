"""The verified container: a JSON header and named byte sections, every byte checked.

Owns the *layout* that ``.knb`` files (one native binary + its IR) and bundles (many
blobs, read lazily from the open file) share; it knows nothing about what the sections hold.
The spec is ``docs/container-format.md``; each rule there is a ``ContainerError.rule``.

- :func:`pack` builds a container in memory.
- :meth:`Container.parse` reads one from a buffer (bytes, bytearray, memoryview, mmap, or a
  :class:`FileView` of an open file, read with ``pread`` as sections are asked for):
  the prefix, header digest, JSON and the whole section table are checked up front;
  each section's digest is checked on its first :meth:`Container.section` access, so a
  bundle pays only for the blobs it uses.
- :meth:`Container.read` reads one from a file object, each section straight into its own
  buffer (no copy of the whole file), and verifies every section while it is at it; a
  section that fails its digest is listed in :attr:`Container.bad` instead of failing the
  read, so that a caller can still use the intact ones (the ``.knb`` IR fallback).

The digest is BLAKE3-256 (chosen by measurement, see ``benchmarks/digest.py``).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from typing import Callable, Collection

import msgspec
from blake3 import blake3

from .errors import InvalidBinary

__all__ = ["pack", "Container", "ContainerError", "FileView", "RULES", "MAX_HEADER", "MAX_ALIGN", "DIGEST",
           "PREFIX_FORMAT", "PREFIX_SIZE", "NAME_PATTERN"]

MAX_HEADER = 1 << 20                 # default cap on the JSON header: 1 MiB
MAX_ALIGN = 1 << 16                  # largest section alignment (a power of two)
DIGEST = "blake3"                    # the only digest this version of the layout knows
PREFIX_FORMAT = "<8sII32s"           # magic, format version, header length, header digest
_PREFIX = struct.Struct(PREFIX_FORMAT)
PREFIX_SIZE = _PREFIX.size           # 48
NAME_PATTERN = r"[A-Za-z0-9._:+-]{1,128}"
_NAME = re.compile(NAME_PATTERN)
_HEX = re.compile(r"[0-9a-f]{64}")
_U32 = 0xFFFFFFFF

#: every value ``ContainerError.rule`` can take
RULES = ("magic", "version", "header-size", "header-digest", "header-json", "section-table",
         "section-name", "section-bounds", "section-digest", "truncated", "trailing-data", "padding")


class ContainerError(InvalidBinary):
    """A container broke one rule of the format (or :func:`pack` was asked to break one).

    ``rule`` is a stable identifier from :data:`RULES`; ``section`` names the section at
    fault, or is None. Check these attributes, not the message.
    """

    def __init__(self, rule: str, reason: str, *, section: str | None = None, build_info=None, ir=None):
        super().__init__(f"[{rule}] {reason}", build_info=build_info, ir=ir)
        self.rule = rule            # after super(): InvalidBinary may set a default ``rule`` of its own
        self.section = section


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) & -align


# -- writing --------------------------------------------------------------------------------
def pack(magic: bytes, version: int, header: dict, sections: list[tuple[str, bytes]], *,
         align: int = 1, max_header: int = MAX_HEADER) -> bytes:
    """The bytes of a container holding ``header`` (any JSON-able dict, stored as ``meta``)
    and ``sections`` in the given order, each starting at a multiple of ``align``.
    Raises :class:`ContainerError` for what a reader would refuse (bad name, header too big...)."""
    _check_magic_arg(magic)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= _U32:
        raise ContainerError("version", f"version must be a u32, got {version!r}")
    if not isinstance(header, dict):
        raise ContainerError("header-json", f"header must be a dict, got {type(header).__name__}")
    _check_align(align)
    seen = set()
    for name, _ in sections:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ContainerError("section-name", f"illegal section name {name!r}", section=_str_or_none(name))
        if name in seen:
            raise ContainerError("section-name", f"duplicate section name {name!r}", section=name)
        seen.add(name)
    entries, blobs = layout_sections(sections, align)
    doc = {"align": align, "digest": DIGEST, "meta": header, "sections": entries}
    try:
        import json                      # (writers only)
        hbytes = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                            allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:   # not JSON-able, NaN, lone surrogate
        raise ContainerError("header-json", f"header cannot be stored as strict JSON: {e}") from None
    if len(hbytes) > min(max_header, _U32):
        raise ContainerError("header-size", f"header of {len(hbytes)} bytes exceeds the {max_header}-byte limit")
    hend = PREFIX_SIZE + len(hbytes)
    pad = bytes(_round_up(hend, align) - hend)
    prefix = _PREFIX.pack(magic, version, len(hbytes), blake3(hbytes).digest())
    return b"".join([prefix, hbytes, pad, *blobs])


def layout_sections(sections, align: int) -> tuple[list[dict], list]:
    """The section table and payload pieces :func:`pack` writes for ``sections`` (no name checks:
    tools that forge containers on purpose use this too). Each section starts at the previous end
    rounded up to ``align``; the gaps are zero bytes."""
    entries, blobs, end = [], [], 0
    for name, data in sections:
        data = memoryview(data).cast("B")
        offset = _round_up(end, align)
        if offset > end:
            blobs.append(bytes(offset - end))
        entries.append({"name": name, "offset": offset, "size": len(data), "digest": blake3(data).hexdigest()})
        blobs.append(data)
        end = offset + len(data)
    return entries, blobs


def _str_or_none(name) -> str | None:
    return name if isinstance(name, str) else None


def _check_magic_arg(magic) -> None:
    if not isinstance(magic, bytes) or len(magic) != 8:
        raise ContainerError("magic", f"magic must be 8 bytes, got {magic!r}")


def _check_align(align) -> None:
    if (not isinstance(align, int) or isinstance(align, bool) or not 1 <= align <= MAX_ALIGN
            or align & (align - 1)):
        raise ContainerError("section-table", f"align must be a power of two from 1 to {MAX_ALIGN}, got {align!r}")


# -- reading: the checks shared by parse() and read() --------------------------------------
def _check_prefix(prefix, total: int, magic: bytes, versions, max_header: int) -> tuple[int, int, bytes]:
    """(version, header length, header digest) from the first bytes; checks all but the digest."""
    if total >= PREFIX_SIZE and len(prefix) >= PREFIX_SIZE:
        found, version, hlen, hdigest = _PREFIX.unpack_from(prefix)
        if found != magic:
            raise ContainerError("magic", "bad magic: not this kind of file")
    else:
        head = bytes(prefix[:8])
        if head != magic[:len(head)]:
            raise ContainerError("magic", "bad magic: not this kind of file")
        raise ContainerError("truncated", f"file of {total} bytes is shorter than the {PREFIX_SIZE}-byte prefix")
    if version not in versions:
        raise ContainerError("version", f"unsupported format version {version} (reads {sorted(versions)})")
    if hlen > max_header:
        raise ContainerError("header-size", f"header length {hlen} exceeds the {max_header}-byte limit")
    if PREFIX_SIZE + hlen > total:
        raise ContainerError("truncated", f"header needs {PREFIX_SIZE + hlen} bytes, file has {total}")
    return version, hlen, hdigest


class _Section(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    offset: int
    size: int
    digest: str


class _Header(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    align: int
    digest: str
    meta: msgspec.Raw                  # the format's own object, decoded by the format (typed) on demand
    sections: list[_Section]


# Strict JSON, typed, in C (msgspec): UTF-8 only, no NaN/Infinity, no number out of range, no lone
# surrogate escapes, no unknown or missing keys, ints that are ints (not bools). A repeated key in
# an object is decoded as its last value (JSON leaves this open; only kernbin reads these headers).
_HEADER = msgspec.json.Decoder(_Header)


def _decode_header(hbytes: bytes) -> _Header:
    try:
        doc = _HEADER.decode(hbytes)
    except (msgspec.DecodeError, RecursionError, ValueError) as e:
        text = str(e)
        rule = "header-json"
        if isinstance(e, msgspec.ValidationError) and ("$.sections" in text or "$.align" in text):
            rule = "section-name" if text.rstrip("`").endswith(".name") else "section-table"
        raise ContainerError(rule, f"header is not strict JSON of the container's shape: {text}") from None
    if doc.digest != DIGEST:
        raise ContainerError("header-json", f"unknown digest {doc.digest!r} (this reader knows {DIGEST!r})")
    if bytes(doc.meta)[:1] != b"{":
        raise ContainerError("header-json", "'meta' must be a JSON object")
    return doc


def decode_meta(raw, type=dict):
    """Decode ``meta`` (raw JSON bytes) into ``type`` (a msgspec type; default a plain dict)."""
    try:
        return msgspec.json.decode(raw, type=type)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as e:
        raise ContainerError("header-json", f"'meta' is not what this format expects: {e}") from None


def _int(v) -> bool:
    return type(v) is int and v >= 0


def _check_table(sections: list, align: int) -> tuple[dict, int]:
    """Validate the whole section table: names, order, alignment, no holes or overlaps (types were
    checked by the decoder). Returns ({name: (name, offset, size, digest bytes)} in file order, end
    of the last section). Nothing is read."""
    index, end, mask = {}, 0, align - 1
    name_ok, hex_ok, fromhex = _NAME.fullmatch, _HEX.fullmatch, bytes.fromhex
    for s in sections:
        name, offset, size, hexd = s.name, s.offset, s.size, s.digest
        if not name_ok(name):
            raise ContainerError("section-name", f"illegal section name {name!r}", section=name)
        if name in index:
            raise ContainerError("section-name", f"duplicate section name {name!r}", section=name)
        if offset < 0 or size < 0:
            raise ContainerError("section-table", f"section {name!r}: offset and size must be non-negative "
                                 f"integers, got {offset!r} and {size!r}", section=name)
        if not hex_ok(hexd):
            raise ContainerError("section-table", f"section {name!r}: digest must be 64 lowercase hex digits",
                                 section=name)
        expected = (end + mask) & ~mask
        if offset != expected:
            why = ("overlaps the previous section" if offset < end else
                   "is not a multiple of the alignment" if offset % align else "leaves a hole")
            raise ContainerError("section-bounds", f"section {name!r} at offset {offset} {why} "
                                 f"(expected {expected}, align {align})", section=name)
        end = offset + size
        index[name] = (name, offset, size, fromhex(hexd))
    return index, end


class _Layout:
    """What a header says, checked: derived from the header bytes alone, so it is cached by
    header digest, with the bytes that were verified to have that digest (a later header equal
    to them needs no hashing). ``meta`` is not kept: a container built from a cached layout
    decodes its own fresh copy from ``hbytes`` if and when it is asked for."""

    __slots__ = ("hbytes", "meta_raw", "align", "table", "index", "names", "start", "end")

    def __init__(self, hbytes: bytes, meta_raw: bytes, align: int, index: dict, end: int):
        self.hbytes = hbytes                    # known to hash to the digest it is cached under
        self.meta_raw = meta_raw                # the format's meta, raw JSON (immutable bytes)
        self.align = align
        self.index = index                      # name -> (name, offset, size, digest), file order
        self.table = tuple(index.values())
        self.names = tuple(index)
        self.start = (PREFIX_SIZE + len(hbytes) + align - 1) & -align  # absolute offset of the payload
        self.end = self.start + end                                     # = the exact file length

    def check_length(self, total: int) -> None:
        """The file must end exactly where the last section (or, with none, the padding) ends."""
        if total == self.end:
            return
        if total > self.end:
            raise ContainerError("trailing-data", f"{total - self.end} bytes after the last section")
        cut = next((n for n, off, size, _ in self.table if self.start + off + size > total), None)
        raise ContainerError("truncated", f"the header describes a {self.end}-byte file, it has {total}",
                             section=cut)


_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUT_CACHE_ENTRIES = 256
_LAYOUT_CACHE_MAX_HEADER = 16 << 10          # at most 256 x 16 KiB of cached headers


def _layout(hbytes: bytes, hdigest: bytes, total: int) -> tuple[_Layout, dict]:
    """The checked layout and a fresh ``meta`` dict for a header: from the cache when these exact
    bytes were verified before, else digest check ("header-digest" first), JSON and table."""
    layout = _LAYOUTS.get(hdigest)
    if layout is not None and layout.hbytes == hbytes:   # these bytes were hashed to hdigest before
        if total != layout.end:
            layout.check_length(total)
        return layout, None                               # meta decoded on first use
    if blake3(hbytes).digest() != hdigest:
        raise ContainerError("header-digest", "header digest mismatch (corrupted header)")
    doc = _decode_header(hbytes)
    align = doc.align
    if not 1 <= align <= MAX_ALIGN or align & (align - 1):
        _check_align(align)
    index, end = _check_table(doc.sections, align)
    layout = _Layout(hbytes, bytes(doc.meta), align, index, end)
    if total != layout.end:
        layout.check_length(total)
    if len(hbytes) <= _LAYOUT_CACHE_MAX_HEADER:
        if len(_LAYOUTS) >= _LAYOUT_CACHE_ENTRIES:
            try:
                del _LAYOUTS[next(iter(_LAYOUTS))]
            except (KeyError, RuntimeError, StopIteration):    # another thread got there first
                pass
        _LAYOUTS[hdigest] = layout
    return layout, None


def _gaps(hend: int, start: int, table: list):
    """(absolute start, length) of every padding run: after the header, between sections."""
    if start > hend:
        yield hend, start - hend
    prev = 0
    for _, offset, size, _ in table:
        if offset > prev:
            yield start + prev, offset - prev
        prev = offset + size


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes from ``read``, looping over short reads; "truncated" if the file ends first."""
    data = read(n)
    if data is not None and len(data) == n:        # the common case: one call
        return data
    parts, got = [data or b""], len(data or b"")
    while got < n:
        chunk = read(n - got)
        if not chunk:
            raise ContainerError("truncated", f"file ended after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def pread_exact(fd: int, n: int, start: int) -> bytes:
    """``n`` bytes of ``fd`` from offset ``start``; "truncated" if the file ends first (it shrank)."""
    data = os.pread(fd, n, start)
    if len(data) != n:
        parts, got = [data], len(data)
        while got < n:
            chunk = os.pread(fd, n - got, start + got)
            if not chunk:
                raise ContainerError("truncated", f"the file shrank while open: {got} of {n} bytes at "
                                                  f"offset {start} could be read")
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
    return data


class FileView:
    """An open file read as a buffer: ``view[a:b]`` is ``pread`` of those bytes. Unlike a mapping, a
    file truncated underneath gives a "truncated" :class:`ContainerError` (never a SIGBUS), and a file
    replaced by rename keeps being read as it was (the descriptor holds the old inode)."""
    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self.size)
        if self.fd < 0:
            raise ValueError("read of a closed file view")
        return pread_exact(self.fd, max(0, stop - start), start)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self):
        self.close()


class Container:
    """A parsed, structurally verified container. Build one with :meth:`parse` or :meth:`read`.

    ``meta`` is the caller's header dict (a fresh one per container), ``version`` the format
    version found in the prefix, ``names`` the section names in file order."""

    __slots__ = ("version", "_meta", "header_digest", "_layout", "_buf", "_verified", "_bad")

    def __init__(self, version: int, meta: dict | None, header_digest: bytes, layout: _Layout, buf,
                 verified: dict, bad: list):
        self.version = version
        self._meta = meta
        self.header_digest = header_digest      # BLAKE3 of the header: a key for memoising on meta
        self._layout = layout
        self._buf = buf
        self._verified = verified
        self._bad = bad

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def parse(cls, buffer, *, magic: bytes, versions: Collection[int],
              max_header: int = MAX_HEADER) -> "Container":
        """Check everything but the section digests of a container held in ``buffer``
        (bytes, bytearray, memoryview or mmap); each section's digest is checked on its
        first :meth:`section` access.

        Sections are copied out of ``buffer`` before their digest is computed, so a buffer
        changing underneath (a shared mmap) can fail a read but never pass bad bytes. A
        bytearray or memoryview stays exported (cannot be resized) while the container lives."""
        if type(magic) is not bytes or len(magic) != 8:
            _check_magic_arg(magic)
        if type(buffer) is not bytes and not isinstance(buffer, (mmap.mmap, FileView)):
            buffer = memoryview(buffer).cast("B")
        total = len(buffer)
        prefix = buffer[:PREFIX_SIZE]
        if total >= PREFIX_SIZE:
            found, version, hlen, hdigest = _PREFIX.unpack_from(prefix)
            if found != magic or version not in versions or hlen > max_header or PREFIX_SIZE + hlen > total:
                _check_prefix(prefix, total, magic, versions, max_header)      # raises the precise error
        else:
            _check_prefix(prefix, total, magic, versions, max_header)
        hend = PREFIX_SIZE + hlen
        layout, meta = _layout(bytes(buffer[PREFIX_SIZE:hend]), hdigest, total)
        if layout.start > hend or len(layout.table) > 1 and layout.align > 1:
            for at, n in _gaps(hend, layout.start, layout.table):
                if buffer[at:at + n] != bytes(n):
                    raise ContainerError("padding", f"non-zero padding at byte {at}")
        return cls(version, meta, hdigest, layout, buffer, {}, [])

    @classmethod
    def read(cls, f, size: int | None = None, *, magic: bytes, versions: Collection[int],
             max_header: int = MAX_HEADER) -> "Container":
        """Read and check a container from binary file object ``f`` positioned at its start,
        ``size`` bytes long (default: its fstat size; bytes past ``size`` are not looked at).
        Each section is read straight into its own buffer and its digest checked now; one
        that fails is listed in :attr:`bad` (and :meth:`section` raises for it) instead of
        failing the read, so the intact ones stay usable. Structural defects raise."""
        _check_magic_arg(magic)
        if size is None:
            size = os.fstat(f.fileno()).st_size
        read = f.read
        version, hlen, hdigest = _check_prefix(_read_exact(read, max(0, min(size, PREFIX_SIZE))), size,
                                               magic, versions, max_header)
        layout, meta = _layout(_read_exact(read, hlen), hdigest, size)
        verified, bad = {}, []
        pos, start = PREFIX_SIZE + hlen, layout.start
        for name, offset, n, digest in layout.table:
            at = start + offset
            if at > pos and _read_exact(read, at - pos) != bytes(at - pos):
                raise ContainerError("padding", f"non-zero padding at byte {pos}")
            data = _read_exact(read, n) if n else b""
            pos = at + n
            if blake3(data).digest() == digest:
                verified[name] = data
            else:
                bad.append(name)
        if pos < start and _read_exact(read, start - pos) != bytes(start - pos):   # no sections
            raise ContainerError("padding", f"non-zero padding at byte {pos}")
        return cls(version, meta, hdigest, layout, None, verified, bad)

    # -- access -------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """The caller's header dict (this container's own copy)."""
        if self._meta is None:
            self._meta = decode_meta(self._layout.meta_raw)
        return self._meta

    @property
    def meta_raw(self) -> bytes:
        """``meta`` as raw JSON bytes, for a format that decodes it into its own types."""
        return self._layout.meta_raw

    @property
    def names(self) -> tuple[str, ...]:
        """Section names, in file order."""
        return self._layout.names

    @property
    def align(self) -> int:
        """The alignment of every section's absolute file offset."""
        return self._layout.align

    @property
    def bad(self) -> tuple[str, ...]:
        """Names of the sections found so far to fail their digest (all of them after
        :meth:`read` or :meth:`verify_all`)."""
        return tuple(self._bad)

    def __contains__(self, name: str) -> bool:
        return name in self._layout.index

    def size(self, name: str) -> int:
        """Size in bytes of section ``name`` (from the verified header; nothing is read)."""
        return self._entry(name)[2]

    def digest(self, name: str) -> bytes:
        """The 32-byte BLAKE3 digest the (verified) header records for section ``name``; the
        section's bytes are checked against it when they are read. Nothing is read here."""
        return self._entry(name)[3]

    def section(self, name: str) -> bytes:
        """The bytes of section ``name``, digest verified on first access, then cached.
        Raises ContainerError (rule "section-digest") if they do not match, KeyError if
        there is no such section."""
        data = self._verified.get(name)
        if data is not None:
            return data
        entry = self._layout.index.get(name)
        _, offset, n, digest = entry if entry is not None else self._entry(name)
        if name not in self._bad and self._buf is not None:
            at = self._layout.start + offset
            buf = self._buf
            data = bytes(buf[at:at + n]) if isinstance(buf, memoryview) else buf[at:at + n]
            if blake3(data).digest() == digest:
                self._verified[name] = data
                return data
            self._bad.append(name)
        raise ContainerError("section-digest", f"section {name!r} fails its digest (corrupted data)",
                             section=name)

    def verify_all(self) -> None:
        """Verify every section not verified yet; raise "section-digest" naming the first bad
        one (:attr:`bad` then lists them all). Nothing is raised for a clean container."""
        for name in self._layout.names:
            if name not in self._verified and name not in self._bad:
                try:
                    self.section(name)
                except ContainerError:
                    pass
        if self._bad:
            raise ContainerError("section-digest", f"section(s) {', '.join(self._bad)} fail their digest "
                                 f"(corrupted data)", section=self._bad[0])

    def _entry(self, name: str) -> tuple:
        try:
            return self._layout.index[name]
        except KeyError:
            raise KeyError(f"no section {name!r} (sections: {', '.join(self.names) or 'none'})") from None

    def __repr__(self) -> str:
        return f"Container(version={self.version}, sections={list(self.names)}, bad={self.bad})"
