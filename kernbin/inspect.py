"""Recognise and describe any file kernbin knows, as plain JSON-able data.

:func:`describe_file` / :func:`describe_bytes` sniff the content (never the file name):
SPIR-V, PTX, a ``.knb``, a bundle, a zebin, an ocloc fat archive, or the Intel CPU OpenCL runtime's
program binary; anything else is :class:`~kernbin.errors.InvalidBinary` (``rule="unknown-format"``).
The command line prints these dictionaries; scripts can use them directly.
"""

from __future__ import annotations

import os

from .errors import InvalidBinary

__all__ = ["describe_file", "describe_bytes", "MAX_INSPECT_BYTES"]

MAX_INSPECT_BYTES = 1 << 30


def describe_file(path: str | os.PathLike) -> dict:
    """What is inside the file at ``path`` (see :func:`describe_bytes`)."""
    from ._fs import read_regular_file
    data = read_regular_file(path, MAX_INSPECT_BYTES, what="input")
    out = describe_bytes(data)
    return {"file": os.fspath(path), **out}


def describe_bytes(data: bytes) -> dict:
    """``{"kind": "spirv" | "ptx" | "knb" | "bundle" | "zebin" | "fat" | "opencl-elf", "bytes": n, ...}``."""
    from .artifact import KNB_MAGIC
    from .formats import opencl_elf, zebin
    from .ir import read_ir
    from .ir.ptx import looks_like_ptx
    from .ir.spirv import looks_like_spirv
    n = len(data)
    if looks_like_spirv(data) or looks_like_ptx(data):
        ir = read_ir(data)
        out = {"kind": ir.kind, "bytes": n, "sha256": ir.sha256, "kernels": [{"name": k} for k in ir.kernels]}
        if ir.kind == "spirv":
            out["version"] = "%d.%d" % ir.version
        else:
            out.update(version="%d.%d" % ir.version, target=ir.target)
        return out
    if data[:len(KNB_MAGIC)] == KNB_MAGIC:
        return _describe_knb(data)
    from .bundle import Bundle, is_bundle
    if is_bundle(data):
        with Bundle(data, require_signature=False) as b:
            out = b.describe()
        out.pop("file", None)
        return {"kind": "bundle", **out, "bytes": n}
    if zebin.is_zebin(data):
        z = zebin.parse_zebin(data)
        return {"kind": "zebin", "bytes": n, "notes": z.notes, "sections": z.sections, "ir_embedded": z.has_ir,
                "ze_info_version": z.ze_info_version,
                "kernels": [{"name": k.name, **k.attributes()} for k in z.kernels]}
    if zebin.is_fat(data):
        req = zebin.requirements(data)
        return {"kind": "fat", "bytes": n, "members": req.get("members", []), "kernels": []}
    if opencl_elf.quick_check(data) is None:
        return {"kind": "opencl-elf", "bytes": n, "container": opencl_elf.describe(data), "kernels": []}
    raise InvalidBinary("not a file kernbin knows (SPIR-V, PTX, .knb, bundle, zebin, ocloc fat archive, "
                        "OpenCL CPU binary)", rule="unknown-format")


def _describe_knb(data: bytes) -> dict:
    from .artifact import NativeBinary
    from .formats import opencl_elf, zebin
    nb = NativeBinary.from_bytes(data)
    info = nb.info
    out = {"kind": "knb", "bytes": len(data), "target": info.target, "binary_format": info.binary_format,
           "binary_bytes": len(nb.binary), "sha256": nb.sha256, "toolchain": info.toolchain.to_json(),
           "requires": info.requires.to_json(), "runs_on": info.requires.describe(), "built_on": info.built_on,
           "options": info.options.to_json(), "flags": list(info.flags),
           "ir": {"kind": info.ir_kind, "sha256": info.ir_sha256, "embedded": nb.ir is not None},
           "build_seconds": info.build_seconds, "kernels": [{"name": k.name, **k.attributes} for k in info.kernels]}
    if info.register_file:
        out["register_file"] = dict(info.register_file)
    if info.extra:
        out["extra"] = dict(info.extra)
    try:
        if info.binary_format == "opencl-cpu-elf":
            out["container"] = opencl_elf.describe(nb.binary)
        elif info.binary_format == "zebin":
            z = zebin.parse_zebin(nb.binary)
            out["container"] = {"format": "zebin", "sections": z.sections, "notes": z.notes, "ir_embedded": z.has_ir}
    except InvalidBinary as e:
        out["container_error"] = e.reason
    if info.build_log:
        out["build_log"] = info.build_log
    return out
