#!/usr/bin/env python3
"""Fuzz every parser kernbin has (issue "Hardening", item 3).

    python tools/fuzz.py --list                                   # the targets
    python tools/fuzz.py NAME --seconds S [--seed N] [--out DIR]  # fuzz one target for S seconds
    python tools/fuzz.py all --seconds S                          # every target in turn, S seconds each
    python tools/fuzz.py NAME --repro FILE [FILE ...]             # run saved inputs again

Every input ends in one outcome class:

- ``accepted``: the parser returned (and the target's invariants held);
- ``rejected``: it raised a :class:`kernbin.errors.KernbinError` subclass (for ``cache-entry``:
  the store returned None and removed the entry);
- ``other``: anything else -- another exception type, a run over 2 s, memory over 1 GiB
  (a MemoryError, even one a parser turned into a KernbinError), a crash of the worker
  process, or a broken invariant (e.g. ``Container.parse`` and ``Container.read`` disagree,
  an accepted ``.knb`` that does not round-trip, ``inspect`` output that is not JSON-able).

A worker stuck for 5 s *outside* the parser (the stack faulthandler takes shows no parser frame:
the machine was too busy to run it) is no outcome of its input: it is counted in ``stalls``.

A target may report how deep an input got: ``bundle`` counts ``past_digests`` (the container's
header and every section passed their digests, so the input reached the manifest and entry
decoding) and ``gated`` (at least one kernel went through selection and the load gate on a
stand-in device: a made-up CPU runtime, Intel GPU or NVIDIA GPU identity behind the real
backends' ``can_run`` and ``payload``, with no runtime loaded). Both are in the summary line.

Each "other" input is saved to ``--out`` (default ``fuzz-out/NAME/``) as ``<kind>-<sha1>.bin`` with a
``.json`` sidecar (signature, traceback, seed); at most ``--max-saves`` per distinct signature.
The last line printed is a JSON object: target, inputs, rejected, accepted, other, seconds, ...

How it runs: seeds are REAL files, built at startup in a child process (the runtimes are never
loaded into the fuzzing process): the SPIR-V and PTX samples, tests/data/ptx, and binaries built
with ``kernbin.build`` for opencl:cpu, ocloc:pvc, ocloc:pvc,acm-g10, cuda:sm_90 and
cuda:sm_80,sm_90,ptx (a target whose runtime is missing is skipped with a message). The parent
forks one worker that runs the parser in-process under a 2 s ``setitimer`` alarm and an
``RLIMIT_AS`` of 1 GiB above its baseline; the input in flight lives in shared memory, so when
the worker hangs in C code (the parent kills it after 2 s + a grace) or crashes, the parent
saves that input and starts a new worker.

Mutators: bit/byte flips, random runs, insert/delete, truncation, extension and amplification,
splicing two seeds, token insertion (per-format dictionaries), integer smashing at the fields
of each format (ELF header, section and program headers, symbols, notes; ar member headers;
fatbin header and entries; the container prefix; SPIR-V instruction words), and structure-aware
re-packing: a ``.knb`` with a mutated build-info header, section list or payload re-packed WITH
correct digests (and a matching ``ir_sha256``), raw header text under a correct header digest,
zebin ``.ze_info`` YAML re-inserted into the ELF (as a tree, as text, or with raw YAML values such
as aliases), ELF section tables inflated (up to 65535 entries, names sharing long runs), ar
archives and fatbins rebuilt with correct sizes, SPIR-V instruction edits, PTX line edits; bundles
re-sealed after editing the manifest, one entry's build info or requirements, a blob (by its own
format's mutators, the IR hashes following), or the shape (entries copied, moved, dropped; kernels
renamed; sections dropped, renamed, reordered), every digest recomputed.
``tests/test_fuzz.py`` runs the same targets and mutators briefly in CI.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import io
import json
import mmap
import os
import pickle
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TIME_LIMIT = 2.0                # seconds per input
HANG_GRACE = 3.0                # after TIME_LIMIT, the parent kills a worker stuck in C code
MEM_LIMIT = 1 << 30             # address space a worker may add to its baseline
MAX_INPUT = 4 << 20             # inputs are cut to this size
_SHM_HEAD = 64
_SHM_SIZE = _SHM_HEAD + MAX_INPUT

ACCEPTED, REJECTED, OTHER = "accepted", "rejected", "other"
FILE_KINDS = ("spirv", "ptx", "knb", "zebin", "fat", "ocl", "cubin", "fatbin", "kbin")     # what `inspect` reads
KINDS = FILE_KINDS + ("lease", "tmeta", "xpuout")


# =============================================================================================
# seeds: real files, built in a child process
# =============================================================================================
_BUILDS = (("opencl:cpu", "spv"), ("ocloc:pvc", "spv"), ("ocloc:pvc,acm-g10", "spv"),
           ("cuda:sm_90", "ptx"), ("cuda:sm_80,sm_90,ptx", "ptx"))
_BUILD_SAMPLES = ("vadd", "reduce")
_FORMAT_KIND = {"opencl-cpu-elf": "ocl", "zebin": "zebin", "zebin-fat": "fat", "cubin": "cubin",
                "fatbin": "fatbin"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect_seeds(log=_log, builds: bool = True, samples=_BUILD_SAMPLES) -> dict:
    """``{kind: [(name, bytes), ...]}`` from real files and real builds (in this process)."""
    seeds = {k: [] for k in KINDS}
    files = [("spirv", p) for p in sorted(glob.glob(os.path.join(ROOT, "kernbin", "samples", "*.spv")))
             + sorted(glob.glob(os.path.join(ROOT, "tests", "data", "triton", "*.spv")))]
    files += [("ptx", p) for p in sorted(glob.glob(os.path.join(ROOT, "kernbin", "samples", "*.ptx")))
              + sorted(glob.glob(os.path.join(ROOT, "tests", "data", "ptx", "*.ptx")))]
    for kind, p in files:
        with open(p, "rb") as f:
            seeds[kind].append((os.path.relpath(p, ROOT), f.read()))
    # what kernbin.triton.xpu's worker prints: one job, the committed triton-xpu vector add
    import base64
    with open(os.path.join(ROOT, "tests", "data", "triton", "triton_add.spv"), "rb") as f:
        spv = f.read()
    with open(os.path.join(ROOT, "tests", "data", "triton", "triton_add.json")) as f:
        md = json.load(f)
    out = {"triton": md.get("triton", "3.3.0b1"), "results": [{
        "spv": base64.b64encode(spv).decode(), "metadata": md, "arg_names": ["x_ptr", "y_ptr", "out_ptr", "n", "BLOCK"],
        "signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
        "constexprs": {"BLOCK": 1024}, "attrs": [[0, 16], [1, 16], [2, 16]], "equal_to_1": {}}]}
    seeds["xpuout"].append(("xpu-worker:add", b"compiling...\n" + json.dumps(out).encode() + b"\n"))
    # lease payloads as a holder writes them ("NOW": the run puts the current time there, then signs)
    seeds["lease"] += [("lease:new", b"NOW 10000 host-1234-0f3a9c"), ("lease:old", b"NOW host-77-ab")]
    if not builds:
        return seeds
    import kernbin
    try:                                            # Triton launch metadata, as a bundle entry holds it
        import kernbin.triton as kt
        from kernbin.samples import triton_kernels as tk
        for name, (fn, sig, consts, warps) in tk.SPECS.items():
            nb = kt.compile(fn, sig, consts, targets=("cuda:sm_90",), num_warps=warps)[0]
            meta = nb.info.extra["triton"]
            seeds["tmeta"].append((f"triton:{name}", meta.encode() if isinstance(meta, str) else meta))
    except Exception as e:                          # no Triton here: no seeds of this kind
        log(f"fuzz: no Triton metadata seeds ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    from kernbin.formats import cubin, zebin
    for target, ext in _BUILDS:
        for sample in samples:
            with open(os.path.join(ROOT, "kernbin", "samples", f"{sample}.{ext}"), "rb") as f:
                src = f.read()
            try:
                nb = kernbin.build(src, target)
            except Exception as e:                    # a missing runtime: KernbinError; anything: skip
                log(f"fuzz: no seeds from {target} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                break
            tag = f"build:{target}:{sample}"
            seeds["knb"].append((tag + ".knb", nb.to_bytes()))
            seeds["knb"].append((tag + ".noir.knb", nb.without_ir().to_bytes()))
            kind = _FORMAT_KIND.get(nb.info.binary_format)
            if kind is None:
                log(f"fuzz: {target} made an unknown binary format {nb.info.binary_format!r}")
                continue
            seeds[kind].append((tag, bytes(nb.binary)))
            if kind == "fat":                       # (its generic_ir member is an ELF around SPIR-V)
                for name, body in zebin.read_ar(nb.binary).items():
                    if zebin.is_zebin(body):
                        seeds["zebin"].append((f"{tag}:{name}", body))
            elif kind == "fatbin":                  # (its PTX member is zstd-compressed)
                for m in cubin.fatbin_members(nb.binary):
                    body = nb.binary[m["offset"]:m["offset"] + m["size"]]
                    if m["kind"] == "cubin" and cubin.is_cubin(body):
                        seeds["cubin"].append((f"{tag}:sm_{m['sm']}", body))
    knbs = [kernbin.NativeBinary.from_bytes(d) for name, d in seeds["knb"] if not name.endswith(".noir.knb")]
    if knbs:                                  # a bundle of every build, with IR, signed (blobs shared)
        import tempfile
        from kernbin import signing
        from kernbin.bundle import write_bundle
        with tempfile.TemporaryDirectory(prefix="kernbin-fuzz-") as tmp:
            kernels = {}
            for i, nb in enumerate(knbs):
                k = kernels.setdefault(f"k{nb.ir.sha256[:12]}", {"ir": nb.ir, "natives": []})
                k["natives"].append(nb.without_ir())
            priv, _ = signing.generate_key(os.path.join(tmp, "key"))
            path = write_bundle(os.path.join(tmp, "b.kbin"), kernels, sign_key=priv)
            with open(path, "rb") as f:
                seeds["kbin"].append(("build:bundle.kbin", f.read()))
    return seeds


def collect_seeds_isolated(timeout: float = 600) -> dict:
    """:func:`collect_seeds` in a child process, so the runtimes never load into this one."""
    with tempfile.TemporaryDirectory(prefix="kernbin-fuzz-seeds-") as tmp:
        out = os.path.join(tmp, "seeds.pickle")
        env = dict(os.environ)
        env.setdefault("KERNBIN_CACHE_DIR", os.path.join(tmp, "cache"))
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--dump-seeds", out], env=env,
                           timeout=timeout, stdout=subprocess.DEVNULL)
        if p.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"fuzz: building the seeds failed (exit {p.returncode})")
        with open(out, "rb") as f:
            return pickle.load(f)


# =============================================================================================
# seed analysis: where the fields and interesting regions of each format are
# =============================================================================================
class Seed:
    """One real file: its bytes, its integer fields ``(offset, width, enc)`` (enc ``"<"`` little
    endian, ``"dec"`` ASCII decimal), hot ``regions``, format facts in ``info`` and the
    ``children`` it holds (knb sections, ar members, fatbin members) as Seeds of their own."""

    __slots__ = ("kind", "name", "data", "fields", "regions", "info", "children", "key", "path")

    def __init__(self, kind: str, name: str, data: bytes):
        self.kind, self.name, self.data = kind, name, bytes(data)
        self.fields, self.regions, self.info, self.children = [], [], {}, []
        self.key = self.path = None
        try:
            _ANALYZE.get(kind, lambda s: None)(self)
        except Exception as e:                       # a seed we cannot take apart: plain bytes
            _log(f"fuzz: cannot analyse seed {name} ({type(e).__name__}: {e})")

    def __repr__(self):
        return f"Seed({self.kind}, {self.name}, {len(self.data)} bytes)"


_EH_FIELDS = ((4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (16, 2), (18, 2), (20, 4), (24, 8), (32, 8), (40, 8),
              (48, 4), (52, 2), (54, 2), (56, 2), (58, 2), (60, 2), (62, 2))
_SH_FIELDS = ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))
_PH_FIELDS = ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8), (48, 8))
_SYM_FIELDS = ((0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8))


def elf_layout(d: bytes, base: int = 0, depth: int = 0):
    """(fields, regions, {section name: (header offset, offset, size, type)}) of the ELF64 at ``base``."""
    if depth > 2 or len(d) < base + 64 or d[base:base + 4] != b"\x7fELF" or d[base + 4] != 2 or d[base + 5] != 1:
        return None
    fields = [(base + o, w, "<") for o, w in _EH_FIELDS]
    regions = [(base, base + 64)]
    phoff, shoff = struct.unpack_from("<QQ", d, base + 32)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", d, base + 54)
    if phentsize == 56 and base + phoff + phnum * 56 <= len(d):
        for i in range(phnum):
            fields += [(base + phoff + i * 56 + o, w, "<") for o, w in _PH_FIELDS]
    secs = []
    if shentsize == 64 and base + shoff + shnum * 64 <= len(d):
        regions.append((base + shoff, base + shoff + shnum * 64))
        for i in range(shnum):
            h = base + shoff + i * 64
            name, typ, _, _, off, size, link, _, _, entsize = struct.unpack_from("<IIQQQQIIQQ", d, h)
            fields += [(h + o, w, "<") for o, w in _SH_FIELDS]
            secs.append((name, typ, off, size, h, entsize))
    names = {}
    strtab = secs[shstrndx] if shstrndx < len(secs) else None
    for name_off, typ, off, size, h, entsize in secs:
        name = ""
        if strtab is not None and base + strtab[2] + name_off < len(d):
            start = base + strtab[2] + name_off
            end = d.find(b"\0", start, start + 256)
            name = d[start:end if end >= 0 else start].decode("latin-1")
        if name:
            names.setdefault(name, (h, off, size, typ))
        a, b = base + off, base + off + size
        if typ == 8 or b > len(d) or size == 0:          # SHT_NOBITS, or out of the file
            continue
        if typ in (3, 7) or name in (".ze_info", ".ocl.meta", ".ocl.ver", ".spv"):
            regions.append((a, min(b, a + 4096)))
        if typ == 7:                                       # notes: namesz, descsz, type
            p = a
            while p + 12 <= b:
                namesz, descsz, _ = struct.unpack_from("<III", d, p)
                fields += [(p, 4, "<"), (p + 4, 4, "<"), (p + 8, 4, "<")]
                p += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
        elif typ == 2 and entsize == 24:                   # symbols
            for p in range(a, min(b, a + 24 * 64), 24):
                fields += [(p + o, w, "<") for o, w in _SYM_FIELDS]
        elif d[a:a + 4] == b"\x7fELF":                     # an embedded object (.ocl.obj)
            inner = elf_layout(d, a, depth + 1)
            if inner:
                fields += inner[0]
                regions += inner[1]
    return fields, regions, names


def _analyze_elf(seed: Seed) -> None:
    lay = elf_layout(seed.data)
    if lay:
        seed.fields, seed.regions, seed.info["sections"] = lay[0], lay[1], lay[2]


def _analyze_zebin(seed: Seed) -> None:
    _analyze_elf(seed)
    ze = seed.info.get("sections", {}).get(".ze_info")
    if ze:
        import yaml
        text = seed.data[ze[1]:ze[1] + ze[2]]
        seed.info["ze_info"] = ze
        seed.info["ze_text"] = text
        seed.info["ze_tree"] = yaml.safe_load(text.decode("utf-8"))


def ar_members(d: bytes) -> list:
    """[(header offset, raw 16-byte name, body)] of an ar archive (trusted seeds, bounds-checked)."""
    out, pos = [], 8
    while pos + 60 <= len(d):
        hdr = d[pos:pos + 60]
        size = int(hdr[48:58].decode("ascii").strip() or 0)
        out.append((pos, hdr[:16], d[pos + 60:pos + 60 + size]))
        pos += 60 + size + (size & 1)
    return out


def _analyze_fat(seed: Seed) -> None:
    d = seed.data
    seed.regions.append((0, 8))
    members = ar_members(d)
    seed.info["members"] = [(name, body) for _, name, body in members]
    for pos, name, body in members:
        seed.regions.append((pos, pos + 60))
        seed.fields += [(pos + 16, 12, "dec"), (pos + 28, 6, "dec"), (pos + 34, 6, "dec"), (pos + 40, 8, "dec"),
                        (pos + 48, 10, "dec"), (pos + 48, 10, "dec")]
        lay = elf_layout(d, pos + 60)
        if lay:
            seed.fields += lay[0]
            seed.regions += lay[1]
        kind = "zebin" if body[:4] == b"\x7fELF" and body[18:20] == b"\xcd\x00" else None
        seed.children.append(Seed(kind, f"{seed.name}:{name.decode('latin-1').strip()}", body) if kind else None)


def fatbin_entries(d: bytes) -> list:
    """[(entry offset, header bytes, payload)] of a fatbin."""
    _, _, hsize, fsize = struct.unpack_from("<IHHQ", d, 0)
    out, pos, end = [], hsize, min(len(d), hsize + fsize)
    while pos + 32 <= end:
        kind, _, ehs, size = struct.unpack_from("<HHIQ", d, pos)
        if ehs < 32:
            break
        out.append((pos, d[pos:pos + ehs], d[pos + ehs:pos + ehs + size]))
        pos += ehs + size
    return out


def _analyze_fatbin(seed: Seed) -> None:
    d = seed.data
    _, _, hsize, _ = struct.unpack_from("<IHHQ", d, 0)
    seed.fields += [(0, 4, "<"), (4, 2, "<"), (6, 2, "<"), (8, 8, "<")]
    seed.regions.append((0, hsize))
    entries = fatbin_entries(d)
    seed.info["header"] = d[:hsize]
    seed.info["entries"] = [(h, body) for _, h, body in entries]
    for pos, h, body in entries:
        seed.fields += [(pos + o, w, "<") for o, w in ((0, 2), (2, 2), (4, 4), (8, 8), (16, 4), (20, 4), (24, 4),
                                                       (28, 4), (32, 4), (36, 4), (40, 8), (48, 8))
                        if o + w <= len(h)]
        seed.regions.append((pos, pos + len(h)))
        lay = elf_layout(d, pos + len(h))
        if lay:
            seed.fields += lay[0]
            seed.regions += lay[1]
        ekind = struct.unpack_from("<H", h, 0)[0]
        seed.children.append(Seed("cubin", f"{seed.name}:{pos}", body) if ekind == 2 else None)


def _analyze_spirv(seed: Seed) -> None:
    d = seed.data
    seed.fields += [(4, 4, "<"), (8, 4, "<"), (12, 4, "<"), (16, 4, "<")]
    insts, i, n = [], 5, len(d) // 4
    while i < n:
        w, = struct.unpack_from("<I", d, i * 4)
        count = w >> 16
        if count == 0:
            break
        insts.append((i, count, w & 0xFFFF))
        if len(seed.fields) < 4000:
            seed.fields += [(i * 4, 2, "<"), (i * 4 + 2, 2, "<")]
        if w & 0xFFFF == 15:
            seed.regions.append((i * 4, (i + count) * 4))
            seed.fields += [(i * 4 + 4, 4, "<")]
        i += count
    seed.info["insts"] = insts


def _analyze_ptx(seed: Seed) -> None:
    d = seed.data
    for m in re.finditer(rb"\.(version|target|address_size|entry)[^\n]*", d):
        seed.regions.append((m.start(), m.end()))


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _analyze_knb(seed: Seed) -> None:
    d = seed.data
    magic, version, hlen, _ = struct.unpack_from("<8sII32s", d)
    htext = d[48:48 + hlen]
    doc = json.loads(htext)
    align = doc["align"]
    start = _round_up(48 + hlen, align)
    sections = [(e["name"], d[start + e["offset"]:start + e["offset"] + e["size"]]) for e in doc["sections"]]
    seed.info.update(magic=magic, version=version, doc=doc, align=align, start=start, sections=sections)
    seed.fields += [(8, 4, "<"), (12, 4, "<")]
    seed.regions += [(0, 8), (8, 16), (16, 48), (48, 48 + hlen)]
    build = doc["meta"].get("build", {})
    for (name, data), e in zip(sections, doc["sections"]):
        kind = _FORMAT_KIND.get(build.get("binary_format")) if name == "native" else \
            {"spirv": "spirv", "ptx": "ptx"}.get(build.get("ir_kind")) if name == "ir" else None
        child = Seed(kind, f"{seed.name}:{name}", data) if kind else None
        seed.children.append(child)
        if child is not None:
            at = start + e["offset"]
            seed.fields += [(at + o, w, enc) for o, w, enc in child.fields[:2000]]
            seed.regions += [(at + a, at + b) for a, b in child.regions[:200]]


def _analyze_kbin(seed: Seed) -> None:
    """A bundle: the container (as a .knb: magic, header document, sections), and each blob as a
    child Seed of the kind its manifest says (an entry's binary format, or the kernel's IR kind)."""
    _analyze_knb(seed)
    kinds = {}
    for k in seed.info["doc"]["meta"].get("kernels", {}).values():
        if k.get("ir"):
            kinds[k["ir"]] = {"spirv": "spirv", "ptx": "ptx"}.get(k.get("ir_kind"))
        for e in k.get("entries", []):
            kinds.setdefault(e["blob"], _FORMAT_KIND.get(e["info"].get("binary_format")))
    seed.children = [Seed(kinds[name], f"{seed.name}:{name}", data) if kinds.get(name) else None
                     for name, data in seed.info["sections"]]


_ANALYZE = {"zebin": _analyze_zebin, "ocl": _analyze_elf, "cubin": _analyze_elf, "fat": _analyze_fat,
            "fatbin": _analyze_fatbin, "spirv": _analyze_spirv, "ptx": _analyze_ptx, "knb": _analyze_knb,
            "kbin": _analyze_kbin}


# =============================================================================================
# dictionaries
# =============================================================================================
_ELF_TOKENS = (b".text.", b".ze_info", b".spv", b".note.intelgt.compat", b"IntelGT\0", b".ocl.obj", b".ocl.meta",
               b".ocl.ver", b".ocl.ir", b".symtab", b".strtab", b".shstrtab", b".nv.info", b".nv.constant0",
               b"\x7fELF\x02\x01\x01", b"\0", b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00")
_JSON_TOKENS = (b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"true", b"false", b"1e400", b"-0", b"NaN",
                b"Infinity", b"\\ud800", b"\\u0000", b"\\", b'"build"', b'"sections"', b'"meta"', b'"align"',
                b'"digest"', b'"blake3"', b'"native"', b'"ir"', b'"offset"', b'"size"', b'"name"', b'"kernels"',
                b'"extra"', b'"requires"', b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"9" * 30, b" ", b"\n")
_YAML_TOKENS = (b"*a", b"&a ", b"!!python/object:os.system ", b"<<: ", b"- ", b": ", b"\n  ", b"\n", b"'", b'"',
                b"{", b"}", b"[", b"]", b"? ", b"%YAML 1.1\n", b"---\n", b"...\n", b"\t", b"!!binary ",
                b"!!timestamp 2001-12-14 ", b"!!set ", b"!!float ", b".nan", b".inf", b"1e999", b"0x7fffffffffff",
                b"-1", b"~", b"9" * 30, b"#", b"|", b">", b"name: ", b"kernels: ", b"execution_env: ",
                b"grf_count: ", b"per_thread_memory_buffers: ", b"size: ", b"type: scratch", b"\xff", b"\0")
_AR_TOKENS = (b"!<arch>\n", b"//              ", b"/               ", b"/SYM64/         ", b"`\n", b"/0              ",
              b"/\n", b"/99999999999     ", b"-1        ", b"9999999999")
_FATBIN_TOKENS = (b"\x50\xed\x55\xba", b"\x01\x00", b"\x02\x00", b"\xff\xff\xff\xff")
_PTX_TOKENS = (b".version", b".target", b".entry", b".address_size", b".version 8.0\n", b".target sm_90\n",
               b".address_size 64\n", b".address_size 32\n", b".entry k(", b".entry k;", b".entry k{}", b"sm_90a",
               b"sm_120f", b"sm_9", b"compute_90", b"lto_90", b"//", b"/*", b"*/", b'"', b"\\", b"{", b"}", b";",
               b",", b"\n", b"\r", b"\t", b"\0", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"9" * 1000, b"1.",
               b".func", b".visible", b"debug", b"texmode_independent", b'.file 1 "a.cu"', b"$x", b"%r", b"_")
_SPIRV_TOKENS = (struct.pack("<I", 0x07230203), struct.pack(">I", 0x07230203), struct.pack("<I", (4 << 16) | 15),
                 struct.pack("<I", 6), b"main\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\0")
_TOKENS = {"zebin": _ELF_TOKENS + _YAML_TOKENS, "ocl": _ELF_TOKENS, "cubin": _ELF_TOKENS,
           "fat": _AR_TOKENS + _ELF_TOKENS, "fatbin": _FATBIN_TOKENS + _ELF_TOKENS, "ptx": _PTX_TOKENS,
           "spirv": _SPIRV_TOKENS, "knb": _JSON_TOKENS + _ELF_TOKENS,
           "lease": (b" ", b"NOW", b"-1", b"0", b"9" * 30, b"1e3", b"\xff", b"\0", b"\xc3\xa9", b"host-1-a"),
           "xpuout": _JSON_TOKENS + (b'"results"', b'"spv"', b'"attrs"', b'"signature"', b"\n", b"==", b"AAAA"),
           "tmeta": _JSON_TOKENS + (b'"params"', b'"args"', b'"appended"', b'"*i8"', b'"*fp32"', b'"fp16"',
                                    b'"i32"', b'"u64"', b'"type"', b'"size"', b'"specialised"', b'"constexpr"')}
_JSON_RAW = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 5000, "1.5", "-0", "01", "1.0",
             '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', "true", '{"a":1,"a":2}', "18446744073709551616",
             "-9223372036854775809", "9223372036854775807", '"' + "\\\\" * 3 + '"', "[" * 64 + "]" * 64,
             "[" * 5000 + "]" * 5000, '{"a":' * 900 + "1" + "}" * 900, '{"a":' * 5000 + "1" + "}" * 5000,
             "[" * 100000 + "]" * 100000, '"\xff\xfe"', '"' + "x" * 100000 + '"')
# an alias "bomb" (10 ** level elements once expanded; PyYAML builds it by reference, cheaply)
_YAML_BOMB = "".join(f"_b{i}: &b{i} [{', '.join(['lol'] * 10 if i == 0 else [f'*b{i - 1}'] * 10)}]\n"
                     for i in range(10))
_YAML_RAW = ("*b1", "*b3", "*b5", "*b9", "&r [*r]", "!!python/object:os.system x", "!!binary AAAA",
             "!!timestamp 2001-12-14", "!!float .nan", ".inf", "0x1F", "0o17", "1_000", "~", "!!set {a, b}",
             "1e999", "9" * 5000, "[" * 3000 + "]" * 3000, "{a: " * 3000 + "1" + "}" * 3000, "-1", "!!int 12",
             "!!str 12", "yes", "'x'", "!!omap [a: 1]", "[*b0, *b0]")
_INTERESTING_STRINGS = ("", "x", "native", "ir", "spirv", "ptx", "zebin", "zebin-fat", "cubin", "fatbin",
                        "opencl-cpu-elf", "opencl-runtime", "intel-gpu", "intel-gpu-fat", "cuda", "cuda-fat",
                        "level-zero-driver", "default", "auto", "large", "small", "sm_90", "sm_90a", "12.60.7",
                        "1.20", "a" * 200, "\u00e9\U0001F600", "..", "/", "\u2028", "x" * 70000)


# =============================================================================================
# mutators
# =============================================================================================
def _pos(rng, n: int, seed: Seed) -> int:
    """An offset in [0, n): inside a hot region of the seed 40% of the time."""
    if n <= 0:
        return 0
    if seed.regions and rng.random() < 0.4:
        a, b = rng.choice(seed.regions)
        if a < n:
            return rng.randrange(a, min(b, n)) if b > a else a
    return rng.randrange(n)


def _interesting_int(rng, cur: int, width_bits: int, n: int) -> int:
    top = (1 << width_bits) - 1
    c = rng.randrange(18)
    v = (0, 1, 2, top, top >> 1, (top >> 1) + 1, cur + 1, cur - 1, cur * 2, cur + rng.randint(-64, 64), n, n + 1,
         n - 1, 0x7F, 0x80, 0xFFFF, rng.getrandbits(width_bits), cur ^ (1 << rng.randrange(width_bits)))[c]
    return v & top


def m_flip(rng, d: bytearray, seed, pool):
    for _ in range(rng.randint(1, 8)):
        if d:
            d[_pos(rng, len(d), seed)] ^= 1 << rng.randrange(8)
    return d


def m_byte(rng, d, seed, pool):
    for _ in range(rng.randint(1, 4)):
        if d:
            d[_pos(rng, len(d), seed)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x22, 0x5C,
                                                     rng.randrange(256)))
    return d


def m_run(rng, d, seed, pool):
    if not d:
        return d
    at, n = _pos(rng, len(d), seed), rng.choice((1, 2, 4, 8, 16, 64, 256, rng.randint(1, 1024)))
    run = bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1) if rng.random() < 0.5 \
        else bytes([rng.choice((0, 0xFF, 0x41, rng.randrange(256)))]) * n
    d[at:at + n] = run[:n]
    return d


def m_insert(rng, d, seed, pool):
    at = _pos(rng, len(d) + 1, seed) if d else 0
    n = rng.choice((1, 2, 4, 8, rng.randint(1, 256)))
    d[at:at] = bytes(rng.getrandbits(8) for _ in range(n))
    return d


def m_delete(rng, d, seed, pool):
    if d:
        at = _pos(rng, len(d), seed)
        del d[at:at + rng.choice((1, 2, 4, 8, 64, rng.randint(1, max(1, len(d) // 4))))]
    return d


def m_token(rng, d, seed, pool):
    toks = _TOKENS.get(seed.kind)
    if not toks:
        return m_insert(rng, d, seed, pool)
    tok = rng.choice(toks)
    at = _pos(rng, len(d) + 1, seed) if d else 0
    if rng.random() < 0.5:
        d[at:at] = tok
    else:
        d[at:at + len(tok)] = tok
    return d


def m_truncate(rng, d, seed, pool):
    if d:
        cut = rng.choice((rng.randrange(len(d)), len(d) - 1, len(d) - rng.randint(1, 16), _pos(rng, len(d), seed)))
        del d[max(0, cut):]
    return d


def m_extend(rng, d, seed, pool):
    c = rng.randrange(4)
    n = rng.choice((1, 7, 64, 4096, rng.randint(1, 100000)))
    if c == 0:
        d += bytes(n)
    elif c == 1:
        d += bytes(rng.getrandbits(8) for _ in range(min(n, 4096)))
    elif c == 2:
        d += d[:n]
    else:
        d += rng.choice(pool).data
    return d


def m_amplify(rng, d, seed, pool):
    """A chunk repeated many times (linear-time parsers must stay fast on big inputs)."""
    if not d:
        return d
    at = _pos(rng, len(d), seed)
    chunk = bytes(d[at:at + rng.choice((1, 2, 4, 8, 16, 64, 256))])
    if rng.random() < 0.3 and _TOKENS.get(seed.kind):
        chunk = rng.choice(_TOKENS[seed.kind])
    reps = min(rng.choice((16, 256, 4096, 65536, 1 << 20)), (MAX_INPUT - len(d)) // max(1, len(chunk)))
    if reps > 0:
        d[at:at] = chunk * reps
    return d


def m_splice(rng, d, seed, pool):
    same = [s for s in pool if s.kind == seed.kind]
    other = rng.choice(same if same and rng.random() < 0.6 else pool).data
    if not other:
        return d
    i, j = rng.randrange(len(d) + 1), rng.randrange(len(other))
    if rng.random() < 0.5:
        return bytearray(d[:i] + other[j:])
    k = j + rng.randint(1, 512)
    d[i:i] = other[j:k]
    return d


def m_copy(rng, d, seed, pool):
    if len(d) < 2:
        return d
    a, b = rng.randrange(len(d)), _pos(rng, len(d), seed)
    chunk = bytes(d[a:a + rng.choice((1, 4, 8, 16, 64, 512))])
    if rng.random() < 0.5:
        d[b:b + len(chunk)] = chunk
    else:
        d[b:b] = chunk
    return d


def m_int(rng, d, seed, pool):
    """Smash one integer field of the format (ELF, ar, fatbin, container, SPIR-V words)."""
    fields = [f for f in seed.fields if f[0] + f[1] <= len(d)]
    if not fields:
        off, w, enc = (rng.randrange(max(1, len(d) - 7)) & ~3), rng.choice((1, 2, 4, 8)), "<"
        if off + w > len(d):
            return d
    else:
        off, w, enc = rng.choice(fields)
    if enc == "dec":
        text = bytes(d[off:off + w]).decode("latin-1").strip()
        cur = int(text) if text.isascii() and text.isdigit() else 0
        v = rng.choice((str(_interesting_int(rng, cur, 40, len(d))), "-1", "", " ", "+1", "1_0", "0x10", "9" * w,
                        " 1 2", "\u0661\u0662", str(cur + rng.randint(-3, 3)), str(len(d)), "-" + str(cur)))
        raw = v.encode("utf-8")[:w]
        d[off:off + w] = raw.ljust(w, b" ") if rng.random() < 0.8 else raw.rjust(w, b" ")
        return d
    fmt = "<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[w]
    cur, = struct.unpack_from(fmt, d, off)
    struct.pack_into(fmt, d, off, _interesting_int(rng, cur, 8 * w, len(d)))
    return d


_GENERIC = ((m_flip, 10), (m_byte, 8), (m_run, 5), (m_insert, 4), (m_delete, 4), (m_token, 8), (m_truncate, 4),
            (m_extend, 3), (m_amplify, 1), (m_splice, 4), (m_copy, 3), (m_int, 14))
_GENERIC_LIST = [m for m, w in _GENERIC for _ in range(w)]


def _bytes_mutate(rng, data: bytes, seed: Seed, pool, n: int | None = None) -> bytes:
    d = bytearray(data)
    for _ in range(n or (1 if rng.random() < 0.5 else rng.randint(2, 6))):
        d = rng.choice(_GENERIC_LIST)(rng, d, seed, pool)
        if len(d) > MAX_INPUT:
            del d[MAX_INPUT:]
    return bytes(d)


# -- JSON / YAML trees --------------------------------------------------------------------------
_RAW_TAG = "RAWq7Zx"


class _Raw:
    """Collects raw texts put in place of placeholders (``RAWq7Zx<n>Q``) when serialising."""

    def __init__(self, choices):
        self.choices, self.texts = choices, []

    def new(self, rng) -> str:
        self.texts.append(rng.choice(self.choices))
        return f"{_RAW_TAG}{len(self.texts) - 1}Q"

    def substitute(self, text: str) -> str:
        if not self.texts:
            return text
        return re.sub(rf"[\"']?{_RAW_TAG}(\d+)Q[\"']?", lambda m: self.texts[int(m.group(1))], text)


def _rand_value(rng, strings, raw: _Raw, depth: int = 0):
    c = rng.randrange(20 if depth < 3 else 14)
    if c == 0:
        return None
    if c == 1:
        return rng.random() < 0.5
    if c in (2, 3):
        return rng.choice((0, 1, -1, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30,
                           rng.randint(-1000, 1000), rng.getrandbits(64)))
    if c == 4:
        return rng.choice((0.5, -0.0, 1e308, 5e-324, 1e9, -1.0, 3.0))
    if c in (5, 6, 7):
        return rng.choice(strings) if strings and rng.random() < 0.7 else rng.choice(_INTERESTING_STRINGS)
    if c in (8, 9, 10):
        return raw.new(rng)
    if c == 11:
        return []
    if c == 12:
        return {}
    if c == 13:
        return rng.choice(strings) + rng.choice(_INTERESTING_STRINGS) if strings else "y"
    if c in (14, 15, 16):
        return [_rand_value(rng, strings, raw, depth + 1) for _ in range(rng.randint(1, 3))]
    return {rng.choice(strings) if strings and rng.random() < 0.5 else rng.choice(("a", "name", "kind", "")):
            _rand_value(rng, strings, raw, depth + 1) for _ in range(rng.randint(1, 3))}


def _walk(obj, out, parent=None, key=None, depth=0):
    out.append((parent, key, obj))
    if depth > 40 or len(out) > 5000:
        return
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            _walk(v, out, obj, k, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _walk(v, out, obj, i, depth + 1)


def strings_of(obj, out: set) -> set:
    walked = []
    _walk(obj, walked)
    for _, k, v in walked:
        if isinstance(k, str):
            out.add(k)
        if isinstance(v, str) and len(v) < 200:
            out.add(v)
    return out


_SHUFFLE_MAX = 16               # elements a permutation moves at most (see _shuffle_some)


def _shuffle_some(rng, seq: list, limit: int = _SHUFFLE_MAX) -> None:
    """Shuffle, in place, a window of at most ``limit`` consecutive elements of ``seq`` (all of a
    short one), drawing one index at a time (Fisher-Yates). Never ``rng.sample(seq, len(seq))`` or
    ``rng.shuffle`` of a long sequence: a Hypothesis ``Random`` draws those as one list as long as
    the sequence, which it cannot always give (its own assertion failed on long strings)."""
    n = len(seq)
    if n < 2:
        return
    at = rng.randrange(n - limit + 1) if n > limit else 0
    for i in range(min(n, limit) - 1, 0, -1):
        j = rng.randint(0, i)
        seq[at + i], seq[at + j] = seq[at + j], seq[at + i]


def _permuted(rng, text: str) -> str:
    """``text`` with a bounded window of its characters shuffled (see :func:`_shuffle_some`)."""
    chars = list(text)
    _shuffle_some(rng, chars)
    return "".join(chars)


def mutate_tree(rng, root, strings, raw: _Raw):
    """One random edit somewhere in a JSON-like tree (dicts, lists, scalars); returns the new root."""
    paths = []
    _walk(root, paths)
    parent, key, val = rng.choice(paths)
    op = rng.random()
    if parent is None:
        return _rand_value(rng, strings, raw) if op < 0.1 else root
    if op < 0.4:
        new = _rand_value(rng, strings, raw)
    elif op < 0.55:
        del parent[key]
        return root
    elif op < 0.65:
        if isinstance(parent, dict):
            parent[rng.choice(strings) if strings and rng.random() < 0.7 else "x"] = _rand_value(rng, strings, raw)
        else:
            parent.insert(rng.randint(0, len(parent)), _rand_value(rng, strings, raw))
        return root
    elif op < 0.75:
        new = copy.deepcopy(rng.choice(paths)[2])
        if isinstance(parent, list) and rng.random() < 0.5:
            parent.insert(key, new)
            return root
    elif op < 0.85 and isinstance(parent, dict):
        new_key = rng.choice(strings) if strings and rng.random() < 0.7 else rng.choice(_INTERESTING_STRINGS)
        parent[new_key] = parent.pop(key)
        return root
    else:
        if isinstance(val, bool):
            new = not val
        elif isinstance(val, int):
            new = _interesting_int(rng, val, 64, 0) - (1 << 63 if rng.random() < 0.3 else 0)
        elif isinstance(val, float):
            new = rng.choice((val * 1e300, -val, 0.0, val + 1))
        elif isinstance(val, str):
            c = rng.randrange(5)
            new = (val[:rng.randint(0, len(val))], val + rng.choice(_INTERESTING_STRINGS), val * rng.randint(2, 50),
                   _permuted(rng, val), val.upper())[c]
        elif isinstance(val, list):
            new = list(val)
            _shuffle_some(rng, new)
            new = new[:rng.randint(0, len(new))] if rng.random() < 0.3 else new
        else:
            new = _rand_value(rng, strings, raw)
    parent[key] = new
    return root


# -- .knb containers ----------------------------------------------------------------------------
def _layout_sections(sections, align: int):
    """(entries, payload): what :func:`kernbin.container.pack` writes for these sections."""
    from kernbin.container import layout_sections
    entries, blobs = layout_sections(sections, align)
    return entries, b"".join(blobs)


def forge(magic: bytes, version: int, htext: bytes, payload: bytes, align) -> bytes:
    """A container around ``htext`` with a CORRECT header digest (and the padding ``align`` asks for)."""
    from blake3 import blake3
    hend = 48 + len(htext)
    a = align if type(align) is int and 1 <= align <= 1 << 16 else 1
    return (struct.pack("<8sII32s", magic, version & 0xFFFFFFFF, len(htext), blake3(htext).digest()) + htext
            + bytes(_round_up(hend, a) - hend) + payload)


def _dump_json(rng, doc, raw: _Raw) -> bytes:
    try:
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=rng.random() < 0.1)
    except (ValueError, RecursionError, TypeError):
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=True,
                          default=str)
    return raw.substitute(text).encode("utf-8", "surrogatepass")


def _repack(rng, seed: Seed, meta, sections, align=None, raw=None) -> bytes:
    """The container with this meta and sections, every digest correct (as kernbin.container.pack)."""
    info = seed.info
    align = info["align"] if align is None else align
    a = align if type(align) is int and 1 <= align <= 1 << 16 else 1
    entries, payload = _layout_sections(sections, a)
    doc = {"align": align, "digest": "blake3", "meta": meta, "sections": entries}
    return forge(info["magic"], info["version"], _dump_json(rng, doc, raw or _Raw(_JSON_RAW)), payload, align)


def s_knb_meta(rng, seed, pool):
    """Mutated build info, re-packed with correct digests: reaches the typed header decoder."""
    info = seed.info
    meta = copy.deepcopy(info["doc"]["meta"])
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 3)):
        meta = mutate_tree(rng, meta, _STRINGS, raw)
    return _repack(rng, seed, meta, info["sections"], raw=raw)


def s_tmeta_tree(rng, seed, pool):
    """Triton launch metadata with its JSON tree mutated (names, types, sizes, lists), re-serialised."""
    try:
        doc = json.loads(seed.data)
    except ValueError:
        return None
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 3)):
        doc = mutate_tree(rng, doc, _STRINGS + ["*i8", "*fp32", "fp16", "i32", "u64", "appended", "constexpr",
                                                "global_scratch", "profile_scratch"], raw)
    return _dump_json(rng, doc, raw)


def s_xpuout_tree(rng, seed, pool):
    """The worker's JSON line with its tree mutated, printed after a line of noise."""
    try:
        doc = json.loads(seed.data.splitlines()[-1])
    except (ValueError, IndexError):
        return None
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 3)):
        doc = mutate_tree(rng, doc, _STRINGS + ["constexpr", "*fp32", "i32", "x_ptr", "n", "BLOCK"], raw)
    return b"noise\n" + _dump_json(rng, doc, raw) + b"\n"


