#!/usr/bin/env python3
"""Bundles at scale: open time, and loading one kernel from a bundle vs from its own .knb.

    python benchmarks/bundle.py [--sizes 1000,10000] [--repeat 30] [--json]

For each size N, a bundle of N kernels, each with its own distinct 20 KB binary blob and its IR
(synthetic bytes with a real BuildInfo shape: what is timed is kernbin's own work, which does not
depend on what the bytes are), plus one real kernel (the vector add built for the CPU OpenCL
runtime). Printed, medians of --repeat:

  open        open_bundle(): map, prefix, header digest, manifest (kernel names) decoded
  handout     for a kernel not touched before: entries(name) + native(entry) (blob read, digest
              checked) -- against read_native(.knb bytes) of the same binary alone
  load        the real kernel onto opencl:cpu: bundle.load(name) vs kernbin.load(.knb bytes), each
              in a fresh bundle/bytes object, interleaved, alternating which goes first (runtime cost
              included, identical in both)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time


def _synthetic(real, i: int, rnd):
    blob = rnd.randbytes(20_000)
    info = dataclasses.replace(real.info, target="opencl:cpu", ir_sha256=f"{i:064x}",
                               build_seconds=0.01 + i * 1e-6)
    from kernbin import NativeBinary
    return NativeBinary(binary=blob, info=info)


def _load_pair(b, real_knb, dev, bundle_first: bool):
    import kernbin

    def from_bundle():
        t0 = time.perf_counter()
        b.load("vadd", dev).kernel("vadd")
        return time.perf_counter() - t0

    def from_knb():
        t0 = time.perf_counter()
        kernbin.load(real_knb, dev).kernel("vadd")
        return time.perf_counter() - t0
    if bundle_first:
        lb = from_bundle()
        return lb, from_knb()
    lk = from_knb()
    return from_bundle(), lk


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import kernbin
    from kernbin.bundle import write_bundle
    from kernbin.samples import SAMPLES
    dev = kernbin.open_device("opencl:cpu")
    real = kernbin.build(SAMPLES["vadd"].spv, dev)
    real_knb = real.to_bytes()
    rnd = random.Random(7)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernbin-bundle-bench-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            kernels = {"vadd": {"ir": real.ir, "natives": [real.without_ir()]}}
            synth = {}
            for i in range(n - 1):
                nb = _synthetic(real, i, rnd)
                synth[f"k{i:06d}"] = nb
                kernels[f"k{i:06d}"] = {"ir": None, "natives": [nb]}
            path = os.path.join(tmp, f"b{n}.kbin")
            write_bundle(path, kernels)
            t = {"open": [], "handout": [], "read_native": [], "load_bundle": [], "load_knb": []}
            names = list(synth)
            rnd.shuffle(names)
            knbs = {name: synth[name].to_bytes() for name in names[:args.repeat]}
            for r in range(args.repeat):
                t0 = time.perf_counter()
                b = kernbin.open_bundle(path)
                t1 = time.perf_counter()
                name = names[r]
                e = b.entries(name)[0]
                b.native(e, with_ir=False)
                t2 = time.perf_counter()
                kernbin.read_native(knbs[name])
                t3 = time.perf_counter()
                lb, lk = _load_pair(b, real_knb, dev, bundle_first=r % 2 == 0)   # alternate the order
                b.close()
                for k, v in (("open", t1 - t0), ("handout", t2 - t1), ("read_native", t3 - t2),
                             ("load_bundle", lb), ("load_knb", lk)):
                    t[k].append(v)
            med = {k: statistics.median(v) for k, v in t.items()}
            rows.append({"kernels": n, "bytes": os.path.getsize(path), **{f"{k}_us": v * 1e6 for k, v in med.items()}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'kernels':>8} {'file MB':>8} {'open ms':>8} {'handout us':>11} {'.knb read us':>13} "
          f"{'load from bundle ms':>20} {'load .knb ms':>13} {'extra us':>9}")
    for r in rows:
        print(f"{r['kernels']:8d} {r['bytes'] / 1e6:8.1f} {r['open_us'] / 1e3:8.2f} {r['handout_us']:11.1f} "
              f"{r['read_native_us']:13.1f} {r['load_bundle_us'] / 1e3:20.3f} {r['load_knb_us'] / 1e3:13.3f} "
              f"{r['load_bundle_us'] - r['load_knb_us']:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
