#!/usr/bin/env python3
"""Triton-made kernels on a CUDA GPU: load cost of PTX (driver JIT) vs kernbin native vs raw cubin.

    python benchmarks/cuda_triton.py [--repeat 7] [--json OUT.json]

Needs a CUDA GPU and Triton (to make the PTX; run where both exist). Steps, all in one run:

1. Triton compiles 9 kernels (vector add, row softmax and a tl.dot matmul, 3 sizes each) for the
   GPU in front of it; kernbin builds each PTX offline into a cubin (nvJitLink, the architecture
   Triton targeted) and saves a ``.knb``.
2. For every repetition and every path, a fresh Python process (which has already imported
   ``cuda.bindings`` and kernbin, initialised the driver and made the context current) loads all
   9 kernels one after the other (a different one first each repetition) and times each load:
   ``ptx``    ``cuModuleLoadData(ptx)`` + ``cuModuleGetFunction`` with ``CUDA_CACHE_DISABLE=1``
              (the driver's JIT, what a cold process pays without a cubin);
   ``native`` ``kernbin.load(.knb bytes)`` (container verification, runs-on gate, load) + the function;
   ``raw``    ``cuModuleLoadData(cubin)`` + ``cuModuleGetFunction`` on the bare cubin.
Per kernel and path: the median of its loads when it was not the process's first (steady state);
separately, the median first load of a process (cold code paths included). Aggregate PTX/native
ratio and kernbin's overhead over raw per kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_WORKER = r"""
import sys, time, json
from cuda.bindings import driver as cu
mode, listing = sys.argv[1], json.loads(sys.argv[2])       # [[path, entry], ...]
cu.cuInit(0)
err, dev = cu.cuDeviceGet(0)
err, ctx = cu.cuDevicePrimaryCtxRetain(dev)
cu.cuCtxSetCurrent(ctx)
import kernbin
device = kernbin.open_device("cuda:0")
from kernbin import api
blobs = [(open(p, "rb").read(), name) for p, name in listing]
out, keep = [], []                # every path keeps its modules loaded (an unload inside a timing is not a load)
for data, name in blobs:
    t0 = time.perf_counter()
    if mode == "native":
        m = kernbin.load(data, device, fallback=False)
        m.kernel(name)
        keep.append(m)
    elif mode == "stages":        # the native path's steps, timed one by one (internal API)
        nb = kernbin.read_native(data)
        t1 = time.perf_counter()
        payload, fit = api._gate(device, nb)
        t2 = time.perf_counter()
        m = device.load_native(nb, payload)
        t3 = time.perf_counter()
        m.kernel(name)
        t4 = time.perf_counter()
        keep.append(m)
        out.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
        continue
    else:
        if mode == "ptx" and not data.endswith(b"\0"):
            data += b"\0"
        err, mod = cu.cuModuleLoadData(data)
        assert int(err) == 0, err
        err, f = cu.cuModuleGetFunction(mod, name.encode())
        assert int(err) == 0, err
        keep.append(mod)
    out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def _kernels():
    from kernbin.samples.triton_kernels import add_kernel, matmul_kernel, softmax_kernel

    out = []
    for block in (256, 1024, 4096):
        out.append((f"add_{block}", add_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                                                 "BLOCK": "constexpr"}, {"BLOCK": block}, 4))
    for block in (1024, 2048, 4096):
        out.append((f"softmax_{block}", softmax_kernel, {"out_ptr": "*fp32", "in_ptr": "*fp32", "stride": "i32",
                                                         "n_cols": "i32", "BLOCK": "constexpr"}, {"BLOCK": block}, 8))
    for bm, bn, bk in ((64, 64, 32), (128, 128, 64), (128, 256, 64)):
        sig = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", **{k: "i32" for k in
               ("M", "N", "K", "sam", "sak", "sbk", "sbn", "scm", "scn")}, "BM": "constexpr", "BN": "constexpr",
               "BK": "constexpr"}
        out.append((f"matmul_{bm}x{bn}x{bk}", matmul_kernel, sig, {"BM": bm, "BN": bn, "BK": bk}, 8))
    return out


def _compile(fn, signature, constexprs, num_warps, cc):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    t0 = time.perf_counter()
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})
    return k, time.perf_counter() - t0


