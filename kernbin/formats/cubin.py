"""NVIDIA native binaries: cubin (ELF, machine 190) and fatbin (many cubins and PTX), and the
runs-on rule for them.

- **cubin**: an ELF64 for ``EM_CUDA`` (190); ``e_flags`` bits 8-15 carry the SM (ABI version 8:
  ``0x5a`` = sm_90). One ``.text.<kernel>`` section per kernel. The ``a`` (architecture-specific)
  and ``f`` (family) variants are not visible in ``e_flags``; kernbin records them at build time.
- **fatbin**: ``u32 magic 0xBA55ED50, u16 version, u16 header size, u64 payload size``, then
  entries, each ``u16 kind (1 PTX, 2 ELF), u16, u32 header size, u64 size, ..., u32 arch at +28``,
  its payload following its header. The driver picks the member for the device at load.

The rule (:func:`cuda_can_run`, NVIDIA's): a cubin for sm_XY runs on a device of the same major
with minor >= Y; an ``a`` cubin only on exactly sm_XY; an ``f`` cubin on the same major family with
minor >= Y; PTX for sm_XY JIT-compiles on any device of compute capability >= XY whose driver knows
its PTX ISA version (``a``/``f`` PTX again only on that exact architecture / family).

Every reader is bounded and raises only :class:`~kernbin.errors.InvalidBinary` (with ``rule``).
"""

from __future__ import annotations

import re
import struct

from ..device import Requirements
from ..errors import InvalidBinary

__all__ = ["EM_CUDA", "FATBIN_MAGIC", "is_cubin", "is_fatbin", "cubin_sm", "cubin_kernels", "fatbin_members",
           "requirements_cubin", "requirements_fatbin", "cuda_can_run", "driver_ptx_isa", "parse_ptxas_log",
           "parse_arch"]

EM_CUDA = 190
FATBIN_MAGIC = 0xBA55ED50
_FAT_HEADER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQ")
_MAX_ENTRIES = 4096
_ARCH = re.compile(r"sm_(\d{2,3})([af]?)")

#: CUDA driver version (cuDriverGetVersion, e.g. 13000) -> the newest PTX ISA it JIT-compiles
_PTX_ISA = {12000: (8, 0), 12010: (8, 1), 12020: (8, 2), 12030: (8, 3), 12040: (8, 4), 12050: (8, 5),
            12060: (8, 5), 12080: (8, 7), 12090: (8, 8), 13000: (9, 0)}


def parse_arch(text: str) -> tuple[int, str]:
    """``"sm_90a"`` -> ``(90, "a")``; InvalidBinary for anything else."""
    m = _ARCH.fullmatch(str(text))
    if not m:
        raise InvalidBinary(f"not an NVIDIA architecture: {text!r} (expected sm_XY, sm_XYa or sm_XYf)", rule="arch")
    return int(m.group(1)), m.group(2)


