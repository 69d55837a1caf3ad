#!/usr/bin/env python3
"""Local store put/get at 1 000 and 100 000 entries, side by side: does the cost depend on the count?

    python benchmarks/cache_scale.py [--counts 1000,100000] [--binary 1000] [--samples 400]
                                     [--jobs N] [--fsync] [--root DIR] [--json]

For each count a fresh store is filled with that many entries (``--binary``-byte binaries,
~1.8 KB ``.knb`` files with a synthetic BuildInfo, like tests/test_cache.py's ``synthetic``),
written through ``LocalStore.put`` itself by ``--jobs`` processes at once (so the usage estimate
is also exercised by concurrent writers). Population skips ``fsync`` unless ``--fsync``: crash
safety is irrelevant for a throwaway store and the fsyncs would dominate the fill time; the
timed puts below always fsync. Then, in one process, each a median over ``--samples`` calls:

  put          LocalStore.put of a new entry, the store under its bound (default 2 GiB)
  put@bound    the same with the bound set to the store's size: every put passes it, so puts
               trigger eviction scans (down to 90 %); the mean shows the amortised scan cost
  get verify   LocalStore.get(touch=False) of random existing entries: open, read, verify
  get          LocalStore.get of the same entries, now with the LRU touch (each entry's first hit in
               a second refreshes its mtime: one more system call, a metadata write)
  get miss     LocalStore.get of an absent key

``--root DIR`` keeps the stores (DIR/<count>) and reuses a store already filled; with ``--skip-bound``
(no eviction) that lets another kernbin be timed on the very same files, e.g. the previous commit:

    git archive HEAD kernbin | tar -x -C /tmp/head
    python benchmarks/cache_scale.py --root /tmp/scale --skip-bound
    PYTHONPATH=/tmp/head python benchmarks/cache_scale.py --root /tmp/scale --skip-bound --samples 20
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time


def _entry(tag: str, size: int):
    from kernbin import BuildInfo, BuildOptions, DeviceId, KernelInfo, NativeBinary, Requirements, Toolchain
    from kernbin.cache import key_for_info
    dev = DeviceId("opencl", "Vendor", "Dev", "x86-64-v3", "1.0", "OpenCL 3.0")
    info = BuildInfo(target="opencl:cpu", toolchain=Toolchain("opencl", "Vendor OpenCL 3.0", "1.0"),
                     requires=Requirements("opencl-runtime", {"device": "Dev", "driver": "1.0"}),
                     ir_kind="spirv", ir_sha256=f"{tag:0>64}"[-64:], options=BuildOptions(), flags=(),
                     binary_format="opencl-cpu-elf", kernels=(KernelInfo("k"),), build_seconds=0.25,
                     device_fingerprint=dev.fingerprint)
    return key_for_info(info), NativeBinary(binary=os.urandom(size), info=info)


def _fill(root: str, start: int, stop: int, size: int, fsync: bool) -> None:
    if not fsync:
        os.fsync = lambda fd: None          # this worker process only
    from kernbin.cache import LocalStore
    store = LocalStore(root)
    for i in range(start, stop):
        store.put(*_entry(f"f{i:x}", size))


def populate(root: str, count: int, size: int, jobs: int, fsync: bool) -> float:
    t0 = time.perf_counter()
    step = -(-count // jobs)
    ps = [mp.Process(target=_fill, args=(root, i, min(count, i + step), size, fsync))
          for i in range(0, count, step)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a filling process failed ({p.exitcode})")
    return time.perf_counter() - t0


def _timed(fn, args_list) -> list[float]:
    out = []
    for args in args_list:
        t0 = time.perf_counter_ns()
        fn(*args)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def measure(root: str, count: int, size: int, samples: int, jobs: int, fsync: bool, bound: bool = True) -> dict:
    from kernbin.cache import LocalStore
    filled = None
    store = LocalStore(root)
    existing = store.entries()
    if len(existing) < count:
        filled = populate(root, count - len(existing), size, jobs, fsync)
        existing = store.entries()
    keys = [e["key"] for e in existing]
    rng = random.Random(1)
    res = {"entries": len(keys), "fill_s": filled, "entry_bytes": existing[0]["size"]}
    os.sync()                               # let the fill's writeback finish before timing anything

    picks = [(k,) for k in rng.sample(keys, min(samples, len(keys)))]   # distinct: each hit refreshes recency
    for k in rng.sample(keys, min(50, len(keys))):
        store.get(k, touch=False)
    res["get_verify_us"] = statistics.median(_timed(lambda k: store.get(k, touch=False), picks))
    t = _timed(store.get, picks)
    assert all(store.get(k, touch=False) is not None for k, in picks[:20])
    res["get_us"] = statistics.median(t)
    absent = [(f"{rng.getrandbits(256):064x}",) for _ in range(samples)]
    res["get_miss_us"] = statistics.median(_timed(store.get, absent))

    tag = f"{time.time_ns():x}"
    new = [_entry(f"n{tag}{i:x}", size) for i in range(samples)]
    t = _timed(store.put, new)
    res["put_us"], res["put_mean_us"] = statistics.median(t), statistics.fmean(t)

    for k, _ in new:                        # back to `count` entries
        store.delete(k)
    if not bound:
        return res
    os.sync()
    bounded = LocalStore(root, max_size=sum(e["size"] for e in store.entries()))
    new = [_entry(f"b{tag}{i:x}", size) for i in range(samples)]
    t = _timed(bounded.put, new)
    res["put_at_bound_us"], res["put_at_bound_mean_us"] = statistics.median(t), statistics.fmean(t)
    res["put_at_bound_max_us"] = max(t)
    res["entries_after"] = len(store.entries())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1000,100000")
    ap.add_argument("--binary", type=int, default=1000, help="binary bytes per entry (default 1000)")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--jobs", type=int, default=max(2, min(16, os.cpu_count() or 2)))
    ap.add_argument("--fsync", action="store_true", help="fsync while filling too (slower)")
    ap.add_argument("--root", help="keep the stores here (DIR/<count>) and reuse filled ones")
    ap.add_argument("--skip-bound", action="store_true", help="no put@bound (it evicts 10 %% of the store)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]

    import kernbin
    results = {}
    for count in counts:
        if args.root:
            root = os.path.join(args.root, str(count))
            results[count] = measure(root, count, args.binary, args.samples, args.jobs, args.fsync,
                                     not args.skip_bound)
        else:
            root = tempfile.mkdtemp(prefix="kernbin-scale-")
            try:
                results[count] = measure(root, count, args.binary, args.samples, args.jobs, args.fsync,
                                     not args.skip_bound)
            finally:
                shutil.rmtree(root, ignore_errors=True)

    report = {"kernbin": os.path.dirname(kernbin.__file__), "binary_bytes": args.binary, "samples": args.samples,
              "cpus": os.cpu_count(), "results": {str(k): v for k, v in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"kernbin from {report['kernbin']}; {args.binary} B binaries; medians of {args.samples} calls (us)")
    rows = [("entries", "entries", "{:>12,}"), ("entry size (B)", "entry_bytes", "{:>12,}"),
            ("fill (s)", "fill_s", "{:>12.1f}"),
            ("get verify", "get_verify_us", "{:>12.1f}"), ("get (hit)", "get_us", "{:>12.1f}"),
            ("get (miss)", "get_miss_us", "{:>12.1f}"),
            ("put", "put_us", "{:>12.1f}"), ("  mean", "put_mean_us", "{:>12.1f}"),
            ("put@bound", "put_at_bound_us", "{:>12.1f}"), ("  mean", "put_at_bound_mean_us", "{:>12.1f}"),
            ("  max", "put_at_bound_max_us", "{:>12.0f}"),
            ("entries after", "entries_after", "{:>12,}")]
    print(f"{'':16}" + "".join(f"{c:>12,}" for c in counts))
    for label, k, fmt in rows:
        cells = "".join(fmt.format(results[c][k]) if results[c].get(k) is not None else f"{'-':>12}"
                        for c in counts)
        print(f"{label:16}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
