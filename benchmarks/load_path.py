#!/usr/bin/env python3
"""kernbin's load path against the driver's own cost, on any machine: an emulated CUDA driver
(``tools/cuda_emu.py``: ~40 us per module load, CPU caches evicted, GIL released) under kernbin's real
CUDA backend, so a change to the load path is measured before any GPU.

    python benchmarks/load_path.py [--kernels 1,256,1024] [--repeat 7] [--cost-us 40] [--json OUT.json]

Three loaders, each in its own fresh processes, time until every kernel is ready (module loaded,
function handle taken):

``raw``      the loose-binary floor: read each ``.cubin`` file, ``cuModuleLoadData`` + ``cuModuleGetFunction``;
``minimal``  the least a verifying loader can do, no kernbin code (``benchmarks/_minimal.py``, as in
             ``cuda_load_floor.py``): BLAKE3 the header, decode it typed (only the section table / manifest
             and the runs-on fields), BLAKE3 each native blob, the SM rule, then the raw calls;
``kernbin``  ``kernbin.load(path, device).kernel(name)`` per ``.knb``; for a bundle ``open_bundle(path)``, then
             ``load_many(names, device)`` and ``module.kernel(name)`` for every kernel.

Layouts: ``knb`` (N loose ``.knb`` files) and ``bundle`` (one bundle of N kernels; its ``raw`` is still the
loose-cubin floor). The N kernels are one real cubin (built offline with nvJitLink from a sample's PTX) under
N distinct kernel names, so no cache inside kernbin sees the same bytes twice. Each process first loads one
kernel outside the set (imports and one-time set-up are not counted), then the N. Reported: per-kernel
medians over ``--repeat`` processes per cell, the processes of all cells interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASE_NAME = "kbload_00000"

_WORKER = r"""
import sys, time, json, struct
sys.path.insert(0, sys.argv[1])
import cuda_emu
mode, layout, d = sys.argv[2], sys.argv[3], sys.argv[4]
names = json.loads(sys.argv[5])
warm = sys.argv[6]
SM = int(sys.argv[8])
if sys.argv[7] == "real":
    from cuda.bindings import driver as cu
    cu.cuInit(0)
    _, _dev = cu.cuDeviceGet(0)
    _, _ctx = cu.cuDevicePrimaryCtxRetain(_dev)
    cu.cuCtxSetCurrent(_ctx)
    drv = None
else:
    drv = cuda_emu.install(cost_us=float(sys.argv[7]), sm=SM)
    cu = drv
pc = time.perf_counter
if mode == "kernbin":
    import kernbin
    device = kernbin.open_device("cuda:0")
elif mode == "minimal":
    sys.path.insert(0, sys.argv[9])
    from _minimal import bundle_natives, knb_native


def ready(name, image):
    err, mod = cu.cuModuleLoadData(image)
    if int(err):
        raise SystemExit(f"cuModuleLoadData {err!r}")
    err, f = cu.cuModuleGetFunction(mod, name.encode())
    if int(err):
        raise SystemExit(f"cuModuleGetFunction {err!r}")
    return mod, f


def run(names, bundle_path):
    keep = []
    if mode == "raw":
        for n in names:
            with open(f"{d}/cubin/{n}.cubin", "rb") as fh:
                keep.append(ready(n, fh.read()))
    elif mode == "minimal" and layout == "knb":
        for n in names:
            with open(f"{d}/knb/{n}.knb", "rb") as fh:
                keep.append(ready(n, knb_native(fh.read(), SM)))
    elif mode == "minimal":
        with open(bundle_path, "rb") as fh:
            data = fh.read()
        keep.extend(ready(n, b) for n, b in bundle_natives(data, names, SM))
    elif layout == "knb":
        for n in names:
            m = kernbin.load(f"{d}/knb/{n}.knb", device, fallback=False)
            keep.append((m, m.kernel(n)))
    else:
        b = kernbin.open_bundle(bundle_path)
        if hasattr(b, "load_many"):
            got = b.load_many(names, device, fallback=False)
        else:                                     # a kernbin from before load_many (baselines)
            got = {n: b.load(n, device, fallback=False) for n in names}
        for n, m in got.items():
            keep.append((m, m.kernel(n)))
        keep.append(b)
    return keep


