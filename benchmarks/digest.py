#!/usr/bin/env python3
"""Digest speed at 4 KB, 100 KB, 1 MB and 10 MB, single thread: which hash should the container use?

    python benchmarks/digest.py [--budget 0.4] [--json]

Each cell is the median of many one-shot digests (``hashlib.new(name, data).digest()`` or
``blake3.blake3(data).digest()``: what a reader pays per section) of the same random buffer,
in microseconds, and the throughput that median implies. BLAKE3 runs with its default of
one thread (``max_threads=1``). ``crc32`` is a non-cryptographic floor, for reference only:
it cannot be the format's digest (anyone can forge a matching CRC).

A second table times a whole verified read (``kernbin.container.Container.read``: open,
fstat, reads, prefix, header digest, header JSON and section table or the layout cache,
every section digest) of a 100 KB file with one or two sections and a .knb-sized header,
against a raw open+read of the same file, and then each stage on its own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import zlib

SIZES = (4 << 10, 100_000, 1 << 20, 10 << 20)


def _candidates() -> dict:
    fns = {}
    try:
        import blake3
        fns["blake3"] = lambda b: blake3.blake3(b).digest()
    except ImportError:                      # pragma: no cover - reported in the table
        pass
    for name in ("sha256", "sha512", "sha512_256", "blake2b", "blake2s", "sha3_256"):
        if name in hashlib.algorithms_available:
            fns[name] = (lambda n: lambda b: hashlib.new(n, b).digest())(name)
    fns["sha256"] = lambda b: hashlib.sha256(b).digest()        # the fast constructor
    fns["blake2b"] = lambda b: hashlib.blake2b(b).digest()
    fns["crc32 (not crypto)"] = zlib.crc32
    return fns


def _median_us(fn, data, budget: float) -> float:
    """Median time of one call, in microseconds. Small inputs are timed in batches of calls so
    the timer's own cost does not dominate; the batch size is fixed before timing."""
    fn(data)
    t0 = time.perf_counter_ns()
    fn(data)
    one = max(time.perf_counter_ns() - t0, 1)
    batch = max(1, 20_000 // one)             # ~20 us per sample at least
    samples, end = [], time.perf_counter() + budget
    while len(samples) < 7 or (time.perf_counter() < end and len(samples) < 5000):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn(data)
        samples.append((time.perf_counter_ns() - t0) / batch)
    return statistics.median(samples) / 1e3


def digest_table(budget: float) -> dict:
    fns = _candidates()
    bufs = {n: os.urandom(n) for n in SIZES}
    return {name: {n: _median_us(fn, bufs[n], budget) for n in SIZES} for name, fn in fns.items()}


KNB_MAGIC = b"\x89KNB\r\n\x1a\n"
# the header a real .knb carries (BuildInfo.to_json() of a one-kernel CPU build): ~750 bytes of JSON
KNB_META = {"kernbin_format": 2, "build": {
    "target": "opencl:cpu", "ir_kind": "spirv", "ir_sha256": "ab" * 32, "options": "",
    "device": {"backend": "opencl", "vendor": "Intel(R) Corporation", "name": "bench", "arch": "x86-64-v3",
               "driver_version": "1.0", "compiler_version": "OpenCL 3.0"},
    "binary_format": "opencl-cpu-elf", "kernels": [{"name": "k", "attributes": {"private_mem_size": 0}}],
    "tools": {}, "build_log": "", "build_seconds": 0.5, "extra": {}}}


def read_table(iters: int) -> dict:
    """Per-read cost of a verified container read (kernbin.container), by shape and by stage."""
    import marshal
    import struct
    from kernbin import container as C
    native, ir = os.urandom(100_000), os.urandom(4096)
    one = C.pack(KNB_MAGIC, 2, KNB_META, [("native", native)])
    two = C.pack(KNB_MAGIC, 2, KNB_META, [("native", native), ("ir", ir)])
    hlen = struct.unpack_from(C.PREFIX_FORMAT, two)[2]
    hbytes = two[C.PREFIX_SIZE:C.PREFIX_SIZE + hlen]
    doc = json.loads(hbytes)
    snapshot = marshal.dumps(doc["meta"])
    with tempfile.TemporaryDirectory(prefix="kernbin-digest-bench-") as d:
        paths = {}
        for name, blob in (("one", one), ("two", two)):
            paths[name] = os.path.join(d, name + ".knb")
            with open(paths[name], "wb") as f:
                f.write(blob)

        def raw():
            with open(paths["two"], "rb") as f:
                return f.read()

        def read(which, cold=False):
            def fn():
                if cold:
                    C._LAYOUTS.clear()
                with open(paths[which], "rb", buffering=0) as f:
                    c = C.Container.read(f, os.fstat(f.fileno()).st_size, magic=KNB_MAGIC, versions=(2,))
                    return [c.section(n) for n in c.names]
            return fn

        def parse():
            c = C.Container.parse(two, magic=KNB_MAGIC, versions=(2,))
            return c.section("native"), c.section("ir")

        stages = {
            "raw open+read of the 2-section file": raw,
            "Container.read, 1 section (100 KB)": read("one"),
            "Container.read, 2 sections (100 KB + 4 KB)": read("two"),
            "  same, header seen for the first time": read("two", cold=True),
            "Container.parse of bytes, 2 sections": parse,
            "  prefix unpack + checks": lambda: C._check_prefix(two, len(two), KNB_MAGIC, (2,), C.MAX_HEADER),
            "  header digest (%d B)" % hlen: lambda: C.blake3(hbytes).digest(),
            "  strict JSON decode of the header (cold)": lambda: C._decode_header(hbytes),
            "  section table validation (cold)": lambda: C._check_table(doc["sections"], 1),
            "  fresh meta from the layout cache (warm)": lambda: marshal.loads(snapshot),
            "  section digests (100 KB + 4 KB)": lambda: (C.blake3(native).digest(), C.blake3(ir).digest()),
        }
        for fn in stages.values():
            for _ in range(200):
                fn()
        times = {n: [] for n in stages}
        for _ in range(10):                  # interleaved rounds: drift hits every stage alike
            for name, fn in stages.items():
                for _ in range(iters // 10):
                    t0 = time.perf_counter_ns()
                    fn()
                    times[name].append(time.perf_counter_ns() - t0)
        out = {name: statistics.median(v) / 1e3 for name, v in times.items()}
    base = out["raw open+read of the 2-section file"]
    for name in ("Container.read, 1 section (100 KB)", "Container.read, 2 sections (100 KB + 4 KB)",
                 "  same, header seen for the first time"):
        out[f"over raw read: {name.strip()}"] = out[name] - base
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of sampling per cell")
    ap.add_argument("--iters", type=int, default=5000, help="calls per stage of the read table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    table = digest_table(args.budget)
    reads = read_table(args.iters)
    if args.json:
        print(json.dumps({"digest_us": table, "read_us": reads, "cpus": os.cpu_count()}, indent=2))
        return 0
    labels = ("4 KB", "100 KB", "1 MB", "10 MB")
    print("single-thread one-shot digest, median us (GB/s)")
    print(f"{'':20}" + "".join(f"{lab:>20}" for lab in labels))
    for name, row in sorted(table.items(), key=lambda kv: kv[1][100_000]):
        cells = "".join(f"{row[n]:11.1f} ({n / row[n] / 1e3:5.2f})" for n in SIZES)
        print(f"{name:20}{cells}")
    print("\nverified container read (all section digests checked), median us per call")
    for name, us in reads.items():
        print(f"  {name:60}{us:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