def _spawn(mode, listing):
    env = dict(os.environ, CUDA_CACHE_DISABLE="1")
    p = subprocess.run([sys.executable, "-c", _WORKER, mode, json.dumps(listing)], capture_output=True, text=True,
                       env=env, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"worker {mode} failed: {p.stderr[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", help="write the full report here")
    args = ap.parse_args(argv)
    import kernbin
    dev = kernbin.open_device("cuda:0")
    cc = dev.sm
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernbin-triton-") as tmp:
        files = {}
        for name, fn, sig, consts, warps in _kernels():
            k, compile_s = _compile(fn, sig, consts, warps, cc)
            ptx = k.asm["ptx"]
            ptx = ptx.encode() if isinstance(ptx, str) else ptx
            entry = k.metadata.name
            arch = "sm_%da" % cc if cc >= 90 else "sm_%d" % cc
            ir = kernbin.read_ir(ptx)
            native = kernbin.build(ir, f"cuda:sm_{ir.sm}{ir.arch_suffix}")
            paths = {m: os.path.join(tmp, f"{name}.{m}") for m in ("ptx", "native", "raw")}
            open(paths["ptx"], "wb").write(ptx)
            native.without_ir().save(paths["native"])
            open(paths["raw"], "wb").write(native.binary)
            files[name] = (paths, entry, compile_s, arch, native.info.kernel(entry).attributes)
        names = list(files)
        times = {n: {m: [] for m in ("ptx", "native", "raw")} for n in names}
        first = {m: [] for m in ("ptx", "native", "raw")}
        stages = {}
        for r in range(args.repeat):
            order = names[r % len(names):] + names[:r % len(names)]     # each kernel takes a turn at first
            for m in ("ptx", "native", "raw"):
                secs = _spawn(m, [[files[n][0][m], files[n][1]] for n in order])
                first[m].append(secs[0])
                for n, t in zip(order[1:], secs[1:]):                  # steady state: not the first load
                    times[n][m].append(t)
            for n, t in zip(order[1:], _spawn("stages", [[files[n][0]["native"], files[n][1]] for n in order])[1:]):
                stages.setdefault(n, []).append(t)
        for n, (paths, entry, compile_s, arch, attrs) in files.items():
            med = {m: statistics.median(times[n][m]) for m in times[n]}
            rows.append({"kernel": n, "entry": entry, "triton_compile_s": compile_s, "ptx_s": med["ptx"],
                         "native_s": med["native"], "raw_s": med["raw"], "ratio": med["ptx"] / med["native"],
                         "overhead": med["native"] / med["raw"], "overhead_us": (med["native"] - med["raw"]) * 1e6,
                         "registers": attrs.get("registers"), "runs": times[n]})
    tot = {k: sum(r[f"{k}_s"] for r in rows) for k in ("ptx", "native", "raw")}
    first_med = {m: statistics.median(v) for m, v in first.items()}
    stage_names = ("read+verify", "gate", "cuModuleLoadData", "kernel")
    stage_us = {s: sum(statistics.median(t[i] for t in ts) for ts in stages.values()) / len(stages) * 1e6
                for i, s in enumerate(stage_names)}
    report = {"device": dev.id.describe(), "repeat": args.repeat, "kernels": rows, "first_load_s": first_med,
              "ptx_total_s": tot["ptx"], "native_total_s": tot["native"], "raw_total_s": tot["raw"],
              "ratio": tot["ptx"] / tot["native"], "native_over_raw": tot["native"] / tot["raw"],
              "overhead_us_per_kernel": (tot["native"] - tot["raw"]) / len(rows) * 1e6,
              "native_stages_us_per_kernel": stage_us}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{report['device']}, median of {args.repeat} fresh processes per kernel and path")
    print(f"{'kernel':22s} {'PTX JIT ms':>11s} {'native ms':>10s} {'raw ms':>8s} {'PTX/nat':>9s} {'nat/raw':>8s}")
    for r in rows:
        print(f"{r['kernel']:22s} {r['ptx_s'] * 1e3:11.2f} {r['native_s'] * 1e3:10.3f} {r['raw_s'] * 1e3:8.3f} "
              f"{r['ratio']:8.0f}x {r['overhead']:7.2f}x")
    print(f"{'all':22s} {tot['ptx'] * 1e3:11.2f} {tot['native'] * 1e3:10.3f} {tot['raw'] * 1e3:8.3f} "
          f"{report['ratio']:8.0f}x {report['native_over_raw']:7.2f}x  "
          f"({report['overhead_us_per_kernel']:.1f} us per kernel over raw)")
    print("native path by step (us per kernel, medians): " + ", ".join(f"{k} {v:.1f}" for k, v in stage_us.items()))
    print(f"first load in a fresh process (median over kernels taking turns): PTX {first_med['ptx'] * 1e3:.2f} ms, "
          f"native {first_med['native'] * 1e3:.3f} ms, raw {first_med['raw'] * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
