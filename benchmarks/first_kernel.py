#!/usr/bin/env python3
"""A fresh process to one loaded kernel from a bundle, on the CPU OpenCL runtime: kernbin vs plain
pyopencl on the same native binary, whole processes (interpreter start and imports included).

    python benchmarks/first_kernel.py [--repeat 7] [--kernel vadd] [--json OUT.json]

``pyopencl``  ``import pyopencl``; a context on the CPU device; ``Program(ctx, [dev], [binary]).build()``;
              the kernel object (the binary read from a plain file: no checks at all);
``kernbin``   ``import kernbin``; ``open_bundle(path).load(name, "opencl:cpu").kernel(name)`` (digests,
              the runs-on gate, the same runtime calls).
Both processes point the ICD loader at Intel's CPU runtime the same way (``OCL_ICD_VENDORS``, set
here as kernbin would), and both import from cached bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped
for them; a warm-up run of each writes it). Medians of ``--repeat`` processes each, the two interleaved; also the
``python -X importtime`` total of kernbin's own modules on that path.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_PLAIN = r"""
import sys
import pyopencl as cl
dev = next(d for p in cl.get_platforms() for d in p.get_devices() if d.type & cl.device_type.CPU)
ctx = cl.Context([dev])
binary = open(sys.argv[1], "rb").read()
prg = cl.Program(ctx, [dev], [binary]).build()
getattr(prg, sys.argv[2])
"""

_KERNBIN = r"""
import sys
import kernbin
with kernbin.open_bundle(sys.argv[1]) as b:
    m = b.load(sys.argv[2], "opencl:cpu", fallback=False)
    m.kernel(sys.argv[2])
"""


def _run(code: str, args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one child process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--kernel", default="vadd", help="a sample kernel (kernbin/samples/NAME.spv)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    import kernbin
    from kernbin.backends import opencl  # noqa: F401 - wires the ICD loader in this process
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="kernbin-first-") as tmp:
        path = os.path.join(tmp, "k.kbin")
        kernbin.create_bundle(path, [os.path.join(root, "kernbin", "samples", args.kernel + ".spv")],
                              ["opencl:cpu"], use_cache=False)
        with kernbin.open_bundle(path) as b:
            binary = b.native(b.entries(args.kernel)[0], with_ir=False).binary
        raw = os.path.join(tmp, "k.bin")
        with open(raw, "wb") as f:
            f.write(binary)
        env = dict(os.environ)            # OCL_ICD_VENDORS as kernbin set it: the same runtime for both
        env.pop("PYTHONDONTWRITEBYTECODE", None)   # bytecode cached as in any installed deployment
        times = {"pyopencl": [], "kernbin": []}
        cpu = {"pyopencl": [], "kernbin": []}
        _run(_PLAIN, [raw, args.kernel], env)
        _run(_KERNBIN, [path, args.kernel], env)               # warm the file cache, the ICD folder
        for _ in range(args.repeat):
            for name, code, arg in (("pyopencl", _PLAIN, raw), ("kernbin", _KERNBIN, path)):
                wall, used = _run(code, [arg, args.kernel], env)
                times[name].append(wall)
                cpu[name].append(used)
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", _KERNBIN, path, args.kernel],
                           env=env, capture_output=True, text=True, check=True)
    own = sum(int(m.group(1)) for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s*kernbin[.\w]*$",
                                                    p.stderr, re.M))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    report = {"kernel": args.kernel, "repeat": args.repeat, "pyopencl_ms": round(med["pyopencl"], 1),
              "kernbin_ms": round(med["kernbin"], 1), "over_ms": round(med["kernbin"] - med["pyopencl"], 1),
              "kernbin_own_imports_ms": round(own / 1e3, 1),
              "cpu_pyopencl_ms": round(med_cpu["pyopencl"], 1), "cpu_kernbin_ms": round(med_cpu["kernbin"], 1),
              "cpu_over_ms": round(med_cpu["kernbin"] - med_cpu["pyopencl"], 1),
              "samples_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()}}
    print(f"fresh process to a loaded kernel ({args.kernel}, CPU OpenCL runtime), medians of {args.repeat}:")
    print(f"  plain pyopencl  {med['pyopencl']:7.1f} ms")
    print(f"  kernbin bundle  {med['kernbin']:7.1f} ms   ({med['kernbin'] - med['pyopencl']:+.1f} ms; kernbin's own "
          f"modules import in {own / 1e3:.1f} ms)")
    print(f"  CPU time (user + system): pyopencl {med_cpu['pyopencl']:.1f} ms, kernbin {med_cpu['kernbin']:.1f} ms "
          f"({med_cpu['kernbin'] - med_cpu['pyopencl']:+.1f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
