"""IR kinds kernbin builds from: SPIR-V (:mod:`.spirv`) and PTX (:mod:`.ptx`).

Every IR object offers the same small protocol (:class:`IR`): ``kind`` (``"spirv"``,
``"ptx"``), ``data`` (the exact bytes), ``sha256`` (stable content hash) and
``kernels`` (entry-point names). :func:`read_ir` recognises the kind from the content
or takes it from the caller (for example from a ``.knb``'s recorded ``ir_kind``), and
raises :class:`~kernbin.errors.InvalidIR` for anything else.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from ..errors import InvalidIR
from .spirv import SPIRV_MAGIC, SpirvModule, looks_like_spirv

__all__ = ["IR", "IR_KINDS", "SpirvModule", "PtxModule", "read_ir", "SPIRV_MAGIC", "MAX_IR_BYTES"]

#: IR larger than this is refused before it is read (256 MiB: far above any real kernel module)
MAX_IR_BYTES = 256 << 20


@runtime_checkable
class IR(Protocol):
    kind: str
    data: bytes

    @property
    def sha256(self) -> str: ...

    @property
    def kernels(self) -> tuple[str, ...]: ...


def _class(kind: str):
    if kind == "spirv":
        return SpirvModule
    from .ptx import PtxModule
    return PtxModule


IR_KINDS = ("spirv", "ptx")


def __getattr__(name: str):
    if name == "PtxModule":
        from .ptx import PtxModule
        return PtxModule
    raise AttributeError(name)


def _sniff(data: bytes) -> str:
    if looks_like_spirv(data):
        return "spirv"
    from .ptx import looks_like_ptx
    if looks_like_ptx(data):
        return "ptx"
    raise InvalidIR("unknown IR: neither SPIR-V (magic 0x07230203) nor PTX (.version/.target text)", 0)


def read_ir(data_or_path, kind: str | None = None) -> IR:
    """IR from an IR object, bytes or a path. ``kind`` (``"spirv"``/``"ptx"``) is checked
    when given, else recognised from the content."""
    if kind is not None and kind not in IR_KINDS:
        raise InvalidIR(f"unknown IR kind {kind!r} (known: {', '.join(IR_KINDS)})")
    if getattr(data_or_path, "kind", None) in IR_KINDS and hasattr(data_or_path, "data"):
        if kind is not None and data_or_path.kind != kind:
            raise InvalidIR(f"expected {kind} IR, got {data_or_path.kind}")
        return data_or_path
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        data = bytes(data_or_path)
    else:
        from .._fs import read_regular_file
        data = read_regular_file(os.fspath(data_or_path), MAX_IR_BYTES, what="IR file")
    cls = _class(kind or _sniff(data))
    return cls.from_bytes(data)