def driver_ptx_isa(driver_version: int) -> tuple[int, int]:
    """The newest PTX ISA a driver of this CUDA version JIT-compiles (CUDA 12.x -> 8.x, 13.0 -> 9.0;
    later 13.x assumed 9.x)."""
    known = [v for v in _PTX_ISA if v <= driver_version]
    if not known:
        return (7, 8)                               # CUDA 11.8 and older: at most 7.8
    best = _PTX_ISA[max(known)]
    if driver_version >= 13000:
        best = max(best, (9, (driver_version % 1000) // 10))
    return best


def is_cubin(data: bytes) -> bool:
    return len(data) >= 64 and data[:4] == b"\x7fELF" and data[4] == 2 and \
        struct.unpack_from("<H", data, 18)[0] == EM_CUDA


def is_fatbin(data: bytes) -> bool:
    return len(data) >= _FAT_HEADER.size and struct.unpack_from("<I", data, 0)[0] == FATBIN_MAGIC


def cubin_sm(data: bytes) -> int:
    """The SM in a cubin's ``e_flags`` (ABI 8: bits 8-15; older ABIs: bits 0-7)."""
    if not is_cubin(data):
        raise InvalidBinary("not a cubin (ELF64 for machine 190)", rule="not-cubin")
    flags = struct.unpack_from("<I", data, 48)[0]
    return (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF


def cubin_kernels(data: bytes) -> tuple[str, ...]:
    """Kernel names: the ``.text.<name>`` sections (read from the section table, bounded)."""
    if not is_cubin(data):
        raise InvalidBinary("not a cubin (ELF64 for machine 190)", rule="not-cubin")
    try:
        shoff, = struct.unpack_from("<Q", data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
        if shentsize != 64 or shnum > 65535 or shstrndx >= shnum or shoff + shnum * 64 > len(data):
            raise InvalidBinary("cubin section table is out of bounds", rule="elf")
        def sec(i):
            return struct.unpack_from("<IIQQQQ", data, shoff + i * 64)
        _, _, _, _, str_off, str_size = sec(shstrndx)
        if str_off + str_size > len(data):
            raise InvalidBinary("cubin section names are out of bounds", rule="elf")
        names, seen, budget = [], {}, str_size
        stop = str_off + str_size
        for i in range(shnum):
            name_off = sec(i)[0]
            if name_off >= str_size:
                continue
            name = seen.get(name_off)
            if name is None:
                start = str_off + name_off
                if data[start:min(start + 6, stop)] != b".text.":
                    continue
                # Only kernel names are read in full, each offset once. Two different ".text.<name>"
                # strings cannot overlap (a kernel name has no "."), so together they fit in the
                # string table: more means a hostile table (names sharing one long run would make
                # this loop quadratic).
                end = data.find(b"\0", start, stop)
                end = stop if end < 0 else end
                budget -= end - start
                if budget < 0:
                    raise InvalidBinary("cubin section names overlap (malformed string table)", rule="elf")
                name = seen[name_off] = data[start + 6:end].decode("utf-8", "replace")
            names.append(name)
        return tuple(names)
    except struct.error:
        raise InvalidBinary("truncated cubin", rule="elf") from None


def fatbin_members(data: bytes) -> list[dict]:
    """``[{"kind": "cubin" | "ptx", "sm": int, "offset": int, "size": int}]``, bounds-checked."""
    if not is_fatbin(data):
        raise InvalidBinary("not a fatbin (magic 0xBA55ED50)", rule="not-fatbin")
    _, _, hsize, fsize = _FAT_HEADER.unpack_from(data, 0)
    if hsize < _FAT_HEADER.size or hsize + fsize > len(data):
        raise InvalidBinary(f"fatbin header claims {hsize}+{fsize} bytes, file has {len(data)}", rule="fatbin-bounds")
    out, pos, end = [], hsize, hsize + fsize
    while pos < end:
        if len(out) >= _MAX_ENTRIES or pos + 32 > end:
            raise InvalidBinary(f"fatbin entry at byte {pos} is truncated", rule="fatbin-bounds")
        kind, _, ehs, size = _ENTRY.unpack_from(data, pos)
        arch, = struct.unpack_from("<I", data, pos + 28)
        if ehs < 32 or pos + ehs + size > end:
            raise InvalidBinary(f"fatbin entry at byte {pos} runs past the end", rule="fatbin-bounds")
        if kind in (1, 2):
            out.append({"kind": "ptx" if kind == 1 else "cubin", "sm": arch, "offset": pos + ehs, "size": size})
        pos += ehs + size
    if not out:
        raise InvalidBinary("fatbin holds no cubin or PTX", rule="fatbin-members")
    return out


def requirements_cubin(sm: int, variant: str = "") -> Requirements:
    return Requirements("cuda", {"code": "cubin", "sm": sm, "variant": variant})


def requirements_fatbin(members: list[dict]) -> Requirements:
    """``members``: ``{"code": "cubin" | "ptx", "sm": int, "variant": str, "ptx_isa": "X.Y"}`` each."""
    return Requirements("cuda-fat", {"members": members})


def _isa(text) -> tuple[int, int] | None:
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _one(m: dict, sm: int, ptx_isa: tuple[int, int]) -> tuple[bool, str, str]:
    code, want, variant = m.get("code"), m.get("sm"), m.get("variant", "")
    if not isinstance(want, int) or isinstance(want, bool) or variant not in ("", "a", "f"):
        return False, "requirements", f"malformed requirement {m!r}"
    name = f"sm_{want}{variant}"
    if code == "cubin":
        if variant == "a" and sm != want:
            return False, "sm", f"cubin for {name} runs only on exactly {name}; device is sm_{sm}"
        if sm // 10 != want // 10 or sm < want:
            return False, "sm", f"cubin for {name} needs sm_{want // 10}x with x >= {want % 10}; device is sm_{sm}"
        return True, "", ""
    if code == "ptx":
        isa = _isa(m.get("ptx_isa", ""))
        if isa is None:
            return False, "ptx-isa", f"PTX without a readable ISA version ({m.get('ptx_isa')!r})"
        if isa > ptx_isa:
            return False, "ptx-isa", (f"PTX ISA {isa[0]}.{isa[1]} is newer than this driver compiles "
                                      f"({ptx_isa[0]}.{ptx_isa[1]})")
        if variant == "a" and sm != want or variant == "f" and (sm // 10 != want // 10 or sm < want):
            return False, "sm", f"PTX for {name} runs only on that architecture{' family' if variant == 'f' else ''}"
        if sm < want:
            return False, "sm", f"PTX for {name} needs compute capability >= {want}; device is sm_{sm}"
        return True, "", ""
    return False, "requirements", f"unknown code kind {code!r}"


def cuda_can_run(req: Requirements, sm: int, ptx_isa: tuple[int, int]) -> tuple[bool, str, str, str | None]:
    """NVIDIA's rule against a device of compute capability ``sm`` (e.g. 90) whose driver compiles
    PTX up to ``ptx_isa``. Returns ``(ok, rule, reason, member)``; for a fatbin ``member`` says which
    member the driver will use (a cubin when one fits: no JIT; else the PTX, and then the verdict
    is ok with ``rule="driver-jit"`` and the reason: the driver JIT-compiles it at load)."""
    if req.kind == "cuda":
        ok, rule, reason = _one(dict(req.values), sm, ptx_isa)
        return ok, rule, reason, None
    if req.kind == "cuda-fat":
        raw = req.get("members", [])
        members = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        fits = [m for m in members if _one(m, sm, ptx_isa)[0]]
        cubins = [m for m in fits if m.get("code") == "cubin"]
        if cubins:
            best = max(cubins, key=lambda m: m["sm"])        # _one checked that "sm" is an int
            return True, "", "", f"cubin sm_{best['sm']}{best.get('variant', '')}"
        if fits:
            name = f"sm_{fits[0]['sm']}{fits[0].get('variant', '')}"
            return True, "driver-jit", (f"no cubin in the fatbin runs on sm_{sm}: the driver JIT-compiles its PTX "
                                        f"for {name}"), f"ptx {name} (JIT)"
        have = ", ".join(f"{m.get('code')} sm_{m.get('sm')}{m.get('variant', '')}" for m in members) or "none"
        return False, "sm", f"no fatbin member runs on sm_{sm} (has: {have})", None
    return False, "kind", f"not an NVIDIA binary ({req.kind})", None


_FN = re.compile(r"Function properties for '?([A-Za-z_$][\w$]*)'?:?\s*$")
_PTXAS_FN = re.compile(r"ptxas\s+info\s*:\s*Function properties for ([A-Za-z_$][\w$]*)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"[Uu]sed (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_LMEM = re.compile(r"(\d+) bytes lmem")
_STACK = re.compile(r"(\d+) stack\b")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Per kernel from ptxas / nvJitLink verbose output: registers, spill_stores, spill_loads (and
    spill_bytes = spill_stores) when ptxas reports them, stack_frame, shared (static smem) and
    local (lmem) bytes. A figure the log does not give is absent, never guessed."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines()[:100_000]:
        m = _PTXAS_FN.search(line) or _FN.search(line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        s = _SPILL.search(line)
        if s:
            current.update(stack_frame=int(s.group(1)), spill_stores=int(s.group(2)), spill_loads=int(s.group(3)))
        u = _USED.search(line)
        if u:
            current["registers"] = int(u.group(1))
        sm = _SMEM.search(line)
        if sm:
            current["shared"] = int(sm.group(1))
        lm = _LMEM.search(line)
        if lm:
            current["local"] = int(lm.group(1))
        st = _STACK.search(line)
        if st and "stack_frame" not in current:
            current["stack_frame"] = int(st.group(1))
    for k in out.values():
        if "spill_stores" in k:               # only ptxas -v reports spills; older nvJitLink logs do not
            k["spill_bytes"] = k["spill_stores"]
    return out