run([warm], f"{d}/bundle_warm.kbin")          # imports, decoders, first-call paths: not counted
t0 = pc()
keep = run(names, f"{d}/bundle_{len(names)}.kbin")
took = pc() - t0
assert drv is None or drv.loads == len(names) + 1, drv.loads
print(json.dumps(took))
"""

MODES = ("raw", "minimal", "kernbin")


def _make_kernels(tmp: str, count: int, sm: int = 90) -> list[str]:
    """``count`` distinct kernels (.cubin, .knb, bundles) from one offline build of a sample's PTX."""
    from dataclasses import replace

    import kernbin
    from kernbin.artifact import KernelInfo, NativeBinary
    from kernbin.bundle import write_bundle
    ptx = open(os.path.join(ROOT, "kernbin", "samples", "vadd.ptx"), "rb").read().replace(b"vadd", BASE_NAME.encode())
    base = kernbin.build(kernbin.read_ir(ptx), f"cuda:sm_{sm}")
    attrs = dict(base.info.kernels[0].attributes)
    for sub in ("cubin", "knb"):
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    names, natives = [], {}
    for i in range(count + 1):
        name = f"kbload_{i:05d}"
        binary = base.binary.replace(BASE_NAME.encode(), name.encode())
        nb = NativeBinary(binary, replace(base.info, kernels=(KernelInfo(name, attrs),),
                                          ir_sha256=f"{i:064x}", build_log=""))
        with open(os.path.join(tmp, "cubin", name + ".cubin"), "wb") as f:
            f.write(binary)
        nb.save(os.path.join(tmp, "knb", name + ".knb"))
        names.append(name)
        natives[name] = nb
    warm, names = names[-1], names[:-1]
    write_bundle(os.path.join(tmp, "bundle_warm.kbin"), {warm: {"ir": None, "natives": [natives[warm]]}})
    return names, warm, natives


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="1,256,1024", help="kernel counts (comma-separated)")
    ap.add_argument("--repeat", type=int, default=7, help="processes per cell (medians)")
    ap.add_argument("--cost-us", type=float, default=40.0, help="emulated driver cost per module load")
    ap.add_argument("--layouts", default="knb,bundle")
    ap.add_argument("--driver", choices=["emulated", "real"], default="emulated",
                    help="the emulated driver (any machine) or the real one (cuda:0; --cost-us is ignored)")
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.kernels.split(",")]
    layouts = args.layouts.split(",")
    from kernbin.bundle import write_bundle
    records = []
    sm = 90
    if args.driver == "real":
        import kernbin
        sm = kernbin.open_device("cuda:0").sm
    with tempfile.TemporaryDirectory(prefix="kernbin-load-path-") as tmp:
        names, warm, natives = _make_kernels(tmp, max(counts), sm)
        for n in counts:
            write_bundle(os.path.join(tmp, f"bundle_{n}.kbin"),
                         {k: {"ir": None, "natives": [natives[k]]} for k in names[:n]})
        cells = [(layout, n, mode) for layout in layouts for n in counts for mode in MODES]
        times: dict = {c: [] for c in cells}
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for _ in range(args.repeat):
            for layout, n, mode in cells:
                p = subprocess.run([sys.executable, "-c", _WORKER, os.path.join(ROOT, "tools"), mode, layout, tmp,
                                    json.dumps(names[:n]), warm, args.driver if args.driver == "real" else
                                    str(args.cost_us), str(sm), HERE],
                                   capture_output=True, text=True, env=env)
                if p.returncode:
                    sys.stderr.write(p.stderr)
                    return 1
                times[(layout, n, mode)].append(json.loads(p.stdout.strip().splitlines()[-1]) / n * 1e6)
    print((f"emulated driver: {args.cost_us:g} us per module load" if args.driver == "emulated" else
           f"real driver, sm_{sm}") + f"; per-kernel medians of {args.repeat} fresh processes (us)")
    print(f"{'layout':7} {'kernels':>7} {'raw':>8} {'minimal':>8} {'kernbin':>8} {'kb-min':>7} {'kb/raw':>7}")
    for layout in layouts:
        for n in counts:
            med = {m: statistics.median(times[(layout, n, m)]) for m in MODES}
            rec = {"driver": args.driver, "layout": layout, "kernels": n, "raw_us": round(med["raw"], 2),
                   "minimal_us": round(med["minimal"], 2), "kernbin_us": round(med["kernbin"], 2),
                   "samples_us": {m: [round(t, 2) for t in times[(layout, n, m)]] for m in MODES}}
            records.append(rec)
            print(f"{layout:7} {n:>7} {med['raw']:>8.1f} {med['minimal']:>8.1f} {med['kernbin']:>8.1f} "
                  f"{med['kernbin'] - med['minimal']:>+7.1f} {med['kernbin'] / med['raw']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