def s_knb_payload(rng, seed, pool):
    """A mutated native binary or IR, re-packed with correct digests (and, mostly, a matching ir_sha256)."""
    info = seed.info
    idx = [i for i, c in enumerate(seed.children) if c is not None]
    if not idx:
        return None
    i = rng.choice(idx)
    sections = list(info["sections"])
    new = mutate(rng, seed.children[i], pool)
    sections[i] = (sections[i][0], new)
    meta = info["doc"]["meta"]
    if sections[i][0] == "ir" and rng.random() < 0.8:
        meta = copy.deepcopy(meta)
        meta["build"]["ir_sha256"] = hashlib.sha256(new).hexdigest()
    return _repack(rng, seed, meta, sections)


def s_knb_sections(rng, seed, pool):
    """Sections dropped, added, renamed, reordered, duplicated; odd alignments."""
    info = seed.info
    sections = list(info["sections"])
    align = None
    for _ in range(rng.randint(1, 2)):
        c = rng.randrange(6)
        if c == 0 and sections:
            sections.pop(rng.randrange(len(sections)))
        elif c == 1:
            name = rng.choice(("native", "ir", "x", "native2", "a" * 129, "bad name", "", "ir", "é", "a/b"))
            body = rng.choice((b"", b"x", rng.choice(pool).data))
            sections.insert(rng.randint(0, len(sections)), (name, body))
        elif c == 2 and sections:
            k = rng.randrange(len(sections))
            sections[k] = (rng.choice(("native", "ir", "IR", "Native", "native ", "x" * 128)), sections[k][1])
        elif c == 3:
            _shuffle_some(rng, sections)
        elif c == 4 and sections:
            sections.append(rng.choice(sections))
        else:
            align = rng.choice((1, 2, 8, 64, 4096, 65536, 0, 3, 131072, -1, True, 1.0, "64", None))
    meta = info["doc"]["meta"]
    if align is None:
        return _repack(rng, seed, meta, sections)
    a = align if type(align) is int and 1 <= align <= 1 << 16 and not align & (align - 1) else 1
    entries, payload = _layout_sections(sections, a)
    doc = {"align": align, "digest": "blake3", "meta": meta, "sections": entries}
    return forge(info["magic"], info["version"], _dump_json(rng, doc, _Raw(_JSON_RAW)), payload, align)


