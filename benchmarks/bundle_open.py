#!/usr/bin/env python3
"""How long a bundle takes to open and to hand out one kernel, as it grows.

    python benchmarks/bundle_open.py [--sizes 10,100,1000,5000] [--repeat 20] [--json]

For each size N: a bundle of N kernels x 3 entries (the CPU OpenCL binary of the vector add and two
ocloc zebins when ocloc is installed, else 3 copies of the CPU entry under distinct build flags),
blobs deduplicated as `write_bundle` does. Timed, medians of --repeat runs in this process:
  open      open_bundle(): map the file, check the prefix and header digest, decode the manifest
  lookup    entries(name) for one kernel (a dictionary lookup, whatever N is)
  native    native(entry): read one blob and check its digest
and the file size. Loading onto a device is the same as for a .knb and is measured by `kernbin bench`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,100,1000,5000")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import kernbin
    from kernbin.bundle import write_bundle
    from kernbin.samples import SAMPLES
    spv = SAMPLES["vadd"].spv
    natives = [kernbin.build(spv, "opencl:cpu").without_ir()]
    try:
        natives += [kernbin.build(spv, t).without_ir() for t in ("ocloc:pvc", "ocloc:acm-g10")]
    except kernbin.KernbinError:
        base = natives[0]
        natives += [dataclasses.replace(base, info=dataclasses.replace(base.info, flags=(f"-D{i}",)))
                    for i in (1, 2)]
    ir = kernbin.read_ir(spv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernbin-bundle-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            path = os.path.join(tmp, f"b{n}.kbin")
            t0 = time.perf_counter()
            write_bundle(path, {f"k{i:06d}": {"ir": ir, "natives": natives} for i in range(n)})
            write_s = time.perf_counter() - t0
            times = {"open": [], "lookup": [], "native": []}
            for r in range(args.repeat):
                t0 = time.perf_counter()
                b = kernbin.open_bundle(path)
                t1 = time.perf_counter()
                entries = b.entries(f"k{(r * 7919) % n:06d}")
                t2 = time.perf_counter()
                b.native(entries[0], with_ir=False)
                t3 = time.perf_counter()
                b.close()
                times["open"].append(t1 - t0)
                times["lookup"].append(t2 - t1)
                times["native"].append(t3 - t2)
            rows.append({"kernels": n, "entries": n * len(natives), "bytes": os.path.getsize(path),
                         "write_s": write_s, **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'kernels':>8} {'entries':>8} {'file':>10} {'open ms':>9} {'lookup ms':>10} {'native ms':>10}")
    for r in rows:
        print(f"{r['kernels']:8d} {r['entries']:8d} {r['bytes'] / 1e6:8.2f}MB {r['open_ms']:9.3f} "
              f"{r['lookup_ms']:10.3f} {r['native_ms']:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
