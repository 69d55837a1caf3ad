"""Intel GPU native binaries (zebin) and ocloc's multi-device fat archives.

zebin is an ELF64 for machine 205 (Intel GT) with one ``.text.<kernel>`` per
kernel, ``.ze_info`` (YAML: per-kernel execution environment and buffers), an
optional ``.spv`` (the IR, dropped by ``-exclude_ir``) and ``.note.intelgt.compat``
(owner ``IntelGT``; type 1 product family, 2 GFX core family, 3 target metadata,
4 zebin version). Parsed with pyelftools and ``yaml.safe_load``.

A fat binary from ``ocloc -device a,b,c`` is a Unix ``ar`` archive: one member per
device named ``<pointer bits>.<ip version>`` (e.g. ``64.12.60.7``), ``pad_N``
alignment members, and ``generic_ir`` (the SPIR-V, which Intel's runtime compiles for a device
that has no member: ``-exclude_ir`` leaves it out, as kernbin's builds do).

Malformed input raises :class:`~kernbin.errors.InvalidBinary` with the reason and a
stable ``rule`` id:

- ELF header: ``not-elf`` (no ELF magic or too short), ``elf-class`` (not little-endian
  ELF64), ``machine`` (not EM_INTELGT), ``elf-type`` (not a zebin ELF type);
- sections: ``elf-tables`` (a section table outside the file or of more than
  :data:`MAX_SECTIONS` entries, or section names that together run far past the file
  size: see :func:`check_elf_tables`), ``section-bounds`` (a section lies outside the
  file), ``missing-text`` (a kernel in ``.ze_info`` has no ``.text.<kernel>``),
  ``malformed`` (any other failure while reading the ELF, e.g. an exception from pyelftools);
- ``.ze_info``: ``no-ze-info``, ``ze-info-size`` (implausibly large), ``ze-info-yaml``
  (not YAML/UTF-8, or uses an alias), ``ze-info-kernels`` (no kernel list), ``kernel-entry``
  (entry without a name), ``execution-env`` (not a mapping, or a bad integer in it), ``buffer`` (bad
  ``per_thread_memory_buffers`` entry or size);
- ``ar`` archives: ``ar-magic``, ``ar-header`` (bad header terminator), ``ar-size`` (bad
  size field), ``ar-bounds`` (a header or member runs past the end), ``ar-long-name``
  (GNU long-name reference out of range), ``ar-duplicate`` (two members of one name);
- fat binaries: ``fat-no-member`` (no member for the asked IP version), ``fat-members``
  (no zebin member named by an IP version at all).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from ..device import Requirements
from ..errors import InvalidBinary

__all__ = ["EM_INTELGT", "ZebinKernel", "Zebin", "parse_zebin", "is_zebin", "AR_MAGIC", "read_ar",
           "is_fat", "select_from_fat", "requirements", "intel_gpu_can_run", "check_elf_tables",
           "MAX_SECTIONS", "MAX_SYMBOLS", "GENERIC_IR"]

EM_INTELGT = 205
_ET_OK = (1, 2, 3, 0xFF11, 0xFF12, 0xFF13)      # REL/EXEC/DYN and the ZEBIN_* variants
_NOTE_NAMES = {1: "product_family", 2: "gfx_core_family", 3: "target_metadata", 4: "zebin_version"}
MAX_ZE_INFO = 16 << 20
MAX_SECTIONS = 1 << 14          # sections of one ELF (a zebin has about one per kernel, plus ~10)
MAX_SYMBOLS = 1 << 15           # symbols of one symbol table
GENERIC_IR = "generic_ir"       # the fat-archive member holding the IR


@dataclass(frozen=True)
class ZebinKernel:
    name: str
    grf_count: int | None
    simd_size: int | None
    slm_size: int
    barrier_count: int
    has_dpas: bool
    scratch_size: int            # bytes per hardware thread, from per_thread_memory_buffers
    private_size: int
    num_args: int
    code_size: int

    def attributes(self) -> dict[str, int]:
        out = {"grf_count": self.grf_count or 0, "simd_size": self.simd_size or 0, "slm_size": self.slm_size,
               "barrier_count": self.barrier_count, "has_dpas": int(self.has_dpas),
               "scratch_size": self.scratch_size, "private_size": self.private_size,
               "num_args": self.num_args, "code_size": self.code_size}
        return out


@dataclass(frozen=True)
class Zebin:
    kernels: tuple[ZebinKernel, ...]
    notes: dict = field(default_factory=dict)     # product_family, gfx_core_family, target_metadata, zebin_version
    sections: dict = field(default_factory=dict)  # name -> size
    ze_info_version: str = ""

    @property
    def has_ir(self) -> bool:
        """Whether the zebin carries its IR (a ``.spv`` section), which a runtime recompiles from."""
        return ".spv" in self.sections

    def kernel(self, name: str) -> ZebinKernel | None:
        return next((k for k in self.kernels if k.name == name), None)


def is_zebin(data: bytes) -> bool:
    return len(data) >= 20 and data[:4] == b"\x7fELF" and data[4] == 2 and \
        struct.unpack_from("<H", data, 18)[0] == EM_INTELGT


def _int(v, what: str, rule: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidBinary(f".ze_info: {what} is not a non-negative integer: {v!r}", rule=rule)
    return v


def parse_zebin(data: bytes) -> Zebin:
    """Parse and check a zebin; never raises anything but InvalidBinary for bad input."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise InvalidBinary("not an ELF file (zebin expected)", rule="not-elf")
    if data[4] != 2 or data[5] != 1:
        raise InvalidBinary("zebin must be a little-endian ELF64 file", rule="elf-class")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_INTELGT:
        raise InvalidBinary(f"ELF machine {e_machine} is not Intel GT ({EM_INTELGT})", rule="machine")
    if e_type not in _ET_OK:
        raise InvalidBinary(f"ELF type 0x{e_type:x} is not a zebin type", rule="elf-type")
    try:
        check_elf_tables(data, "zebin")
        return _parse(data)
    except InvalidBinary:
        raise
    except Exception as e:   # pyelftools and yaml raise many kinds on hostile input
        raise InvalidBinary(f"malformed zebin: {type(e).__name__}: {e}", rule="malformed") from None