def s_knb_doc(rng, seed, pool):
    """The whole header (align, digest, meta, section table) mutated, under a correct header digest."""
    info = seed.info
    doc = copy.deepcopy(info["doc"])
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 2)):
        doc = mutate_tree(rng, doc, _STRINGS, raw)
    payload = seed.data[info["start"]:]
    return forge(info["magic"], info["version"], _dump_json(rng, doc, raw), payload,
                 doc.get("align") if isinstance(doc, dict) else 1)


def s_knb_text(rng, seed, pool):
    """Byte/token edits of the header's JSON text, under a correct header digest."""
    info = seed.info
    hlen = struct.unpack_from("<I", seed.data, 12)[0]
    htext = seed.data[48:48 + hlen]
    fake = _text_seed("knb", htext)
    new = _bytes_mutate(rng, htext, fake, pool)
    return forge(info["magic"], info["version"], new, seed.data[info["start"]:], info["align"])


# -- bundles: edits re-sealed (every digest recomputed), so they reach the manifest, entry decoding,
#    selection and the gate instead of dying at the first digest
_REQ_KINDS = ("opencl-runtime", "intel-gpu", "intel-gpu-fat", "level-zero-driver", "cuda", "cuda-fat", "x", "")
_IP_VERSIONS = ("12.60.7", "12.55.8", "12.70.4", "20.1.4", "0.0.0", "", "12.60.7 ", "a.b.c", "1" * 300)


