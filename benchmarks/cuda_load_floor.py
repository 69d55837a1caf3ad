#!/usr/bin/env python3
"""How little a verified cubin load can cost in Python on this host: raw vs a minimal verified load vs
kernbin, per kernel, fresh processes (needs a CUDA GPU and Triton to make the kernels).

    python benchmarks/cuda_load_floor.py [--repeat 9] [--json OUT.json]

``raw``      ``cuModuleLoadData(cubin)`` + ``cuModuleGetFunction`` (no checks);
``minimal``  the least a loader that verifies can do, written inline with no kernbin code: unpack the
             ``.knb`` prefix, BLAKE3 the header and compare, decode it typed (msgspec, only the section
             table and ``requires``), slice and BLAKE3 the native section and compare, check the SM
             rule, then the raw calls;
``kernbin``  ``kernbin.load(.knb bytes, device)`` + ``module.kernel(name)`` (everything kernbin checks).
Each process loads the 9 kernels of ``benchmarks/cuda_triton.py`` in turn; medians exclude a process's
first load. The difference minimal - raw is the floor of verification in Python here; kernbin - minimal
is what kernbin's structure costs on top.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_WORKER = r"""
import sys, time, json
sys.path.insert(0, sys.argv[3])
from cuda.bindings import driver as cu
import kernbin
from _minimal import knb_native
cu.cuInit(0)
device = kernbin.open_device("cuda:0")
mode = sys.argv[1]
items = [(open(p, "rb").read(), n) for p, n in json.loads(sys.argv[2])]
if mode == "raw":
    items = [(kernbin.read_native(d).binary, n) for d, n in items]
sm = device.sm
pc = time.perf_counter
out, keep = [], []
for data, name in items:
    t0 = pc()
    if mode == "kernbin":
        m = kernbin.load(data, device, fallback=False)
        m.kernel(name)
        keep.append(m)
    else:
        b = knb_native(data, sm) if mode == "minimal" else data
        err, mod = cu.cuModuleLoadData(b)
        if int(err):
            raise SystemExit(str(err))
        err, f = cu.cuModuleGetFunction(mod, name.encode())
        if int(err):
            raise SystemExit(str(err))
        keep.append(mod)
    out.append(pc() - t0)
print(json.dumps(out))
"""

MODES = ("raw", "minimal", "kernbin")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cuda_triton
    import kernbin
    dev = kernbin.open_device("cuda:0")
    files = []
    with tempfile.TemporaryDirectory(prefix="kernbin-floor-") as tmp:
        for name, fn, sig, consts, warps in cuda_triton._kernels():
            k, _ = cuda_triton._compile(fn, sig, consts, warps, dev.sm)
            ptx = k.asm["ptx"]
            ir = kernbin.read_ir(ptx.encode() if isinstance(ptx, str) else ptx)
            nb = kernbin.build(ir, f"cuda:sm_{ir.sm}{ir.arch_suffix}")
            path = os.path.join(tmp, name + ".knb")
            nb.without_ir().save(path)
            files.append([path, k.metadata.name])
        runs = {m: [] for m in MODES}
        for r in range(args.repeat):
            order = files[r % len(files):] + files[:r % len(files)]
            for m in MODES:
                p = subprocess.run([sys.executable, "-c", _WORKER, m, json.dumps(order),
                                    os.path.dirname(os.path.abspath(__file__))], capture_output=True, text=True,
                                   timeout=300)
                if p.returncode:
                    raise SystemExit(f"worker {m} failed: {p.stderr[-2000:]}")
                runs[m] += json.loads(p.stdout.strip().splitlines()[-1])[1:]
    med = {m: statistics.median(v) * 1e6 for m, v in runs.items()}
    report = {"device": dev.id.describe(), "repeat": args.repeat, "kernels": len(files), "median_us": med,
              "verify_floor_us": med["minimal"] - med["raw"], "kernbin_over_minimal_us": med["kernbin"] - med["minimal"],
              "kernbin_over_raw_us": med["kernbin"] - med["raw"], "runs_us": {m: [x * 1e6 for x in v] for m, v in runs.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{report['device']}: per kernel load, median of {len(runs['raw'])} loads in fresh processes")
    for m in MODES:
        print(f"  {m:8s} {med[m]:8.1f} us")
    print(f"  verification floor (minimal - raw) {report['verify_floor_us']:.1f} us; kernbin over minimal "
          f"{report['kernbin_over_minimal_us']:.1f} us; kernbin over raw {report['kernbin_over_raw_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