def check_elf_tables(data: bytes, what: str, *, symbols: bool = False) -> None:
    """Linear-time bounds, checked with ``struct`` before pyelftools walks an ELF64 (little-endian,
    header already checked): it is not built for hostile input -- it walks the whole section table
    on each lookup and reads every name from its offset to the next NUL *in the file*, 64 bytes
    per Python call, so a few MB of section headers whose names share one long run without a NUL
    take minutes (and 65535 plain ones about 2 s).

    Raises :class:`InvalidBinary` (rule ``elf-tables``) unless: the section table (extended
    numbering included) lies in the file, has at most :data:`MAX_SECTIONS` entries of at least
    64 bytes; with ``symbols``, the symbol tables have at most :data:`MAX_SYMBOLS` entries in all; and
    all those names together (as pyelftools reads them) are at most 4 x the file size + 1 MiB."""
    n = len(data)
    shoff, = struct.unpack_from("<Q", data, 40)
    if shoff == 0:
        return                                          # no section table
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)

    def bad(reason):
        return InvalidBinary(f"{what}: {reason}", rule="elf-tables")
    if shentsize < 64 or shoff > n - 64:
        raise bad(f"section table at {shoff} (entries of {shentsize} bytes) is not inside the file")
    if shnum == 0 or shstrndx == 0xFFFF:                # extended numbering: the values are in section 0
        size0, link0 = struct.unpack_from("<Q", data, shoff + 32)[0], struct.unpack_from("<I", data, shoff + 40)[0]
        shnum = size0 if shnum == 0 else shnum
        shstrndx = link0 if shstrndx == 0xFFFF else shstrndx
    if shnum > MAX_SECTIONS:
        raise bad(f"{shnum} sections (at most {MAX_SECTIONS})")
    if shoff + (shnum - 1) * shentsize + 64 > n:
        raise bad(f"section table of {shnum} entries runs past the end of the file")
    budget = 4 * n + (1 << 20)

    def names(strtab: int, offsets) -> None:
        nonlocal budget
        if strtab >= shnum:
            return
        base, = struct.unpack_from("<Q", data, shoff + strtab * shentsize + 24)
        for off in offsets:
            start = base + off
            if start >= n:
                continue
            end = data.find(b"\0", start, start + budget + 1)
            budget -= (end if end >= 0 else min(n, start + budget + 1)) - start
            if budget < 0:
                raise bad("section or symbol names run far past the end of the file (overlapping names)")
    headers = [shoff + i * shentsize for i in range(shnum)]
    names(shstrndx, (struct.unpack_from("<I", data, h)[0] for h in headers))
    if symbols:
        total = 0
        for h in headers:
            typ, = struct.unpack_from("<I", data, h + 4)
            if typ not in (2, 11):                      # SHT_SYMTAB, SHT_DYNSYM
                continue
            off, size = struct.unpack_from("<QQ", data, h + 24)
            link, = struct.unpack_from("<I", data, h + 40)
            entsize, = struct.unpack_from("<Q", data, h + 56)
            if entsize == 0:
                continue                                # pyelftools refuses it
            count = size // entsize
            total += count
            if total > MAX_SYMBOLS:
                raise bad(f"symbol tables of {total} entries or more (at most {MAX_SYMBOLS} in all)")
            names(link, (struct.unpack_from("<I", data, off + k * entsize)[0] for k in range(count)
                         if off + k * entsize + 4 <= n))