def _kbin_kernels(manifest) -> list:
    ks = manifest.get("kernels") if isinstance(manifest, dict) else None
    return [(n, k) for n, k in ks.items() if isinstance(k, dict)] if isinstance(ks, dict) else []


def _kbin_entries(manifest) -> list:
    """Every entry dict of the manifest: ``(kernel name, kernel, entry)``."""
    return [(n, k, e) for n, k in _kbin_kernels(manifest) if isinstance(k.get("entries"), list)
            for e in k["entries"] if isinstance(e, dict)]


def _reseal(rng, seed: Seed, manifest, sections) -> bytes:
    """The bundle with this manifest and these sections, every digest correct (``container.pack``'s
    layout: the bundle's 64-byte alignment), the signature section kept as it was (it is not checked
    without trusted keys; it no longer matches, which only a trust check would see)."""
    return _repack(rng, seed, manifest, sections, raw=_Raw(_JSON_RAW))


def s_kbin_manifest(rng, seed, pool):
    """The manifest (kernels, entries, IR references, build infos) mutated as a tree, re-sealed."""
    manifest = copy.deepcopy(seed.info["doc"]["meta"])
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 3)):
        manifest = mutate_tree(rng, manifest, _STRINGS, raw)
    return _repack(rng, seed, manifest, seed.info["sections"], raw=raw)


def s_kbin_entry(rng, seed, pool):
    """One entry's build info mutated (target, toolchain, flags, kernels, hashes), re-sealed: reaches
    the per-entry typed decode and, when it still decodes, selection and the gate."""
    manifest = copy.deepcopy(seed.info["doc"]["meta"])
    entries = _kbin_entries(manifest)
    if not entries:
        return None
    _, _, e = rng.choice(entries)
    raw = _Raw(_JSON_RAW)
    for _ in range(rng.randint(1, 2)):
        e["info"] = mutate_tree(rng, e.get("info"), _STRINGS, raw)
    return _repack(rng, seed, manifest, seed.info["sections"], raw=raw)


