#!/usr/bin/env python3
"""Start-up of Triton kernels from a kernbin bundle (no Triton at deploy time) vs Triton with a warm
cache vs the raw floor, on an NVIDIA GPU. Fresh processes, medians, all paths side by side in one run.

    python benchmarks/triton_start.py [--repeat 7] [--n 256,1024] [--work DIR] [--jobs J] [--json OUT.json]

Setup (cached in --work, default a directory under the system temp dir; rebuilt when Triton, the GPU's SM
or the kernels change): kernbin compiles the kernels ahead of time for the GPU's SM into bundles, in
--jobs worker processes (default: one per core); the same cubins are written out as loose files; Triton's
own cache (``TRITON_CACHE_DIR`` in --work) is warmed by JIT-calling every kernel once, in parallel.

(a) One kernel (vector add, BLOCK 1024), first correct result. Each fresh process imports PyTorch,
    allocates and fills the inputs and synchronises; the clock starts there and stops after the launch
    and a synchronise (the result is checked afterwards):
    ``kernbin``  ``import kernbin.triton`` + ``load(bundle)`` + ``k[grid](x, y, out, n)`` (Triton is made
                 unimportable in that process);
    ``triton``   ``import triton`` + the kernel's module + ``add_kernel[grid](x, y, out, n, BLOCK=1024)``,
                 warm cache;
    ``raw``      ``cuda.bindings``: read the cubin file, ``cuModuleLoadData``, ``cuModuleGetFunction``,
                 ``cuLaunchKernel``.
(b) N distinct specialisations (``add_scaled_kernel`` with N different ``SCALE`` constexprs: N cubins),
    each readied and launched once (into its own output row) in a fresh process, the same three paths;
    the time after each path's imports (and device set-up) is reported too: ``loop``.
(c) Steady-state launch: the one kernel launched 2000 times after 100 warm-up launches in one process per
    path (kernbin's launcher, Triton's own, and ``cuLaunchKernel`` with prebuilt parameters): host time per
    launch.
Targets (issue #11): (a) kernbin <= 0.15 s and >= 5x faster than Triton warm; (b) kernbin <= raw and
>= 30x faster than Triton warm. Needs a CUDA GPU, PyTorch, Triton and cuda-bindings.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 1024
N_ELEMS = 4096                                     # per launch in (b): 4 programs of 1024
SAMPLE = "kernbin.samples.triton_kernels"


def _scale(i: int) -> float:
    return 1.0 + i / 4096.0                        # exactly representable: distinct constexprs, exact results


# -- the measured processes (each a fresh interpreter) ---------------------------------------------------

_PRE = r"""
import sys, time, json
import torch
cfg = json.loads(sys.argv[1])
n, N = cfg["n"], cfg["N"]
g = torch.Generator(device="cuda").manual_seed(cfg["seed"])
x = torch.rand(n, device="cuda", generator=g); y = torch.rand(n, device="cuda", generator=g)
outs = torch.zeros((max(N, 1), n), device="cuda")
torch.cuda.synchronize()
t0 = time.perf_counter()
"""

_POST = r"""
torch.cuda.synchronize()
t1 = time.perf_counter()
if N == 0:
    ok = bool(torch.equal(outs[0], x + y))
else:
    scales = torch.tensor([1.0 + i / 4096.0 for i in range(N)], device="cuda")[:, None]
    ok = bool(torch.allclose(outs, x[None, :] + y[None, :] * scales, rtol=1e-6, atol=1e-6))   # FMA in the kernel
