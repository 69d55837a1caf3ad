"""What a cubin says about its kernels in its ``.nv.info`` sections (bounded, struct only).

ptxas records per kernel: the register count (``EIATTR_REGCOUNT``), the stack frame
(``EIATTR_FRAME_SIZE``), every parameter's ordinal, offset and size (``EIATTR_KPARAM_INFO``), the
parameter bank's size (``EIATTR_CBANK_PARAM_SIZE``) and ``.reqntid`` (``EIATTR_REQNTID``). kernbin's
Triton path reads them to check the launch metadata against the bytes that will run (the parameter
list Triton's metadata implies must be the one ptxas laid out) and to record registers when no
ptxas log is at hand. Belongs in ``kernbin/formats/cubin.py`` (owned elsewhere; see the report).
"""

from __future__ import annotations

import struct

from ..errors import InvalidBinary

__all__ = ["kernel_info"]

_REGCOUNT, _FRAME_SIZE, _REQNTID, _KPARAM_INFO, _CBANK_PARAM_SIZE = 0x2F, 0x11, 0x10, 0x17, 0x19
_SHT_SYMTAB = 2
_MAX_SECTIONS = 1 << 16


def _sections(data: bytes):
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        raise InvalidBinary("not a 64-bit ELF", rule="elf")
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    if shentsize != 64 or shnum > _MAX_SECTIONS or shstrndx >= shnum or shoff + shnum * 64 > len(data):
        raise InvalidBinary("cubin section table is out of bounds", rule="elf")
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
    for s in secs:
        if s[1] != 8 and s[4] + s[5] > len(data):         # SHT_NOBITS holds no bytes
            raise InvalidBinary("a cubin section lies outside the file", rule="elf")
    str_off, str_size = secs[shstrndx][4], secs[shstrndx][5]

    def name(off: int) -> str:
        if off >= str_size:
            return ""
        end = data.find(b"\0", str_off + off, str_off + str_size)
        return data[str_off + off:end if end >= 0 else str_off + str_size].decode("utf-8", "replace")
    return secs, name


def _records(blob: bytes):
    """``(attribute, format, value bytes)`` of an ``.nv.info`` section."""
    i = 0
    while i + 4 <= len(blob):
        fmt, attr = blob[i], blob[i + 1]
        if fmt == 4:                                        # EIFMT_SVAL: u16 size + bytes
            size, = struct.unpack_from("<H", blob, i + 2)
            if i + 4 + size > len(blob):
                raise InvalidBinary("truncated .nv.info record", rule="elf")
            yield attr, fmt, blob[i + 4:i + 4 + size]
            i += 4 + size
        else:                                               # EIFMT_NVAL / BVAL / HVAL: 2 bytes
            yield attr, fmt, blob[i + 2:i + 4]
            i += 4


def kernel_info(data: bytes) -> dict[str, dict]:
    """``{kernel: {"registers", "stack_frame", "reqntid", "param_bytes", "params": [(ordinal, offset,
    size), ...]}}`` for every kernel the cubin's ``.nv.info`` sections describe."""
    try:
        secs, name = _sections(data)
        symtab = next((s for s in secs if s[1] == _SHT_SYMTAB), None)
        sym_names: dict[int, str] = {}
        if symtab is not None and symtab[6] < len(secs):
            strtab = secs[symtab[6]]
            count = min(symtab[5] // 24, 1 << 16)
            for idx in range(count):
                st_name, = struct.unpack_from("<I", data, symtab[4] + idx * 24)
                if st_name < strtab[5]:
                    start = strtab[4] + st_name
                    end = data.find(b"\0", start, strtab[4] + strtab[5])
                    sym_names[idx] = data[start:end if end >= 0 else strtab[4] + strtab[5]].decode("utf-8", "replace")
        out: dict[str, dict] = {}
        for s in secs:
            sname = name(s[0])
            if not sname.startswith(".nv.info"):
                continue
            blob = data[s[4]:s[4] + s[5]]
            own = sname[len(".nv.info."):] if sname.startswith(".nv.info.") else None
            for attr, fmt, val in _records(blob):
                if own is None and attr in (_REGCOUNT, _FRAME_SIZE) and fmt == 4 and len(val) >= 8:
                    sym, v = struct.unpack_from("<II", val)
                    kernel = sym_names.get(sym)
                    if kernel:
                        out.setdefault(kernel, {"params": []})["registers" if attr == _REGCOUNT
                                                                else "stack_frame"] = v
                elif own is not None:
                    entry = out.setdefault(own, {"params": []})
                    if attr == _KPARAM_INFO and fmt == 4 and len(val) >= 12:
                        _, ordinal, offset, flags = struct.unpack_from("<IHHI", val)
                        entry["params"].append((ordinal, offset, (flags >> 18) & 0x3FFF))
                    elif attr == _CBANK_PARAM_SIZE:
                        entry["param_bytes"], = struct.unpack_from("<H", val)
                    elif attr == _REQNTID and fmt == 4 and len(val) >= 12:
                        entry["reqntid"] = list(struct.unpack_from("<III", val))
        for entry in out.values():
            entry["params"].sort()
        return out
    except struct.error:
        raise InvalidBinary("truncated cubin", rule="elf") from None