def s_kbin_requires(rng, seed, pool):
    """One entry's requirements ("runs on") changed to another kind, IP, .ze_info version, runtime
    or fat-member list, re-sealed: the gate decides on them."""
    manifest = copy.deepcopy(seed.info["doc"]["meta"])
    entries = [t for t in _kbin_entries(manifest) if isinstance(t[2].get("info"), dict)]
    if not entries:
        return None
    _, _, e = rng.choice(entries)
    req = e["info"].get("requires")                  # {"kind": ..., the values...}
    if not isinstance(req, dict):
        req = e["info"]["requires"] = {"kind": "opencl-runtime"}
    c = rng.randrange(8)
    if c == 0:
        req["kind"] = rng.choice(_REQ_KINDS)
    elif c == 1:
        req["ip_version"] = rng.choice(_IP_VERSIONS)
    elif c == 2:
        req["ze_info_version"] = rng.choice(("1.8", "1.20", "1.99", "2.0", "0.1", "", "x", "1.8.1", "99999999999.1"))
    elif c == 3 and len(req) > 1:
        k = rng.choice(sorted(k for k in req if k != "kind"))
        req[k] = _rand_value(rng, _STRINGS, _Raw(_JSON_RAW)) if rng.random() < 0.5 else str(req[k]) + "x"
    elif c == 4:
        req.update(kind="intel-gpu-fat", members=[
            {"member": rng.choice(("64.12.60.7", "64.12.55.8", "pvc", "x")), "ip_version": rng.choice(_IP_VERSIONS),
             "ze_info_version": "1.20", "device": "pvc"} for _ in range(rng.randint(0, 3))])
    elif c == 5:
        req["sm"] = rng.choice((80, 86, 89, 90, 100, 0, -1, 2 ** 63, "90", None))
    elif c == 6 and isinstance(req.get("members"), list) and req["members"]:
        m = rng.choice(req["members"])
        if isinstance(m, dict):
            k = rng.choice(sorted(m) or ["sm"])
            m[k] = _rand_value(rng, _STRINGS, _Raw(_JSON_RAW)) if rng.random() < 0.5 else rng.choice(
                (80, 90, "12.60.7", "ptx", "cubin", "9.0", "99.0"))
    else:
        e["info"]["requires"] = mutate_tree(rng, req, _STRINGS, _Raw(_JSON_RAW))
    return _reseal(rng, seed, manifest, seed.info["sections"])


def s_kbin_blob(rng, seed, pool):
    """A blob (a native binary or an IR) mutated by its own format's mutators, re-sealed; for an IR
    the recorded hashes (kernel and entries) mostly follow, so the IR is parsed and compared."""
    idx = [i for i, c in enumerate(seed.children) if c is not None]
    if not idx:
        return None
    i = rng.choice(idx)
    sections = list(seed.info["sections"])
    name, _ = sections[i]
    new = mutate(rng, seed.children[i], pool)
    sections[i] = (name, new)
    manifest = seed.info["doc"]["meta"]
    if seed.children[i].kind in ("spirv", "ptx") and rng.random() < 0.8:
        manifest = copy.deepcopy(manifest)
        digest = hashlib.sha256(new).hexdigest()
        for _, k in _kbin_kernels(manifest):
            if k.get("ir") == name:
                k["ir_sha256"] = digest
                for e in k.get("entries") or []:
                    if isinstance(e, dict) and isinstance(e.get("info"), dict):
                        e["info"]["ir_sha256"] = digest
    return _reseal(rng, seed, manifest, sections)


def s_kbin_shape(rng, seed, pool):
    """Kernels and entries moved about (an entry copied to another kernel, pointed at another blob,
    dropped; a kernel without IR, renamed, duplicated); sections dropped (the signature too),
    reordered or renamed. Re-sealed."""
    manifest = copy.deepcopy(seed.info["doc"]["meta"])
    sections = list(seed.info["sections"])
    kernels = _kbin_kernels(manifest)
    entries = _kbin_entries(manifest)
    blobs = [n for n, _ in sections if n != "signature"]
    c = rng.randrange(8)
    if c == 0 and entries and kernels:
        _, _, e = rng.choice(entries)
        k = rng.choice(kernels)[1]
        if isinstance(k.get("entries"), list):
            k["entries"].insert(rng.randint(0, len(k["entries"])), copy.deepcopy(e))
    elif c == 1 and entries and blobs:
        rng.choice(entries)[2]["blob"] = rng.choice(blobs + ["b999", "signature", ""])
    elif c == 2 and entries:
        _, k, e = rng.choice(entries)
        k["entries"].remove(e)
    elif c == 3 and kernels:
        k = rng.choice(kernels)[1]
        k.update(ir=None) if rng.random() < 0.5 else k.update(ir_kind=rng.choice(("ptx", "spirv", "x", None)))
    elif c == 4 and kernels:
        name, k = rng.choice(kernels)
        new = rng.choice(("k", name + "2", "a" * 200, "bad name", "", "é", name.upper()))
        manifest["kernels"][new] = manifest["kernels"].pop(name) if rng.random() < 0.5 else copy.deepcopy(k)
    elif c == 5 and sections:
        sections.pop(rng.randrange(len(sections)))
    elif c == 6 and sections:
        k = rng.randrange(len(sections))
        sections[k] = (rng.choice(("b0", "b1", "signature", "b0 ", "x")), sections[k][1])
    else:
        _shuffle_some(rng, sections)
    return _reseal(rng, seed, manifest, sections)


_TEXT_SEEDS = {}


def _text_seed(kind: str, text: bytes) -> Seed:
    """A plain Seed around a text (for its token dictionary), cached."""
    s = _TEXT_SEEDS.get((kind, text))
    if s is None:
        s = Seed("", "text", text)
        s.kind = kind
        _TEXT_SEEDS[(kind, text)] = s
    return s


# -- zebin -------------------------------------------------------------------------------------
def _put_section(data: bytes, hdr: int, off: int, size: int, new: bytes, rng) -> bytes:
    d = bytearray(data)
    if len(new) <= size and rng.random() < 0.5:
        d[off:off + len(new)] = new
        struct.pack_into("<Q", d, hdr + 32, len(new))
    else:
        at = _round_up(len(d), 8)
        d += bytes(at - len(d)) + new
        struct.pack_into("<QQ", d, hdr + 24, at, len(new))
    return bytes(d)