print(json.dumps({"total": t1 - t0, "loop": t1 - t_loop, "ok": ok}))
"""

_KERNBIN = r"""
sys.modules["triton"] = None                       # deploy time: Triton cannot even be imported
import kernbin.triton as kt
ks = kt.load(cfg["bundle"])
ks.device()
t_loop = time.perf_counter()
grid = ((n + 1023) // 1024,)
if N == 0:
    ks["add"][grid](x, y, outs[0], n)
else:
    for i in range(N):
        ks[f"s{i}"][grid](x, y, outs[i], n)
"""

_TRITON = r"""
import triton
from kernbin.samples import triton_kernels as tk
t_loop = time.perf_counter()
grid = ((n + 1023) // 1024,)
if N == 0:
    tk.add_kernel[grid](x, y, outs[0], n, BLOCK=1024)
else:
    for i in range(N):
        tk.add_scaled_kernel[grid](x, y, outs[i], n, SCALE=1.0 + i / 4096.0, BLOCK=1024)
"""

_RAW = r"""
import ctypes, os
from cuda.bindings import driver as cu
cu.cuInit(0)
err, ctx = cu.cuCtxGetCurrent()
t_loop = time.perf_counter()
grid = (n + 1023) // 1024
block = cfg["block"]
files = [cfg["raw_one"]] if N == 0 else [os.path.join(cfg["raw_dir"], f"s{i}.cubin") for i in range(N)]
stream = torch.cuda.current_stream().cuda_stream
keep = []
for i, path in enumerate(files):
    with open(path, "rb") as f:
        data = f.read()
    err, mod = cu.cuModuleLoadData(data)
    assert int(err) == 0, err
    err, fn = cu.cuModuleGetFunction(mod, cfg["kernel"].encode() if N == 0 else cfg["kernel_many"].encode())
    assert int(err) == 0, err
    vals = [ctypes.c_uint64(x.data_ptr()), ctypes.c_uint64(y.data_ptr()), ctypes.c_uint64(outs[i].data_ptr()),
            ctypes.c_int32(n), ctypes.c_uint64(0), ctypes.c_uint64(0)]
    params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    err, = cu.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, stream, ctypes.addressof(params), 0)
    assert int(err) == 0, err
    keep.append((mod, vals, params))
"""


# (c) steady-state launch cost: the same kernel launched L times after 100 warm-up launches, host time
# per launch (the kernel is tiny: enqueueing, not the GPU, bounds the loop)
_LAUNCH_KERNBIN = r"""
sys.modules["triton"] = None
import kernbin.triton as kt
k = kt.load(cfg["bundle"])["add"]
grid = ((n + 1023) // 1024,)
for _ in range(100):
    k[grid](x, y, outs[0], n)
torch.cuda.synchronize()
t_loop = time.perf_counter()
for _ in range(cfg["launches"]):
    k[grid](x, y, outs[0], n)
"""

_LAUNCH_TRITON = r"""
import triton
from kernbin.samples import triton_kernels as tk
grid = ((n + 1023) // 1024,)
for _ in range(100):
    tk.add_kernel[grid](x, y, outs[0], n, BLOCK=1024)
torch.cuda.synchronize()
t_loop = time.perf_counter()
for _ in range(cfg["launches"]):
    tk.add_kernel[grid](x, y, outs[0], n, BLOCK=1024)
"""

_LAUNCH_RAW = r"""
import ctypes
from cuda.bindings import driver as cu
cu.cuInit(0)
with open(cfg["raw_one"], "rb") as f:
    err, mod = cu.cuModuleLoadData(f.read())
err, fn = cu.cuModuleGetFunction(mod, cfg["kernel"].encode())
stream = torch.cuda.current_stream().cuda_stream
vals = [ctypes.c_uint64(x.data_ptr()), ctypes.c_uint64(y.data_ptr()), ctypes.c_uint64(outs[0].data_ptr()),
        ctypes.c_int32(n), ctypes.c_uint64(0), ctypes.c_uint64(0)]
params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
addr, grid, block = ctypes.addressof(params), (n + 1023) // 1024, cfg["block"]
for _ in range(100):
    cu.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, stream, addr, 0)
torch.cuda.synchronize()
t_loop = time.perf_counter()
for _ in range(cfg["launches"]):
    cu.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, 0, stream, addr, 0)
"""

LAUNCHES = 2000


def _spawn(body: str, cfg: dict, env: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", _PRE + body + _POST, json.dumps(cfg)], capture_output=True,
                       text=True, env=env, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"a measured process failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- setup -----------------------------------------------------------------------------------------------

def _warm_triton(names_scales, env, jobs):
    """JIT-call each kernel once per process share, in parallel, so Triton's cache holds them all."""
    code = r"""
import sys, json, torch
from kernbin.samples import triton_kernels as tk
todo = json.loads(sys.argv[1]); n = 4096
x = torch.rand(n, device="cuda"); y = torch.rand(n, device="cuda"); out = torch.empty_like(x)
for s in todo:
    if s is None:
        tk.add_kernel[(n // 1024,)](x, y, out, n, BLOCK=1024)
    else:
        tk.add_scaled_kernel[(n // 1024,)](x, y, out, n, SCALE=s, BLOCK=1024)
torch.cuda.synchronize()
"""
    shares = [names_scales[i::jobs] for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(s)], env=env) for s in shares if s]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("warming Triton's cache failed")


