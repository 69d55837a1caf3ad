"""The least a verifying loader can do, written inline with no kernbin code: the floor the load-path
benchmarks (``cuda_load_floor.py``, ``load_path.py``) hold kernbin against.

For a ``.knb``: unpack the prefix, BLAKE3 the header and compare, decode it typed (msgspec: only the
section table and the runs-on fields), slice the native section, BLAKE3 it and compare, NVIDIA's SM
rule. For a bundle: the same header checks once, then per kernel its first entry that fits, its blob
sliced and hashed. No padding, name or bounds checks beyond what slicing gives: a floor, not a reader.
"""
from __future__ import annotations

import struct

import blake3
import msgspec


class Sec(msgspec.Struct):
    name: str
    offset: int
    size: int
    digest: str


class Req(msgspec.Struct):
    kind: str
    sm: int = 0
    code: str = ""
    variant: str = ""


class B(msgspec.Struct):
    requires: Req


class M(msgspec.Struct):
    build: B


class H(msgspec.Struct):
    align: int
    digest: str
    meta: M
    sections: list[Sec]


class E(msgspec.Struct):
    blob: str
    info: B


class K(msgspec.Struct):
    entries: list[E]


class BM(msgspec.Struct):
    kernels: dict[str, K]


class BH(msgspec.Struct):
    align: int
    digest: str
    meta: BM
    sections: list[Sec]


_KNB, _BUNDLE = msgspec.json.Decoder(H), msgspec.json.Decoder(BH)


def fits(r: Req, sm: int) -> bool:
    return r.kind == "cuda" and r.sm // 10 == sm // 10 and r.sm <= sm and (r.variant != "a" or r.sm == sm)


def _header(data: bytes, dec):
    magic, ver, hlen, hd = struct.unpack_from("<8sII32s", data)
    hb = data[48:48 + hlen]
    if blake3.blake3(hb).digest() != hd:
        raise SystemExit("header digest")
    h = dec.decode(hb)
    return h, (48 + hlen + h.align - 1) // h.align * h.align


def knb_native(data: bytes, sm: int) -> bytes:
    """The verified cubin of a ``.knb`` that runs on ``sm``."""
    h, start = _header(data, _KNB)
    s = next(s for s in h.sections if s.name == "native")
    b = data[start + s.offset:start + s.offset + s.size]
    if blake3.blake3(b).hexdigest() != s.digest or not fits(h.meta.build.requires, sm):
        raise SystemExit("refused")
    return b


def bundle_natives(data: bytes, names, sm: int):
    """``(name, verified cubin)`` for each of ``names`` from a bundle's bytes."""
    h, start = _header(data, _BUNDLE)
    secs = {s.name: s for s in h.sections}
    for n in names:
        e = next(e for e in h.meta.kernels[n].entries if fits(e.info.requires, sm))
        s = secs[e.blob]
        b = data[start + s.offset:start + s.offset + s.size]
        if blake3.blake3(b).hexdigest() != s.digest:
            raise SystemExit("refused")
        yield n, b
