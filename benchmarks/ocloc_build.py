#!/usr/bin/env python3
"""ocloc build times: in-process (libocloc.so) vs the ocloc command, and serial vs parallel.

    python benchmarks/ocloc_build.py [--repeat 3] [--device pvc] [--json]

1. Per kernel, for --device: median of --repeat builds in-process and as a subprocess,
   interleaved, same process, same flags (zebin).
2. All kernels (5 samples + 2 Triton) x 3 devices (pvc, acm-g10, tgllp): wall time
   serially in one process, then in a pool of one worker process per core, then as
   `kernbin build -t ... -t ... -t ...` does it (kernbin.build_many, one IR at a time).
No cache is involved anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ("pvc", "acm-g10", "tgllp")


def _irs() -> dict[str, str]:
    from kernbin.samples import SAMPLES
    irs = {n: s.spv for n, s in SAMPLES.items()}
    for n in ("triton_add", "triton_matmul"):
        irs[n] = os.path.join(ROOT, "tests", "data", "triton", f"{n}.spv")
    return irs


def _one(args):
    spv, device = args
    import kernbin
    t0 = time.perf_counter()
    kernbin.build(spv, f"ocloc:{device}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="pvc")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import ctypes
    import kernbin
    from kernbin.backends.ocloc import Ocloc, OclocDevice, get_ocloc
    from kernbin.target import parse_target
    base = get_ocloc()
    lib = ctypes.CDLL(os.environ.get("KERNBIN_OCLOC_LIB", "libocloc.so"))
    exe = shutil.which("ocloc")
    if exe is None:
        sys.exit("needs the ocloc command on PATH as well as libocloc.so")
    ip = base.ip_version(a.device)
    modes = {"inprocess": Ocloc("inprocess", lib=lib), "subprocess": Ocloc("subprocess", exe=exe)}
    devs = {m: OclocDevice(parse_target(f"ocloc:{a.device}"), oc, a.device, ip) for m, oc in modes.items()}
    irs = {n: kernbin.read_ir(p) for n, p in _irs().items()}
    for d in devs.values():          # warm both paths once (library load, first IGC init)
        d.build(irs["vadd"])
    per_kernel = []
    for name, ir in irs.items():
        times = {m: [] for m in modes}
        for _ in range(a.repeat):
            for m, d in devs.items():
                t0 = time.perf_counter()
                d.build(ir)
                times[m].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        per_kernel.append({"kernel": name, "inprocess_s": med["inprocess"], "subprocess_s": med["subprocess"],
                           "speedup": med["subprocess"] / med["inprocess"]})

    jobs = [(p, d) for p in _irs().values() for d in DEVICES]
    t0 = time.perf_counter()
    for job in jobs:
        _one(job)
    serial = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=cores, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_one, jobs))
    parallel = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in _irs().values():
        kernbin.build_many(p, [f"ocloc:{d}" for d in DEVICES], use_cache=False)
    cli_like = time.perf_counter() - t0

    report = {"device": a.device, "repeat": a.repeat, "per_kernel": per_kernel,
              "builds": len(jobs), "cores": cores, "serial_s": serial, "parallel_s": parallel,
              "parallel_speedup": serial / parallel, "build_many_per_ir_s": cli_like,
              "ocloc_driver": base.driver_version(), "igc": base.igc_version()}
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"ocloc {report['ocloc_driver']}, IGC {report['igc']}; per-kernel build for {a.device}, "
          f"median of {a.repeat}:")
    print(f"  {'kernel':15s} {'in-process':>11s} {'subprocess':>11s} {'speedup':>8s}")
    for r in per_kernel:
        print(f"  {r['kernel']:15s} {r['inprocess_s'] * 1e3:9.1f}ms {r['subprocess_s'] * 1e3:9.1f}ms "
              f"{r['speedup']:7.2f}x")
    print(f"{len(jobs)} builds ({len(irs)} kernels x {len(DEVICES)} devices):")
    print(f"  serial, one process         {serial:6.2f} s")
    print(f"  parallel, {cores} worker processes {parallel:6.2f} s  ({serial / parallel:.2f}x)")
    print(f"  kernbin.build_many per IR   {cli_like:6.2f} s  (what `kernbin build -t a -t b -t c` does)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
