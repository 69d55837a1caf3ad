"""Program binaries of Intel's CPU OpenCL runtime.

An ELF64 of type ``0xff04`` for x86-64 with sections ``.ocl.ir`` (LLVM
bitcode), ``.ocl.meta`` (kernel metadata), ``.ocl.obj`` (an x86-64 object with
the kernel code) and ``.ocl.ver`` (a u32 format version).

:func:`quick_check` runs on every load and costs microseconds (struct only);
:func:`describe` uses pyelftools and serves ``kernbin inspect``.
"""

from __future__ import annotations

import io
import struct

from ..errors import InvalidBinary

__all__ = ["ET_INTEL_OCL_CPU", "quick_check", "describe"]

ET_INTEL_OCL_CPU = 0xFF04
EM_X86_64 = 62
_REQUIRED = (".ocl.obj", ".ocl.meta")


def quick_check(binary: bytes) -> str | None:
    """A reason string when ``binary`` is not a CPU-runtime program binary for x86-64."""
    if len(binary) < 64:
        return f"{len(binary)} bytes is too short for an ELF64 program binary"
    if binary[:4] != b"\x7fELF":
        return "not an ELF file"
    if binary[4] != 2 or binary[5] != 1:
        return "not a little-endian ELF64 file"
    e_type, e_machine = struct.unpack_from("<HH", binary, 16)
    if e_type != ET_INTEL_OCL_CPU:
        return f"ELF type 0x{e_type:x} is not an Intel CPU OpenCL program (0x{ET_INTEL_OCL_CPU:x})"
    if e_machine != EM_X86_64:
        return f"ELF machine {e_machine} is not x86-64 ({EM_X86_64})"
    return None


def describe(binary: bytes) -> dict:
    """Sections and their sizes, the embedded object's machine and symbols."""
    reason = quick_check(binary)
    if reason:
        raise InvalidBinary(reason, rule="device-binary")
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    from .zebin import check_elf_tables
    try:
        check_elf_tables(binary, "CPU OpenCL binary")
        elf = ELFFile(io.BytesIO(binary))
        sections = {}
        for s in elf.iter_sections():
            if s["sh_type"] != "SHT_NOBITS" and s["sh_offset"] + s["sh_size"] > len(binary):
                raise InvalidBinary(f"section {s.name or '?'} lies outside the file", rule="device-binary")
            if s.name:
                sections[s.name] = s.data_size
        missing = [s for s in _REQUIRED if s not in sections]
        if missing:
            raise InvalidBinary(f"CPU OpenCL binary lacks section(s) {', '.join(missing)}", rule="device-binary")
        out = {"format": "opencl-cpu-elf", "sections": sections}
        ver = elf.get_section_by_name(".ocl.ver")
        if ver is not None and ver.data_size >= 4:
            out["ocl_version"] = struct.unpack_from("<I", ver.data())[0]
        obj_bytes = elf.get_section_by_name(".ocl.obj").data()
        if len(obj_bytes) >= 64 and obj_bytes[:4] == b"\x7fELF" and obj_bytes[4:6] == b"\x02\x01":
            check_elf_tables(obj_bytes, "CPU OpenCL binary's .ocl.obj", symbols=True)
        obj = ELFFile(io.BytesIO(obj_bytes))
        out["object_machine"] = obj.header["e_machine"]
        symtab = obj.get_section_by_name(".symtab")
        if symtab is not None:
            out["symbols"] = sorted({s.name for s in symtab.iter_symbols()
                                     if s.name and s["st_info"]["type"] == "STT_FUNC"})
        return out
    except InvalidBinary:
        raise
    except (ELFError, struct.error, ValueError, KeyError, AttributeError, OverflowError, TypeError,
            IndexError, MemoryError, RecursionError) as e:
        raise InvalidBinary(f"malformed CPU OpenCL ELF: {type(e).__name__}: {e}", rule="device-binary") from None