def setup(work: str, ns: list[int], jobs: int, env: dict) -> dict:
    import torch
    import triton

    import kernbin
    import kernbin.triton as kt
    from kernbin.samples import triton_kernels as tk
    dev = kernbin.open_device(f"cuda:{torch.cuda.current_device()}")
    tag = f"sm{dev.sm}-triton{triton.__version__}-kernbin{kernbin.__version__}"
    base = os.path.join(work, tag)
    os.makedirs(base, exist_ok=True)
    out = {"device": dev.id.describe(), "sm": dev.sm, "tag": tag, "bundles": {}}
    target = f"cuda:sm_{dev.sm}"
    one = os.path.join(base, "one.kbin")
    if not os.path.exists(one):
        kt.compile_bundle(one, [kt.KernelSpec(tk.add_kernel, "*fp32:16, *fp32:16, *fp32:16, i32", {"BLOCK": BLOCK},
                                              4, name="add")], [target], jobs=1)
    out["bundles"][0] = one
    for N in ns:
        path = os.path.join(base, f"many{N}.kbin")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            specs = [kt.KernelSpec(f"{SAMPLE}:add_scaled_kernel", "*fp32:16, *fp32:16, *fp32:16, i32",
                                   {"SCALE": _scale(i), "BLOCK": BLOCK}, 4, name=f"s{i}") for i in range(N)]
            kt.compile_bundle(path, specs, [target], jobs=jobs)
            print(f"setup: {N} specialisations compiled into {path} in {time.perf_counter() - t0:.1f} s "
                  f"({jobs} processes)", file=sys.stderr)
        out["bundles"][N] = path
    # the same cubins as loose files (the raw floor), and the launch facts the raw path needs
    raw_dir = os.path.join(base, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    with kernbin.open_bundle(one) as b:
        (e,) = b.entries(next(n for n in b.names if n.startswith("add.")))
        out["raw_one"] = os.path.join(raw_dir, "add.cubin")
        with open(out["raw_one"], "wb") as f:
            f.write(b.native(e, with_ir=False).binary)
        meta = kt.LaunchMeta.from_json(e.info.extra["triton"])
        out["kernel"], out["block"] = meta.kernel, meta.block
    if ns:
        with kernbin.open_bundle(out["bundles"][max(ns)]) as b:
            for name in b.names:
                (e,) = b.entries(name)
                out["kernel_many"] = kt.LaunchMeta.from_json(e.info.extra["triton"]).kernel
                with open(os.path.join(raw_dir, name.split(".")[0] + ".cubin"), "wb") as f:
                    f.write(b.native(e, with_ir=False).binary)
    out["raw_dir"] = raw_dir
    marker = os.path.join(base, f"triton-warm-{max(ns or [0])}")
    if not os.path.exists(marker):
        t0 = time.perf_counter()
        _warm_triton([None] + [_scale(i) for i in range(max(ns or [0]))], env, jobs)
        open(marker, "w").close()
        print(f"setup: Triton's cache warmed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def _med(runs, key="total"):
    return statistics.median(r[key] for r in runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="fresh processes per path and case (>= 5)")
    ap.add_argument("--n", default="256,1024", help="numbers of specialisations for (b), comma-separated")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "kernbin-triton-start"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the report here (e.g. benchmarks/results/triton_start_h200.json)")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.n.split(",") if x.strip()]
    work = os.path.abspath(args.work)
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(work, "triton-cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_CACHE_MANAGER", None)
    st = setup(work, ns, args.jobs, env)
    report = {"device": st["device"], "repeat": args.repeat, "setup": st["tag"], "a": {}, "b": {}}
    cases = [0] + ns
    runs = {N: {m: [] for m in ("kernbin", "triton", "raw")} for N in cases}
    for r in range(args.repeat):
        for N in cases:
            cfg = {"n": N_ELEMS if N else 1 << 20, "N": N, "seed": 1000 + r, "bundle": st["bundles"][N],
                   "raw_one": st["raw_one"], "raw_dir": st["raw_dir"], "kernel": st["kernel"], "block": st["block"],
                   "kernel_many": st.get("kernel_many", st["kernel"])}
            order = [("kernbin", _KERNBIN), ("triton", _TRITON), ("raw", _RAW)]
            order = order[r % 3:] + order[:r % 3]                   # each path takes a turn at first
            for mode, body in order:
                runs[N][mode].append(_spawn(body, cfg, env))
    launch_runs = {m: [] for m in ("kernbin", "triton", "raw")}
    for r in range(args.repeat):
        cfg = {"n": N_ELEMS, "N": 0, "seed": 2000 + r, "bundle": st["bundles"][0], "raw_one": st["raw_one"],
               "kernel": st["kernel"], "block": st["block"], "launches": LAUNCHES}
        for mode, body in (("kernbin", _LAUNCH_KERNBIN), ("triton", _LAUNCH_TRITON), ("raw", _LAUNCH_RAW)):
            launch_runs[mode].append(_spawn(body, cfg, env))
    report["c"] = {m: {"us_per_launch": _med(v, "loop") / LAUNCHES * 1e6, "correct": all(x["ok"] for x in v),
                       "runs": v} for m, v in launch_runs.items()}
    report["c"]["kernbin_over_triton"] = report["c"]["kernbin"]["us_per_launch"] / report["c"]["triton"]["us_per_launch"]
    for N in cases:
        row = {m: {"total_s": _med(v), "loop_s": _med(v, "loop"), "correct": all(x["ok"] for x in v),
                   "runs": v} for m, v in runs[N].items()}
        k, t, raw = row["kernbin"], row["triton"], row["raw"]
        row["triton_over_kernbin"] = t["total_s"] / k["total_s"]
        row["triton_loop_over_kernbin_loop"] = t["loop_s"] / k["loop_s"]
        row["kernbin_over_raw"] = k["total_s"] / raw["total_s"]
        row["kernbin_loop_over_raw_loop"] = k["loop_s"] / raw["loop_s"]
        if N:
            row["kernbin_us_per_kernel_over_raw_loop"] = (k["loop_s"] - raw["loop_s"]) / N * 1e6
            row["targets"] = {"kernbin_le_raw_total": k["total_s"] <= raw["total_s"],
                              "kernbin_le_raw_loop": k["loop_s"] <= raw["loop_s"],
                              "ge_30x_triton_incl_import": row["triton_over_kernbin"] >= 30,
                              "ge_30x_triton_excl_import": row["triton_loop_over_kernbin_loop"] >= 30}
            report["b"][str(N)] = row
        else:
            row["targets"] = {"le_0.15s": k["total_s"] <= 0.15, "ge_5x_triton": row["triton_over_kernbin"] >= 5}
            report["a"] = row
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{report['device']}: medians of {args.repeat} fresh processes; time after `import torch` + allocation")
    print(f"{'case':>14s} {'path':>8s} {'total ms':>10s} {'after imports ms':>17s} {'correct':>8s}")
    for N in cases:
        row = report["a"] if N == 0 else report["b"][str(N)]
        for m in ("kernbin", "triton", "raw"):
            print(f"{('one kernel' if N == 0 else f'{N} kernels'):>14s} {m:>8s} {row[m]['total_s'] * 1e3:10.2f} "
                  f"{row[m]['loop_s'] * 1e3:17.2f} {str(row[m]['correct']):>8s}")
        print(f"{'':>14s} Triton/kernbin {row['triton_over_kernbin']:.1f}x (after imports "
              f"{row['triton_loop_over_kernbin_loop']:.1f}x), kernbin/raw {row['kernbin_over_raw']:.2f}x "
              f"(after imports {row['kernbin_loop_over_raw_loop']:.2f}x); targets {row['targets']}")
    c = report["c"]
    print(f"steady launch, host time per call ({LAUNCHES} launches after 100, median of {args.repeat}): "
          + ", ".join(f"{m} {c[m]['us_per_launch']:.1f} us" for m in ("kernbin", "triton", "raw"))
          + f" (kernbin/Triton {c['kernbin_over_triton']:.2f}x; correct: "
          + str(all(c[m]["correct"] for m in ("kernbin", "triton", "raw"))) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
