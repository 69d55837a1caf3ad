#!/usr/bin/env python3
"""Cache hit path vs a raw file read, for a 100 KB native binary; concurrent hit throughput.

    python benchmarks/cache_hit.py [--size 100000] [--iters 3000] [--seconds 2] [--json]

What is timed (each a median over --iters calls, in one process, interleaved in rounds):
  raw_read    open() + read() of the same .knb bytes from a plain file
  cache_hit   Cache.get(key): read, verify every checksum and the key, LRU touch, count the hit
Then P processes (1, 2, 4) each call Cache.get(key) in a loop for --seconds: total hits/s.
No runtime is needed: the entry is a well-formed .knb with a 100 KB binary.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time


def _entry(size: int):
    from kernbin import BuildInfo, BuildOptions, DeviceId, KernelInfo, NativeBinary, Requirements, Toolchain
    from kernbin.cache import key_for_info
    dev = DeviceId("opencl", "Intel(R) Corporation", "bench", "x86-64-v3", "1.0", "OpenCL 3.0")
    info = BuildInfo(target="opencl:cpu", toolchain=Toolchain("opencl", "Intel(R) OpenCL 3.0", "1.0"),
                     requires=Requirements("opencl-runtime", {"device": "bench", "driver": "1.0"}),
                     ir_kind="spirv", ir_sha256="ab" * 32, options=BuildOptions(), flags=(),
                     binary_format="opencl-cpu-elf", kernels=(KernelInfo("k", {"private_mem_size": 0}),),
                     build_seconds=0.5, device_fingerprint=dev.fingerprint)
    return key_for_info(info), NativeBinary(binary=os.urandom(size), info=info)


def _hammer(root: str, key: str, seconds: float, start: float, out) -> None:
    from kernbin.cache import Cache, LocalStore
    cache = Cache(LocalStore(root))
    while time.time() < start:
        time.sleep(0.0005)
    n, end = 0, start + seconds
    while time.time() < end:
        assert cache.get(key) is not None
        n += 1
    out.put(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--size", type=int, default=100_000, help="binary size in bytes (default 100000)")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from kernbin.cache import Cache, LocalStore
    with tempfile.TemporaryDirectory(prefix="kernbin-cache-bench-") as root:
        key, native = _entry(args.size)
        cache = Cache(LocalStore(root))
        cache.put(key, native)
        raw_path = os.path.join(root, "raw.knb")
        with open(raw_path, "wb") as f:
            f.write(native.to_bytes())

        def raw():
            with open(raw_path, "rb") as f:
                return f.read()

        timings = {"raw_read": [], "cache_hit": []}
        fns = {"raw_read": raw, "cache_hit": lambda: cache.get(key)}
        for _ in range(50):
            for fn in fns.values():
                fn()
        rounds = 10
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(args.iters // rounds):
                    t0 = time.perf_counter_ns()
                    fn()
                    timings[name].append(time.perf_counter_ns() - t0)
        med = {k: statistics.median(v) / 1e3 for k, v in timings.items()}
        entry_bytes = os.path.getsize(cache.local.path(key))

        throughput = {}
        for procs in (1, 2, 4):
            q = mp.Queue()
            start = time.time() + 1.0
            ps = [mp.Process(target=_hammer, args=(root, key, args.seconds, start, q)) for _ in range(procs)]
            for p in ps:
                p.start()
            total = sum(q.get() for _ in ps)
            for p in ps:
                p.join()
            throughput[procs] = total / args.seconds
        st = cache.stats()

    report = {"binary_bytes": args.size, "entry_bytes": entry_bytes, "raw_read_us": med["raw_read"],
              "cache_hit_us": med["cache_hit"], "overhead_us": med["cache_hit"] - med["raw_read"],
              "goal_overhead_us": 25, "hits_per_s": {str(k): v for k, v in throughput.items()},
              "cpus": os.cpu_count(), "counted_hits": st["hits"]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"entry: {args.size} B binary, {entry_bytes} B .knb; medians of {args.iters} calls")
        print(f"  raw file read      {med['raw_read']:8.1f} us")
        print(f"  cache hit          {med['cache_hit']:8.1f} us  (verify all checksums + key, LRU touch, count)")
        print(f"  overhead           {report['overhead_us']:8.1f} us  (goal <= 25 us)")
        for procs, rate in throughput.items():
            print(f"  {procs} process(es)     {rate:10.0f} hits/s total  ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
