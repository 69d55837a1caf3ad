"""SPIR-V modules: validation and stable hashing.

SPIR-V is checked far enough to trust its header and walk its instruction
stream: magic (either byte order), version, word alignment, every instruction's
word count, and the ``OpEntryPoint`` names. A malformed module raises
:class:`~kernbin.errors.InvalidIR` naming the byte offset; never an IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import InvalidIR
from ._base import IRModule

__all__ = ["SpirvModule", "SPIRV_MAGIC", "looks_like_spirv"]

SPIRV_MAGIC = 0x07230203
_OP_ENTRY_POINT = 15
_EXECUTION_MODEL_KERNEL = 6
_HEADER_WORDS = 5


@dataclass(frozen=True)
class SpirvModule(IRModule):
    """A validated SPIR-V module. Build one with :meth:`from_bytes` or :meth:`from_file`."""

    data: bytes = field(repr=False)
    version: tuple[int, int]
    generator: int
    bound: int
    entry_points: tuple[str, ...]
    kind: str = "spirv"

    @classmethod
    def from_bytes(cls, data: bytes) -> "SpirvModule":
        data = bytes(data)
        if len(data) < _HEADER_WORDS * 4:
            raise InvalidIR(f"SPIR-V too short: {len(data)} bytes, the header alone is 20", 0)
        magic_le = struct.unpack_from("<I", data, 0)[0]
        if magic_le == SPIRV_MAGIC:
            endian = "<"
        elif struct.unpack_from(">I", data, 0)[0] == SPIRV_MAGIC:
            endian = ">"
        else:
            raise InvalidIR(f"not SPIR-V: magic 0x{magic_le:08x}, expected 0x{SPIRV_MAGIC:08x}", 0)
        if len(data) % 4:
            raise InvalidIR(f"SPIR-V length {len(data)} is not a multiple of 4 (truncated?)",
                            len(data) - len(data) % 4)
        nwords = len(data) // 4
        words = struct.unpack(f"{endian}{nwords}I", data)
        version_word = words[1]
        major, minor = (version_word >> 16) & 0xFF, (version_word >> 8) & 0xFF
        if version_word & 0xFF0000FF or major != 1 or minor > 6:
            raise InvalidIR(f"unsupported SPIR-V version word 0x{version_word:08x}", 4)
        bound = words[3]
        if bound == 0:
            raise InvalidIR("SPIR-V id bound is 0", 12)
        if words[4] != 0:
            raise InvalidIR(f"SPIR-V schema word must be 0, is {words[4]}", 16)
        entry_points = []
        i = _HEADER_WORDS
        while i < nwords:
            count, opcode = words[i] >> 16, words[i] & 0xFFFF
            if count == 0:
                raise InvalidIR(f"instruction (opcode {opcode}) has word count 0", i * 4)
            if i + count > nwords:
                raise InvalidIR(f"instruction (opcode {opcode}) of {count} words runs past the end "
                                f"of the module ({nwords - i} words left; truncated?)", i * 4)
            if opcode == _OP_ENTRY_POINT:
                if count < 4:
                    raise InvalidIR(f"OpEntryPoint with only {count} words", i * 4)
                if words[i + 1] == _EXECUTION_MODEL_KERNEL:
                    name_bytes = data[(i + 3) * 4:(i + count) * 4]
                    if endian == ">":  # literal strings are packed in word order
                        name_bytes = b"".join(name_bytes[j:j + 4][::-1] for j in range(0, len(name_bytes), 4))
                    nul = name_bytes.find(b"\0")
                    if nul < 0:
                        raise InvalidIR("OpEntryPoint name is not NUL-terminated", (i + 3) * 4)
                    try:
                        entry_points.append(name_bytes[:nul].decode("utf-8"))
                    except UnicodeDecodeError:
                        raise InvalidIR("OpEntryPoint name is not UTF-8", (i + 3) * 4) from None
            i += count
        return cls(data=data, version=(major, minor), generator=words[2], bound=bound,
                   entry_points=tuple(entry_points))


def looks_like_spirv(data: bytes) -> bool:
    """True when ``data`` starts with the SPIR-V magic number (either byte order)."""
    return bytes(data[:4]) in (b"\x03\x02\x23\x07", b"\x07\x23\x02\x03")