_LOADER = None


def _ze_info_loader():
    """The YAML loader for ``.ze_info``: libyaml's (``CSafeLoader``, when PyYAML has it: 5-10x
    faster than the pure-Python one, which takes seconds for a few hundred kernels, and with a
    bound on nesting depth, where the pure-Python scanner goes quadratic), refusing aliases
    (``*name``): IGC never writes them, and a few nested ones (a YAML "billion laughs") expand
    to billions of nodes as soon as a value is printed or walked (``str()`` of the version, an
    error message), hanging the reader. A node constructed twice is an alias."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class _ZeInfoLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            def construct_object(self, node, deep=False):
                if node in self.constructed_objects:
                    raise yaml.constructor.ConstructorError(None, None, "aliases are not allowed in .ze_info",
                                                            node.start_mark)
                return super().construct_object(node, deep)
        _LOADER = _ZeInfoLoader
    return _LOADER


def _parse(data: bytes) -> Zebin:
    import yaml
    from elftools.elf.elffile import ELFFile
    elf = ELFFile(io.BytesIO(data))
    sections, text = {}, {}
    for s in elf.iter_sections():
        if not s.name:
            continue
        off, size = s["sh_offset"], s["sh_size"]
        if s["sh_type"] != "SHT_NOBITS" and off + size > len(data):
            raise InvalidBinary(f"section {s.name} [{off}, {off + size}) lies outside the file ({len(data)} bytes)",
                                rule="section-bounds")
        sections[s.name] = size
        if s.name.startswith(".text."):
            text[s.name[len(".text."):]] = size
    ze = elf.get_section_by_name(".ze_info")
    if ze is None:
        raise InvalidBinary("zebin has no .ze_info section", rule="no-ze-info")
    if ze["sh_size"] > MAX_ZE_INFO:
        raise InvalidBinary(f".ze_info of {ze['sh_size']} bytes is implausibly large", rule="ze-info-size")
    try:
        info = yaml.load(ze.data().decode("utf-8"), Loader=_ze_info_loader())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InvalidBinary(f".ze_info is not valid YAML: {e}", rule="ze-info-yaml") from None
    if not isinstance(info, dict) or not isinstance(info.get("kernels", []), list):
        raise InvalidBinary(".ze_info has no kernel list", rule="ze-info-kernels")
    kernels = []
    for k in info.get("kernels") or []:
        if not isinstance(k, dict) or not isinstance(k.get("name"), str):
            raise InvalidBinary(".ze_info kernel entry without a name", rule="kernel-entry")
        env = k.get("execution_env") or {}
        if not isinstance(env, dict):
            raise InvalidBinary(f".ze_info: kernel {k['name']}: execution_env is not a mapping",
                                rule="execution-env")
        scratch = private = 0
        for buf in k.get("per_thread_memory_buffers") or []:
            if not isinstance(buf, dict):
                raise InvalidBinary(f".ze_info: kernel {k['name']}: bad per_thread_memory_buffers entry",
                                    rule="buffer")
            size = _int(buf.get("size"), "buffer size", "buffer")
            if buf.get("type") == "scratch":
                scratch += size
            elif buf.get("type") == "private_space":
                private += size
        args = {a.get("arg_index") for a in (k.get("payload_arguments") or [])
                if isinstance(a, dict) and isinstance(a.get("arg_index"), int)}
        kernels.append(ZebinKernel(
            name=k["name"], grf_count=_int(env.get("grf_count"), "grf_count", "execution-env") or None,
            simd_size=_int(env.get("simd_size"), "simd_size", "execution-env") or None,
            slm_size=_int(env.get("slm_size"), "slm_size", "execution-env"),
            barrier_count=_int(env.get("barrier_count"), "barrier_count", "execution-env"),
            has_dpas=bool(env.get("has_dpas", False)), scratch_size=scratch, private_size=private,
            num_args=len(args), code_size=text.get(k["name"], 0)))
    missing = [k.name for k in kernels if k.name not in text]
    if missing:
        raise InvalidBinary(f"kernel(s) {', '.join(missing)} in .ze_info have no .text section",
                            rule="missing-text")
    notes = {}
    compat = elf.get_section_by_name(".note.intelgt.compat")
    if compat is not None:
        for note in compat.iter_notes():
            if note["n_name"] != "IntelGT":
                continue
            ntype = note["n_type"]
            ntype = {"NT_GNU_ABI_TAG": 1, "NT_GNU_HWCAP": 2, "NT_GNU_BUILD_ID": 3,
                     "NT_GNU_GOLD_VERSION": 4}.get(ntype, ntype)   # pyelftools names them as GNU notes
            desc = note["n_desc"]
            if isinstance(desc, str):
                desc = desc.encode("latin-1")
            key = _NOTE_NAMES.get(ntype)
            if key == "zebin_version":
                notes[key] = bytes(desc).split(b"\0")[0].decode("ascii", "replace")
            elif key and len(desc) >= 4:
                notes[key] = struct.unpack_from("<I", bytes(desc))[0]
    return Zebin(kernels=tuple(kernels), notes=notes, sections=sections, ze_info_version=str(info.get("version", "")))


# -- ocloc fat binaries (ar archives) ---------------------------------------------------

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def is_fat(data: bytes) -> bool:
    return data[:8] == AR_MAGIC


def read_ar(data: bytes) -> dict[str, bytes]:
    """Members of an ``ar`` archive by name (GNU long names supported)."""
    if not is_fat(data):
        raise InvalidBinary("not an ar archive (bad magic)", rule="ar-magic")
    members, longnames, pos = {}, b"", len(AR_MAGIC)
    while pos < len(data):
        if pos + _AR_HEADER > len(data):
            raise InvalidBinary(f"truncated ar member header at byte offset {pos}", rule="ar-bounds")
        hdr = data[pos:pos + _AR_HEADER]
        if hdr[58:60] != b"`\n":
            raise InvalidBinary(f"bad ar member header at byte offset {pos}", rule="ar-header")
        try:
            size = int(hdr[48:58].decode("ascii").strip())
        except ValueError:
            raise InvalidBinary(f"bad ar member size at byte offset {pos}", rule="ar-size") from None
        if size < 0 or pos + _AR_HEADER + size > len(data):
            raise InvalidBinary(f"ar member at byte offset {pos} ({size} bytes) runs past the end",
                                rule="ar-bounds")
        raw_name = hdr[:16].decode("ascii", "replace").rstrip()
        body = data[pos + _AR_HEADER:pos + _AR_HEADER + size]
        if raw_name == "//":
            longnames = body
        elif raw_name in ("/", "/SYM64/"):
            pass                                      # symbol table
        else:
            if raw_name.startswith("/") and raw_name[1:].isdigit():
                off = int(raw_name[1:])
                end = longnames.find(b"/\n", off)
                if off >= len(longnames) or end < 0:
                    raise InvalidBinary(f"ar long name reference {raw_name} is out of range",
                                        rule="ar-long-name")
                name = longnames[off:end].decode("utf-8", "replace")
            else:
                name = raw_name[:-1] if raw_name.endswith("/") else raw_name
            if name in members:
                raise InvalidBinary(f"duplicate ar member {name!r}", rule="ar-duplicate")
            members[name] = bytes(body)
        pos += _AR_HEADER + size + (size & 1)
    return members


def select_from_fat(data: bytes, ip_version: str, names: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """The member for a device: by IP version (``64.<ip>``), else by one of its names."""
    members = read_ar(data)
    for candidate in (f"64.{ip_version}", ip_version, *names):
        if candidate in members:
            return candidate, members[candidate]
    devices = [m for m in members if not m.startswith("pad_") and m != GENERIC_IR]
    raise InvalidBinary(f"fat binary has no entry for {ip_version} (has: {', '.join(devices) or 'none'})",
                        rule="fat-no-member")


# -- the Intel GPU runs-on rule ------------------------------------------------------------

def _version_tuple(text) -> tuple[int, int] | None:
    parts = str(text).split(".")
    if len(parts) < 2 or not all(p.isdigit() and len(p) <= 6 for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def _member_ip(name: str) -> str | None:
    """``64.12.60.7`` -> ``12.60.7`` (ocloc names fat-archive members ``<pointer bits>.<ip>``)."""
    parts = name.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts) and parts[0] in ("32", "64"):
        return ".".join(parts[1:])
    return None


def requirements(data: bytes, device: str = "", ip_version: str | None = None) -> Requirements:
    """What a zebin (or an ocloc fat archive of zebins) needs from a device. ``ip_version`` is
    the IP the builder targeted (ocloc knows it; a driver-made zebin has its device's)."""
    if is_fat(data):
        members = []
        for name, body in read_ar(data).items():
            ip = _member_ip(name)
            if ip is None or not is_zebin(body):
                continue
            z = parse_zebin(body)
            members.append({"member": name, "ip_version": ip, "ze_info_version": z.ze_info_version,
                            "device": name})
        if not members:
            raise InvalidBinary("fat binary holds no zebin for a named IP version", rule="fat-members")
        return Requirements("intel-gpu-fat", {"members": members})
    z = parse_zebin(data)
    values = {"ip_version": ip_version or "", "ze_info_version": z.ze_info_version, "device": device}
    for k in ("product_family", "gfx_core_family"):
        if k in z.notes:
            values[k] = z.notes[k]
    return Requirements("intel-gpu", values)


def intel_gpu_can_run(req: Requirements, ip_version: str | None, decoder_version: str | None
                      ) -> tuple[bool, str, str, str | None]:
    """NEO's rule for a zebin, applied before the driver sees the bytes.

    - the device's IP version must equal the one the zebin was built for (a product config
      pins it exactly; NEO's compatibility map is only behind a debug flag);
    - the ``.ze_info`` major version must equal the runtime decoder's and the minor must not be
      newer (a newer minor is only a warning in NEO, and such binaries crashed an older runtime
      in ``zeModuleGetKernelNames``). ``decoder_version`` None = unknown (not checked).

    Returns ``(ok, rule, reason, member)``; ``member`` names the fat-archive member to load.
    """
    if req.kind == "intel-gpu-fat":
        raw = req.get("members", [])
        members = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        for m in members:
            if _member_ip(str(m.get("member"))) != m.get("ip_version"):
                return False, "requirements", f"fat member {m.get('member')!r} is not for IP {m.get('ip_version')}", None
        same_ip = [m for m in members if m.get("ip_version") == ip_version]
        for m in same_ip:
            ok, rule, reason, _ = intel_gpu_can_run(Requirements("intel-gpu", m), ip_version, decoder_version)
            if ok:
                return True, "", "", str(m.get("member"))
        if same_ip:                     # the member for this IP exists but fails another rule: say which
            return (False, *intel_gpu_can_run(Requirements("intel-gpu", same_ip[0]), ip_version, decoder_version)[1:3],
                    None)
        have = ", ".join(str(m.get("ip_version")) for m in members) or "none"
        return False, "ip-version", f"fat binary has no member for IP {ip_version} (has: {have})", None
    if req.kind != "intel-gpu":
        return False, "kind", f"not an Intel GPU binary ({req.kind})", None
    want = req.get("ip_version")
    if not ip_version:
        return False, "ip-version", "the device reports no Intel IP version", None
    if want != ip_version:
        return False, "ip-version", f"built for IP {want} ({req.get('device') or '?'}), device is IP {ip_version}", None
    if decoder_version is not None:
        have, dec = _version_tuple(req.get("ze_info_version", "")), _version_tuple(decoder_version)
        if have is None:
            return False, "zebin-version", f"zebin has no readable .ze_info version ({req.get('ze_info_version')!r})", None
        if dec is not None and (have[0] != dec[0] or have[1] > dec[1]):
            return False, "zebin-version", (f".ze_info version {have[0]}.{have[1]} is newer than or foreign to what "
                                            f"this runtime decodes ({dec[0]}.{dec[1]}): an older runtime can crash "
                                            f"on it"), None
    return True, "", "", None