def s_zebin_yaml(rng, seed, pool):
    """``.ze_info`` YAML edited (as a tree, as text, or a scalar swapped for a raw YAML value such
    as an alias), then put back into the ELF with a correct offset and size."""
    import yaml
    info = seed.info
    if "ze_info" not in info:
        return None
    hdr, off, size, _ = info["ze_info"]
    text = info["ze_text"]
    c = rng.random()
    raw = _Raw(_YAML_RAW)
    if c < 0.45:
        tree = copy.deepcopy(info["ze_tree"])
        for _ in range(rng.randint(1, 3)):
            tree = mutate_tree(rng, tree, _YAML_STRINGS, raw)
        try:
            new = yaml.safe_dump(tree, sort_keys=False, allow_unicode=rng.random() < 0.5)
        except yaml.YAMLError:
            return None
        new = raw.substitute(new)
        if "*b" in new:
            new = _YAML_BOMB + new
        new = new.encode("utf-8", "surrogatepass")
    elif c < 0.8:
        new = _bytes_mutate(rng, text, _text_seed("zebin", text), pool)
    else:
        lines = text.split(b"\n")
        cand = [i for i, ln in enumerate(lines) if re.match(rb"\s*-?\s*\w+:\s+\S", ln)]
        for _ in range(rng.randint(1, 3)):
            if cand:
                i = rng.choice(cand)
                lines[i] = re.sub(rb"(:\s+).*", lambda m: m.group(1) + raw.new(rng).encode(), lines[i], count=1)
        new = raw.substitute(b"\n".join(lines).decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
        if b"*b" in new:
            head = b"---\n" if new.startswith(b"---\n") else b""
            new = head + _YAML_BOMB.encode() + new[len(head):]
    return _put_section(seed.data, hdr, off, size, new, rng)


# -- ELF section tables ---------------------------------------------------------------------------
def s_elf_inflate(rng, seed, pool):
    """A big section table (up to 65535 entries, copies of one real entry, their name offsets all
    equal, consecutive or random) at the end of the file, optionally with a string table moved
    to a long run without NULs: readers must stay linear in the size of the file."""
    d = bytearray(seed.data)
    if len(d) < 64 or d[:4] != b"\x7fELF":
        return None
    shoff, = struct.unpack_from("<Q", d, 40)
    shnum, shstrndx = struct.unpack_from("<HH", d, 60)
    if not shnum or shoff + shnum * 64 > len(d):
        return None
    table = [bytearray(d[shoff + i * 64:shoff + i * 64 + 64]) for i in range(shnum)]
    n = rng.choice((256, 4096, 30000, 65535, rng.randint(shnum, 65535)))
    n = max(shnum, min(n, (MAX_INPUT - len(d)) // 64 - 1))
    if n <= shnum:
        return None
    extra = bytearray(rng.choice(table) * (n - shnum))
    mode = rng.randrange(3)
    if mode:
        for i in range(n - shnum):
            struct.pack_into("<I", extra, i * 64, i if mode == 1 else rng.randrange(1 << 16))
    if shstrndx < shnum and rng.random() < 0.6:        # the names: a long run without NUL
        room = MAX_INPUT - len(d) - n * 64 - 16
        run = min(rng.choice((4096, 1 << 16, 1 << 20, 1 << 22)), room)
        if run > 0:
            at = len(d)
            d += (b".text." + b"A" * run)[:run] if rng.random() < 0.5 else b"A" * run
            struct.pack_into("<QQ", table[shstrndx], 24, at, run)
    at = _round_up(len(d), 8)
    d += bytes(at - len(d)) + b"".join(table) + extra
    struct.pack_into("<Q", d, 40, at)
    struct.pack_into("<H", d, 60, n)
    return bytes(d)


# -- ar archives and fatbins ----------------------------------------------------------------------
def build_ar(members) -> bytes:
    """An ar archive of ``[(16-byte name field, body)]`` with correct size fields."""
    out = [b"!<arch>\n"]
    for name, body in members:
        out.append(name[:16].ljust(16) + b"0           0     0     644     " + str(len(body)).encode().ljust(10)
                   + b"`\n" + body + (b"\n" if len(body) & 1 else b""))
    return b"".join(out)


def s_ar_rebuild(rng, seed, pool):
    members = list(seed.info.get("members", ()))
    children = list(seed.children)
    for _ in range(rng.randint(1, 2)):
        c = rng.randrange(6)
        if c <= 1 and members:                          # a member's body mutated (a zebin: deeply)
            k = rng.randrange(len(members))
            ch = children[k] if k < len(children) else None
            body = mutate(rng, ch, pool) if ch is not None else _bytes_mutate(rng, members[k][1], seed, pool)
            members[k] = (members[k][0], body)
        elif c == 2 and members:
            k = rng.randrange(len(members))
            members.pop(k)
            children = children[:k] + children[k + 1:]
        elif c == 3 and members:
            k = rng.randrange(len(members))
            members.append(members[k])
            children.append(children[k] if k < len(children) else None)
        elif c == 4 and members:                        # renamed, possibly to a GNU long name
            k = rng.randrange(len(members))
            name = rng.choice((b"64.12.60.7/", b"64.1.2.3", b"//", b"/", b"/SYM64/", b"/0", b"/9999", b"/x",
                               b"pad_9", b"generic_ir", b"64.12.55.8", b"\xff\xfe", b"", b"32.12.60.7"))
            members[k] = (name, members[k][1])
            if name == b"/0" and not any(m[0] == b"//" for m in members):
                members.insert(0, (b"//", rng.choice((b"64.99.0.1/\n", b"x" * 40 + b"/\n", b"no-terminator"))))
                children.insert(0, None)
        else:
            _shuffle_some(rng, members)
            children = [None] * len(members)
    return build_ar(members)


def s_fatbin_rebuild(rng, seed, pool):
    entries = list(seed.info.get("entries", ()))
    children = list(seed.children)
    for _ in range(rng.randint(1, 2)):
        c = rng.randrange(5)
        if c <= 1 and entries:
            k = rng.randrange(len(entries))
            ch = children[k] if k < len(children) else None
            body = mutate(rng, ch, pool) if ch is not None else _bytes_mutate(rng, entries[k][1], seed, pool)
            entries[k] = (entries[k][0], body)
        elif c == 2 and entries:
            entries.pop(rng.randrange(len(entries)))
        elif c == 3 and entries:
            entries.append(rng.choice(entries))
        else:
            if entries:
                k = rng.randrange(len(entries))
                h = bytearray(entries[k][0])
                struct.pack_into("<H", h, 0, rng.choice((0, 1, 2, 3, 0xFFFF)))
                if rng.random() < 0.5:
                    struct.pack_into("<I", h, 28, rng.choice((0, 1, 80, 90, 100, 0xFFFFFFFF)))
                entries[k] = (bytes(h), entries[k][1])
    body = b"".join(struct.pack("<HHIQ", *struct.unpack_from("<HHI", h, 0), len(p)) + h[16:] + p for h, p in entries)
    hdr = bytearray(seed.info["header"])
    struct.pack_into("<Q", hdr, 8, len(body))
    return bytes(hdr) + body


# -- SPIR-V -------------------------------------------------------------------------------------
def _name_words(name: bytes) -> list:
    name = name + bytes(-len(name) % 4)
    return list(struct.unpack(f"<{len(name) // 4}I", name)) if name else []


def s_spirv_insts(rng, seed, pool):
    d = seed.data
    n = len(d) // 4
    words = list(struct.unpack(f"<{n}I", d[:n * 4]))
    insts = seed.info.get("insts") or []
    c = rng.randrange(7)
    if c == 0 and insts:                                  # a word count smashed
        i, count, op = rng.choice(insts)
        words[i] = (_interesting_int(rng, count, 16, n) << 16) | op
    elif c == 1:                                          # a new OpEntryPoint
        name = rng.choice((b"k\0", b"kernel_name\0", b"no-nul", b"\xff\xfe\0", b"", b"\0", b"x" * 5000 + b"\0",
                           b"\xed\xa0\x80\0", "é\U0001F600".encode() + b"\0"))
        body = [rng.choice((6, 6, 6, 0, 5, 0xFFFFFFFF)), rng.randrange(1, 100)] + _name_words(name)
        body += [rng.randrange(100) for _ in range(rng.randint(0, 3))]
        count = len(body) + 1 if rng.random() < 0.8 else rng.randint(0, 8)
        at = rng.choice([i for i, _, _ in insts] or [5])
        words[at:at] = [(count << 16) | 15] + body
    elif c == 2 and insts:
        i, count, _ = rng.choice(insts)
        del words[i:i + count]
    elif c == 3 and insts:
        i, count, _ = rng.choice(insts)
        words[i:i] = words[i:i + count] * rng.choice((1, 2, 1000))
    elif c == 4:                                          # big-endian module
        return struct.pack(f">{len(words)}I", *words) + d[n * 4:]
    elif c == 5 and insts:
        i, count, _ = rng.choice(insts)
        cut = (i + rng.randint(0, count)) * 4 + rng.choice((0, 0, 1, 2, 3))
        return d[:cut]
    else:
        k = rng.randrange(1, 5)
        words[k] = rng.choice((0, 1, 0x00010000, 0x00010600, 0x00010700, 0x00020000, 0x00010001, 0xFFFFFFFF,
                               rng.getrandbits(32)))
    return struct.pack(f"<{len(words)}I", *words) + d[n * 4:]


# -- PTX ----------------------------------------------------------------------------------------
_PTX_LINES = (b".version 7.8", b".version 10.0", b".version 0.9", b".version 9.100", b".version 999.1",
              b".version 8", b".version 8.", b".target sm_90", b".target sm_90a, debug", b".target sm_5",
              b".target compute_90", b".target sm_90, sm_80", b".target sm_90,", b".target", b".address_size 32",
              b".address_size 16", b".address_size", b".entry k;", b".entry k {", b".entry k {}",
              b".entry 9bad {}", b".entry", b".visible .entry k()", b"}", b"{", b"/*", b"*/", b'"', b"//",
              b'.file 1 "unterminated', b"\0", b"\xff\xfe", b"", b".version 8.0 .target sm_90")


def s_ptx_lines(rng, seed, pool):
    lines = seed.data.split(b"\n")
    for _ in range(rng.randint(1, 3)):
        if not lines:
            lines = [b""]
        c = rng.randrange(6)
        k = rng.randrange(len(lines))
        if c == 0:
            del lines[k]
        elif c == 1:
            lines.insert(k, lines[rng.randrange(len(lines))])
        elif c == 2:
            lines.insert(k, rng.choice(_PTX_LINES))
        elif c == 3:
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        elif c == 4:
            lines[k] = re.sub(rb"\d+", lambda m: str(rng.choice((0, 1, 99, 100, 999, 10 ** 6, 10 ** 50))).encode(),
                              lines[k], count=1)
        else:                                             # one line repeated many times
            reps = rng.choice((10, 1000, 100000))
            lines[k:k] = [rng.choice((lines[k], rng.choice(_PTX_LINES)))] * reps
    return b"\n".join(lines)[:MAX_INPUT]


_STRUCTURAL = {"tmeta": (s_tmeta_tree,), "xpuout": (s_xpuout_tree,), "knb": (s_knb_meta, s_knb_meta, s_knb_payload, s_knb_payload, s_knb_sections, s_knb_doc,
                       s_knb_doc, s_knb_text),
               "zebin": (s_zebin_yaml, s_zebin_yaml, s_zebin_yaml, s_elf_inflate), "ocl": (s_elf_inflate,),
               "cubin": (s_elf_inflate,), "fat": (s_ar_rebuild,), "fatbin": (s_fatbin_rebuild,),
               "spirv": (s_spirv_insts,), "ptx": (s_ptx_lines,),
               "kbin": (s_kbin_manifest, s_kbin_entry, s_kbin_entry, s_kbin_requires, s_kbin_requires, s_kbin_blob,
                        s_kbin_blob, s_kbin_shape)}
_STRUCTURAL_RATE = {"ocl": 0.15, "cubin": 0.15, "kbin": 0.8}   # (ocl, cubin: their only one inflates: big, slow)
_STRINGS: list = list(_INTERESTING_STRINGS)
_YAML_STRINGS: list = ["name", "kernels", "execution_env", "per_thread_memory_buffers", "payload_arguments",
                       "grf_count", "simd_size", "slm_size", "barrier_count", "has_dpas", "size", "type", "scratch",
                       "private_space", "arg_index", "version"]


def mutate(rng, seed: Seed, pool) -> bytes:
    """One mutated input from ``seed``: a structure-aware re-pack (45% of the time; 15% for bare
    ELFs), then byte-level mutators (1 to 6 of them, or none after most re-packs)."""
    data = None
    structs = _STRUCTURAL.get(seed.kind)
    if structs and rng.random() < _STRUCTURAL_RATE.get(seed.kind, 0.45):
        data = rng.choice(structs)(rng, seed, pool)
        if data is not None and rng.random() < 0.7:
            return data[:MAX_INPUT]
    return _bytes_mutate(rng, seed.data if data is None else data, seed, pool)


def prepare_seeds(raw: dict, kinds) -> list:
    """Seeds (analysed) of the given kinds; fills the string dictionaries from their headers."""
    out = []
    for kind in kinds:
        for name, data in raw.get(kind, ()):
            s = Seed(kind, name, data)
            out.append(s)
            if kind in ("knb", "kbin") and "doc" in s.info:
                _STRINGS.extend(sorted(strings_of(s.info["doc"], set()) - set(_STRINGS)))
            if kind == "zebin" and "ze_tree" in s.info:
                _YAML_STRINGS.extend(sorted(strings_of(s.info["ze_tree"], set()) - set(_YAML_STRINGS)))
    return out


# =============================================================================================
# targets
# =============================================================================================
class Invariant(Exception):
    """An accepted input broke a property the target checks (an "other" outcome)."""


class Target:
    def __init__(self, name, kinds, run, doc, check=None, setup=None, reach=()):
        self.name, self.kinds, self.run, self.doc, self.check, self.setup = name, kinds, run, doc, check, setup
        self.reach = reach          # milestones a run reports in REACHED (counted in the summary)


#: how deep the input in flight got: a target's run adds the names of its ``reach`` milestones
REACHED: set = set()
_REACH_SLOTS = 2                # counters in the shared memory header (bytes 48..64)


def _run_knb(data, seed, ctx):
    from kernbin.artifact import NativeBinary
    nb = NativeBinary.from_bytes(data)        # twice: a header seen again takes the memoised (frozen) path
    nb.requires, nb.kernel_names, nb.toolchain_key     # what the load gate reads, before the rest is built
    nb = NativeBinary.from_bytes(data)
    nb.requires, nb.kernel_names, nb.ir_sha256
    return nb.verify()                        # the whole build info and the embedded IR too


def _check_knb(nb, data, seed, ctx):
    from kernbin.artifact import NativeBinary
    again = NativeBinary.from_bytes(nb.to_bytes())
    if nb.requires.to_json() != nb.info.requires.to_json() or nb.kernel_names != tuple(k.name for k in nb.info.kernels):
        raise Invariant("what the gate read differs from the build info")
    if again.binary != nb.binary or again.info.to_json() != nb.info.to_json() or \
            (again.ir is None) != (nb.ir is None) or (nb.ir is not None and again.ir.data != nb.ir.data):
        raise Invariant("an accepted .knb does not survive to_bytes/from_bytes unchanged")


def _run_container(data, seed, ctx):
    from kernbin.artifact import KNB_MAGIC, KNB_VERSION
    from kernbin.container import Container, ContainerError
    kw = {"magic": KNB_MAGIC, "versions": (KNB_VERSION,)}
    err = c = None
    try:
        c = Container.parse(data, **kw)
        c.meta
        for n in c.names:
            c.section(n)
        c.verify_all()
        rule1 = None
    except ContainerError as e:
        err, rule1 = e, e.rule
    try:
        r = Container.read(io.BytesIO(data), len(data), **kw)
        r.meta
        rule2 = "section-digest" if r.bad else None
        if rule2 is None and c is not None and any(r.section(n) != c.section(n) for n in c.names):
            raise Invariant("Container.parse and Container.read give different section bytes")
    except ContainerError as e:
        rule2 = e.rule
    if rule1 != rule2:
        raise Invariant(f"Container.parse says {rule1!r}, Container.read says {rule2!r}")
    if err is not None:
        raise err
    return c


def _setup_cache(seeds, tmp):
    """A LocalStore in ``tmp`` holding one real entry per distinct .knb seed; returns entry seeds."""
    from kernbin.artifact import NativeBinary
    from kernbin.cache import LocalStore, key_for_info
    store = LocalStore(os.path.join(tmp, f"store-{os.getpid()}"), max_size=None)
    out, keys = [], set()
    for s in seeds:
        nb = NativeBinary.from_bytes(s.data)
        key = key_for_info(nb.info)
        if key in keys:
            continue
        keys.add(key)
        path = store.put(key, nb)
        with open(path, "rb") as f:
            e = Seed("knb", s.name + ":entry", f.read())
        e.key, e.path = key, path
        out.append(e)
    return out, {"store": store, "n": 0}


def _run_cache(data, seed, ctx):
    store = ctx["store"]
    with open(seed.path, "wb") as f:
        f.write(data)
    ctx["n"] += 1
    if ctx["n"] % 4096 == 0:                       # keep the event log small
        try:
            os.unlink(store._events)
        except OSError:
            pass
    got = store.get(seed.key)
    if got is None:
        if os.path.exists(seed.path):
            raise Invariant("LocalStore.get returned None but left the bad entry in place")
        from kernbin.errors import InvalidBinary
        raise InvalidBinary("the cache store refused the entry (returned None, removed it)", rule="cache-miss")
    return got


def _check_cache(nb, data, seed, ctx):
    from kernbin.cache import key_for_info
    if key_for_info(nb.info) != seed.key:
        raise Invariant("LocalStore.get returned an entry whose build info does not hash to its key")


_BUNDLE_PATH = None


def _stand_in_devices(seeds) -> list:
    """Devices as kernbin's gate sees them, one per "runs on" of the seed bundles' entries (the CPU
    runtime that made an ``opencl-runtime`` entry, an Intel GPU of each IP of the ``intel-gpu`` and
    fat entries, plus one GPU of an IP no entry has): real ``OpenCLDevice`` logic (``can_run`` of the
    OpenCL backend, ``payload``) over a made-up identity, with no runtime behind it (nothing is
    loaded into the fuzzing process)."""
    from types import SimpleNamespace

    from kernbin.backends import get_backend
    from kernbin.backends.opencl import OpenCLDevice
    from kernbin.device import DeviceId, Requirements, Toolchain
    from kernbin.target import Target as KTarget

    class StandIn(OpenCLDevice):
        def __init__(self, selector, id, own, decoder, fmt):
            self.backend, self.target, self.id = get_backend("opencl"), KTarget("opencl", selector), id
            self.platform = SimpleNamespace(name="Intel(R) OpenCL")
            self._own, self._decoder, self._fmt = own, decoder, fmt

        @property
        def toolchain(self):         # another toolchain than any entry's: the decoder version is asked
            return Toolchain("opencl", "stand-in", "0", {})

        def requirements_for_own_binaries(self, binary=None):
            return self._own

        def zebin_decoder_version(self):
            return self._decoder

        def _binary_format(self):
            return self._fmt

    from kernbin.backends.cuda import CudaDevice

    class CudaStandIn(CudaDevice):
        def __init__(self, sm, ptx_isa):
            self.backend, self.target = get_backend("cuda"), KTarget("cuda", "0")
            self.sm, self.ptx_isa = sm, ptx_isa
            self.id = DeviceId("cuda", "NVIDIA Corporation", f"sm_{sm}", f"sm_{sm}", "0", "0",
                               {"sm": sm, "ptx_isa": "%d.%d" % ptx_isa})

        @property
        def toolchain(self):
            return Toolchain("cuda", "stand-in", "0", {})

    devices, seen = [], set()
    ips, sms = set(), set()
    for sd in seeds:
        for _, k in _kbin_kernels(sd.info.get("doc", {}).get("meta", {})):
            for e in k.get("entries") or []:
                req = dict(e["info"]["requires"])           # {"kind": ..., the values...}
                kind = req.pop("kind")
                if kind == "opencl-runtime" and str(sorted(req.items())) not in seen:
                    seen.add(str(sorted(req.items())))
                    devices.append(StandIn("cpu", DeviceId("opencl", "Intel", req.get("device", ""),
                                                           req.get("arch", ""), req.get("driver", ""),
                                                           req.get("runtime", "")),
                                           Requirements("opencl-runtime", req), None, "opencl-cpu-elf"))
                elif kind == "intel-gpu":
                    ips.add((req.get("ip_version"), req.get("ze_info_version")))
                elif kind == "intel-gpu-fat":
                    ips.update((m.get("ip_version"), m.get("ze_info_version")) for m in req.get("members", []))
                elif kind in ("cuda", "cuda-fat"):
                    sms.update(m.get("sm") for m in req.get("members", [req]) if isinstance(m.get("sm"), int))
    for ip, zev in sorted(ips, key=str) + [("1.2.3", "1.8")]:
        devices.append(StandIn("gpu", DeviceId("opencl", "Intel", f"GPU {ip}", "gpu", "0", "0",
                                               {"ip_version": ip}), Requirements("opencl-runtime", {}), zev, "zebin"))
    for sm in sorted(sms) + ([sms and max(sms) + 10] if sms else []):
        devices.append(CudaStandIn(sm, (9, 0)))
    return devices


def _setup_bundle(seeds, tmp):
    return seeds, {"devices": _stand_in_devices(seeds)}


def _run_bundle(data, seed, ctx):
    """Check the container (header digest, layout, every section's digest: ``past_digests``), then
    open the bundle and read everything in it: every kernel's entries, blobs and IR; then, on each
    stand-in device, choose and gate every kernel (``gated``: at least one passed); then verify()."""
    import tempfile
    import kernbin
    from kernbin.api import gate_from_bundle
    from kernbin.loader import choose_entry
    from kernbin.bundle import BUNDLE_MAGIC, BUNDLE_VERSION, MAX_MANIFEST
    from kernbin.container import Container
    from kernbin.errors import IncompatibleBinary, InvalidBinary
    global _BUNDLE_PATH
    c = Container.parse(data, magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,), max_header=MAX_MANIFEST)
    c.verify_all()
    REACHED.add("past_digests")
    if _BUNDLE_PATH is None:
        _BUNDLE_PATH = os.path.join(tempfile.mkdtemp(prefix="kernbin-fuzz-bundle-"), "x.kbin")
    path = _BUNDLE_PATH
    with open(path, "wb") as f:
        f.write(data)
    out = {}
    with kernbin.open_bundle(path) as b:
        for name in b.names:
            entries = b.entries(name)
            ir = None if entries else b.ir(name)
            for i, e in enumerate(entries):     # the IR (parsed, hash compared) with the first entry only:
                nb = b.native(e, with_ir=i == 0)    # a 4 MiB PTX takes ~0.3 s a parse; verify() parses it again
                ir = nb.ir if i == 0 else ir
            out[name] = (len(entries), ir.sha256 if ir is not None else None)
        for device in (ctx or {}).get("devices", ()):
            for name in b.names:
                try:
                    gate_from_bundle(b, name, device)
                except (IncompatibleBinary, InvalidBinary):
                    continue                # nothing fits, or the bytes fail the payload check: a verdict
                REACHED.add("gated")
        b.verify()
    with kernbin.open_bundle(path) as b:            # the bulk reader load_many uses, and its choices
        try:
            b.read_all_entries()
        except InvalidBinary:
            return out
        for name in b.names:
            for e in b.entries(name):
                try:
                    e.target, e.requires, e.toolchain_key, e.info
                except InvalidBinary:
                    pass
            for device in (ctx or {}).get("devices", ()):
                choose_entry(b, name, device)
    return out


def _run_spirv(data, seed, ctx):
    from kernbin.ir import SpirvModule
    return SpirvModule.from_bytes(data)


def _check_ir(m, data, seed, ctx):
    if not all(isinstance(k, str) for k in m.kernels) or len(m.sha256) != 64:
        raise Invariant("bad kernel list or hash")
    if m.kind == "ptx":
        m.sm, m.arch_suffix                          # the properties must work for what was accepted


def _run_ptx(data, seed, ctx):
    from kernbin.ir.ptx import PtxModule
    return PtxModule.from_bytes(data)


def _run_zebin(data, seed, ctx):
    from kernbin.formats.zebin import parse_zebin
    return parse_zebin(data)


def _check_zebin(z, data, seed, ctx):
    json.dumps([k.attributes() for k in z.kernels] + [z.notes, z.sections, z.ze_info_version, z.has_ir])


def _run_ar(data, seed, ctx):
    from kernbin.formats.zebin import read_ar
    return read_ar(data)


def _run_ocl(data, seed, ctx):
    from kernbin.formats.opencl_elf import describe
    return describe(data)


def _check_json(out, data, seed, ctx):
    json.dumps(out)


def _run_cubin(data, seed, ctx):
    from kernbin.formats.cubin import cubin_kernels, cubin_sm
    return cubin_kernels(data), cubin_sm(data)


def _run_fatbin(data, seed, ctx):
    from kernbin.formats.cubin import fatbin_members
    return fatbin_members(data)


_LEASE_KEY = "ab" * 32


def _run_lease(data, seed, ctx):
    """A lease payload signed with the fleet's key (so the HMAC passes and the parser is reached)."""
    from kernbin.cache.remote import RemoteStore
    store = RemoteStore.__new__(RemoteStore)
    store.hmac_key = b"fuzz-key"
    payload = data.replace(b"NOW", str(int(time.time() * 1000)).encode(), 1)
    from kernbin.cache.remote import _LEASE_MAGIC
    return store.read_lease(_LEASE_KEY, _LEASE_MAGIC + store._lease_sig(_LEASE_KEY, payload) + payload, 10.0)


def _run_tmeta(data, seed, ctx):
    """Triton launch metadata: validated, then a parameter block packed from it (no device)."""
    from kernbin.triton._meta import LaunchMeta
    from kernbin.triton.launcher import TritonKernel
    meta = LaunchMeta.from_json(data)
    k = TritonKernel.__new__(TritonKernel)
    k._set_meta(meta)
    args = [None if a.specialised else (16 << 8 if a.is_pointer else 1.0 if a.type.startswith(("fp", "bf"))
                                        else 16) for a in meta.args]
    while args and args[-1] is None:
        args.pop()
    if None in args:                      # a specialised argument between runtime ones: give it by name
        kw = {a.name: 16 << 8 if a.is_pointer else 16 for a, v in zip(meta.args, args) if v is not None}
        return meta, k.pack(**kw)
    return meta, k.pack(*args)


def _run_xpuout(data, seed, ctx):
    from kernbin.triton.xpu import _parse_worker_output
    return _parse_worker_output(data, 1)


def _check_tmeta(result, data, seed, ctx):
    meta, block = result
    if len(block) != 8 * max(len(meta.params), 1):
        raise Invariant(f"packed {len(block)} bytes for {len(meta.params)} parameters")


def _run_inspect(data, seed, ctx):
    from kernbin.inspect import describe_bytes
    return describe_bytes(data)


TARGETS = {t.name: t for t in (
    Target("knb", ("knb",), _run_knb,
           "kernbin.artifact.NativeBinary.from_bytes, twice (first and memoised read), + to_bytes round trip",
           _check_knb),
    Target("container", ("knb",), _run_container,
           "kernbin.container.Container.parse (.knb magic/version), every section, verify_all; "
           "Container.read must agree"),
    Target("cache-entry", ("knb",), _run_cache, "kernbin.cache.LocalStore.get of mutated bytes at a real entry's path",
           _check_cache, setup=_setup_cache),
    Target("spirv", ("spirv",), _run_spirv, "kernbin.ir.SpirvModule.from_bytes", _check_ir),
    Target("ptx", ("ptx",), _run_ptx, "kernbin.ir.ptx.PtxModule.from_bytes", _check_ir),
    Target("zebin", ("zebin",), _run_zebin, "kernbin.formats.zebin.parse_zebin", _check_zebin),
    Target("ar", ("fat",), _run_ar, "kernbin.formats.zebin.read_ar"),
    Target("opencl-elf", ("ocl",), _run_ocl, "kernbin.formats.opencl_elf.describe", _check_json),
    Target("cubin", ("cubin",), _run_cubin, "kernbin.formats.cubin.cubin_kernels + cubin_sm"),
    Target("fatbin", ("fatbin",), _run_fatbin, "kernbin.formats.cubin.fatbin_members"),
    Target("bundle", ("kbin",), _run_bundle, "kernbin.open_bundle + every entry, blob and IR, selection and the "
           "gate on stand-in devices, then verify()", setup=_setup_bundle, reach=("past_digests", "gated")),
    Target("lease", ("lease",), _run_lease, "kernbin.cache.remote.RemoteStore.read_lease of a signed lease value"),
    Target("triton-meta", ("tmeta",), _run_tmeta,
           "kernbin.triton LaunchMeta.from_json, then TritonKernel.pack (no device)", _check_tmeta),
    Target("xpu-output", ("xpuout",), _run_xpuout,
           "kernbin.triton.xpu._parse_worker_output (+ the launch metadata) of a triton-xpu worker's stdout"),
    Target("inspect", FILE_KINDS, _run_inspect, "kernbin.inspect.describe_bytes on any seed (output must be JSON-able)",
           _check_json),
)}


# =============================================================================================
# running one input
# =============================================================================================
class Timeout(BaseException):
    """Raised by the SIGALRM handler (a BaseException: parsers catching Exception do not eat it)."""


def _on_alarm(signum, frame):
    raise Timeout()


def _signature(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = ""
    for fr in reversed(tb):
        if "/kernbin/" in fr.filename or fr.filename.endswith("fuzz.py"):
            where = f" at {os.path.relpath(fr.filename, ROOT)}:{fr.lineno}"
            break
    if tb and not where:
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}"
    return f"{type(e).__name__}{where}"


def _memory_in_chain(e: BaseException) -> bool:
    seen = 0
    c = e
    while c is not None and seen < 32:
        if isinstance(c, MemoryError):
            return True
        c = c.__cause__ or c.__context__
        seen += 1
    return False


def run_one(target: Target, data: bytes, seed: Seed, ctx, time_limit: float | None = None):
    """(outcome, signature or None, detail) for one input, in this process, under a SIGALRM
    watchdog of ``time_limit`` seconds (a parser stuck in C code needs the parent's watchdog)."""
    time_limit = TIME_LIMIT if time_limit is None else time_limit
    t0 = time.perf_counter()
    outcome = sig = detail = None
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        try:
            result = target.run(data, seed, ctx)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if target.check is not None:
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                target.check(result, data, seed, ctx)
            except (Timeout, KeyboardInterrupt):
                raise
            except BaseException as e:
                outcome, sig = OTHER, "invariant: " + (str(e)[:120] if isinstance(e, Invariant) else _signature(e))
                detail = traceback.format_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        if outcome is None:
            outcome = ACCEPTED
    except Timeout:
        outcome, sig, detail = OTHER, f"timeout (over {time_limit:g} s)", traceback.format_exc()
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        from kernbin.errors import KernbinError
        if isinstance(e, KernbinError) and not _memory_in_chain(e):
            outcome = REJECTED
        else:
            outcome = OTHER
            sig = "memory: " + _signature(e) if _memory_in_chain(e) else _signature(e)
            detail = traceback.format_exc()
    dt = time.perf_counter() - t0
    if outcome != OTHER and dt > time_limit:
        outcome, sig, detail = OTHER, f"slow (over {time_limit:g} s)", f"{dt:.3f} s"
    return outcome, sig, detail


def _slug(sig: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", sig).strip("-")[:60] or "other"


def save_other(out_dir: str, target: str, data: bytes, sig: str, detail, seed, counts: dict, max_saves: int):
    """Save an "other" input (at most ``max_saves`` per signature); returns the path or None."""
    counts[sig] = counts.get(sig, 0) + 1
    if counts[sig] > max_saves:
        return None
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{_slug(sig)}-{hashlib.sha1(data).hexdigest()[:16]}")
    with open(base + ".bin", "wb") as f:
        f.write(data)
    with open(base + ".json", "w") as f:
        json.dump({"target": target, "signature": sig, "detail": detail, "bytes": len(data),
                   "seed": getattr(seed, "name", None), "key": getattr(seed, "key", None)}, f, indent=1)
    return base + ".bin"


# =============================================================================================
# the worker process and its watchdog
# =============================================================================================
def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _worker(target: Target, seeds, pool, ctx, rng_seed: int, deadline: float, shm, conn, out_dir, max_saves,
            stack_file):
    import faulthandler
    import resource
    faulthandler.enable(file=stack_file, all_threads=True)                     # a crash: where
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)   # a hang: the parent asks
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _vm_bytes() + MEM_LIMIT
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the parent handles ^C
    rng = random.Random(rng_seed)
    counts = {ACCEPTED: 0, REJECTED: 0, OTHER: 0}
    reached = [0] * _REACH_SLOTS
    saved = {}
    pack_into, mono = struct.pack_into, time.monotonic
    n = 0
    while True:
        if not n & 15 and mono() >= deadline:
            break
        seed = rng.choice(seeds)
        try:
            data = mutate(rng, seed, pool)
        except Exception as e:                              # a mutator's own bug: visible, not fatal
            conn.send(("mutator-error", _signature(e)))
            data = seed.data
        shm[_SHM_HEAD:_SHM_HEAD + len(data)] = data
        pack_into("<Id", shm, 36, len(data), mono())        # length and start first, then the flag
        pack_into("<I", shm, 32, 1)
        REACHED.clear()
        outcome, sig, detail = run_one(target, data, seed, ctx)
        pack_into("<I", shm, 32, 0)
        counts[outcome] += 1
        for i, milestone in enumerate(target.reach[:_REACH_SLOTS]):
            reached[i] += milestone in REACHED
        n += 1
        pack_into("<QQ", shm, 48, *reached)
        pack_into("<QQQQ", shm, 0, n, counts[ACCEPTED], counts[REJECTED], counts[OTHER])
        if outcome == OTHER:
            path = save_other(out_dir, target.name, data, sig, detail, seed, saved, max_saves)
            conn.send(("other", sig, path))
    conn.close()


def _warm_imports() -> None:
    """Import every parser module once in the parent, so that a restarted worker starts warm
    (never run a parser here: an input that crashes must only ever crash a worker)."""
    import importlib
    for m in ("kernbin.artifact", "kernbin.container", "kernbin.cache", "kernbin.inspect", "kernbin.ir",
              "kernbin.ir.ptx", "kernbin.formats.zebin", "kernbin.formats.cubin", "kernbin.formats.opencl_elf",
              "yaml", "elftools.elf.elffile", "elftools.elf.sections"):
        try:
            importlib.import_module(m)
        except ImportError:
            pass


def fuzz(name: str, seconds: float, rng_seed: int, out_dir: str, raw_seeds: dict, max_saves: int = 100,
         progress: bool = True) -> dict:
    """Fuzz target ``name`` for ``seconds``; returns the summary dict."""
    import multiprocessing as mp
    target = TARGETS[name]
    t_start = time.monotonic()
    seeds = prepare_seeds(raw_seeds, target.kinds)
    summary = {"target": name, "inputs": 0, "rejected": 0, "accepted": 0, "other": 0,
               **{milestone: 0 for milestone in target.reach}, "seconds": 0.0}
    if not seeds:
        _log(f"fuzz: {name}: skipped, no seeds (its runtime is missing)")
        summary.update(skipped="no seeds: the runtime that builds them is missing")
        return summary
    tmp = tempfile.mkdtemp(prefix=f"kernbin-fuzz-{name}-")
    ctx = None
    if target.setup is not None:
        seeds, ctx = target.setup(seeds, tmp)
    pool = prepare_seeds(raw_seeds, KINDS) if target.kinds != KINDS else seeds
    _warm_imports()
    kinds: dict[str, int] = {}
    mutator_errors: dict[str, int] = {}
    deadline = t_start + seconds
    shm = mmap.mmap(-1, _SHM_SIZE)
    fork = mp.get_context("fork")
    restarts = quick_deaths = 0
    saved: dict[str, int] = {}
    last_print = time.monotonic()
    try:
        while time.monotonic() < deadline:
            shm[:_SHM_HEAD] = bytes(_SHM_HEAD)
            recv, send = fork.Pipe(duplex=False)
            stack_file = tempfile.TemporaryFile(mode="w+")
            p = fork.Process(target=_worker, args=(target, seeds, pool, ctx, rng_seed + restarts * 7919, deadline,
                                                   shm, send, out_dir, max_saves, stack_file), daemon=True)
            p.start()
            send.close()
            killed = None
            while True:
                p.join(0.05)
                while recv.poll():
                    try:
                        msg = recv.recv()
                    except (EOFError, OSError):
                        break
                    if msg[0] == "other":
                        kinds[msg[1]] = kinds.get(msg[1], 0) + 1
                    else:
                        mutator_errors[msg[1]] = mutator_errors.get(msg[1], 0) + 1
                if not p.is_alive():
                    break
                state, _, started = struct.unpack_from("<IId", shm, 32)
                now = time.monotonic()
                if state == 1 and now - started > TIME_LIMIT + HANG_GRACE:
                    n0 = struct.unpack_from("<Q", shm, 0)[0]
                    time.sleep(0.2)                            # still the same input? then it hangs
                    if struct.unpack_from("<IId", shm, 32) != (state, _, started) or \
                            struct.unpack_from("<Q", shm, 0)[0] != n0:
                        continue
                    try:
                        os.kill(p.pid, signal.SIGUSR1)        # faulthandler: where it is stuck
                        time.sleep(0.3)
                    except OSError:
                        pass
                    p.kill()
                    p.join()
                    killed = f"hang (killed after {TIME_LIMIT + HANG_GRACE:g} s)"
                    break
                if progress and now - last_print > 30:
                    last_print = now
                    n, a, r, o = struct.unpack_from("<QQQQ", shm, 0)
                    _log(f"fuzz: {name}: {now - t_start:.0f} s, {summary['inputs'] + n} inputs, "
                         f"{summary['other'] + o} other")
            n, a, r, o = struct.unpack_from("<QQQQ", shm, 0)
            summary["inputs"] += n
            summary["accepted"] += a
            summary["rejected"] += r
            summary["other"] += o
            for milestone, count in zip(target.reach, struct.unpack_from("<QQ", shm, 48)):
                summary[milestone] += count
            state, length, _ = struct.unpack_from("<IId", shm, 32)
            if killed is None and p.exitcode != 0:
                killed = f"crash (exit code {p.exitcode})"
            stack_file.seek(0)
            stacks = stack_file.read()[-20000:]
            stack_file.close()
            if killed is not None:
                if state == 1 and killed.startswith("hang") and stacks and " in run_one" not in stacks:
                    # stuck before or after the parser ran (the stack says where): not an outcome of
                    # this input; counted apart (its bytes are kept, to run again with --repro)
                    data = bytes(shm[_SHM_HEAD:_SHM_HEAD + length])
                    summary["stalls"] = summary.get("stalls", 0) + 1
                    save_other(out_dir, name, data, "stall", f"{killed}\n{stacks}", None, saved, max_saves)
                    _log(f"fuzz: {name}: worker stalled outside the parser:\n{stacks[-3000:]}")
                elif state == 1:
                    data = bytes(shm[_SHM_HEAD:_SHM_HEAD + length])
                    summary["inputs"] += 1
                    summary["other"] += 1
                    kinds[killed] = kinds.get(killed, 0) + 1
                    save_other(out_dir, name, data, killed, f"{killed}\n{stacks}", None, saved, max_saves)
                    if stacks:
                        _log(f"fuzz: {name}: {killed}:\n{stacks[-3000:]}")
                else:
                    kinds[killed + ", between inputs"] = kinds.get(killed + ", between inputs", 0) + 1
                restarts += 1
                quick_deaths = quick_deaths + 1 if n == 0 else 0
                if quick_deaths >= 10:
                    _log(f"fuzz: {name}: the worker dies at once, giving up")
                    summary["error"] = "worker dies at once"
                    break
    finally:
        shm.close()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    summary["inputs_per_second"] = round(summary["inputs"] / max(summary["seconds"], 1e-9))
    summary.update(seeds=len(seeds), seed=rng_seed, restarts=restarts, out=out_dir, other_kinds=kinds)
    if mutator_errors:
        summary["mutator_errors"] = mutator_errors
    return summary


def repro(name: str, paths, raw_seeds: dict) -> list:
    """Run saved inputs through target ``name`` in this process; one result dict per file."""
    target = TARGETS[name]
    with tempfile.TemporaryDirectory(prefix="kernbin-fuzz-repro-") as tmp:
        return _repro(target, prepare_seeds(raw_seeds, target.kinds), paths, tmp)


def _repro(target: Target, seeds, paths, tmp: str) -> list:
    ctx = None
    if target.setup is not None:
        seeds, ctx = target.setup(seeds, tmp)
    signal.signal(signal.SIGALRM, _on_alarm)
    out = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        seed = seeds[0] if seeds else None
        side = os.path.splitext(p)[0] + ".json"
        if os.path.exists(side):
            with open(side) as f:
                meta = json.load(f)
            seed = next((s for s in seeds if s.key and s.key == meta.get("key")), seed)
        t0 = time.perf_counter()
        outcome, sig, detail = run_one(target, data, seed, ctx)
        out.append({"file": p, "outcome": outcome, "signature": sig, "seconds": round(time.perf_counter() - t0, 3)})
        if detail and outcome == OTHER:
            _log(detail)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("target", nargs="?", help="a target name (see --list) or 'all'")
    ap.add_argument("--list", action="store_true", help="name the targets")
    ap.add_argument("--seconds", type=float, default=60, help="how long to fuzz (each target, for 'all')")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--out", default=None, help="where 'other' inputs go (default fuzz-out/NAME/)")
    ap.add_argument("--max-saves", type=int, default=100, help="most inputs saved per distinct signature")
    ap.add_argument("--repro", nargs="+", metavar="FILE", help="run these saved inputs instead of fuzzing")
    ap.add_argument("--dump-seeds", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dump_seeds:
        with open(args.dump_seeds, "wb") as f:
            pickle.dump(collect_seeds(), f)
        return 0
    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:12} {t.doc}")
        return 0
    if args.target not in TARGETS and args.target != "all":
        ap.error(f"unknown target {args.target!r} (known: {', '.join(TARGETS)}, all)")
    raw = collect_seeds_isolated()
    if args.repro:
        for r in repro(args.target, args.repro, raw):
            print(json.dumps(r))
        return 0
    seed = args.seed if args.seed is not None else int(time.time()) & 0xFFFFFFF
    names = list(TARGETS) if args.target == "all" else [args.target]
    runs = []
    for name in names:
        out = args.out if args.out and len(names) == 1 else os.path.join(args.out or "fuzz-out", name)
        s = fuzz(name, args.seconds, seed, out, raw, args.max_saves)
        runs.append(s)
        if len(names) > 1:
            print(json.dumps(s), flush=True)
    if len(names) == 1:
        print(json.dumps(runs[0]), flush=True)
        return 0
    total = {"target": "all", **{k: sum(r[k] for r in runs) for k in ("inputs", "rejected", "accepted", "other")},
             "seconds": round(sum(r["seconds"] for r in runs), 1), "seed": seed,
             "runs": [{k: r[k] for k in ("target", "inputs", "rejected", "accepted", "other", "seconds")}
                      for r in runs]}
    print(json.dumps(total), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
