"""``kernbin bench``: time to first correct result, from IR vs from the native binary.

Every measurement runs in a fresh Python process (nothing cached in memory
helps). Each worker sets up the device (context, queue) and the inputs first,
then times from the moment the bytes are handed over to the moment the first
result is back on the host; correctness is checked against numpy afterwards.

Three paths, interleaved within each repetition:

``ir``     the runtime's own JIT through the backend's ``load_ir`` (OpenCL:
           ``clCreateProgramWithIL`` + build; Level Zero: ``zeModuleCreate(SPIR-V)``) + kernel +
           launch -- the path every process pays without kernbin;
``native`` kernbin: ``kernbin.load(.knb bytes)`` (container verification, runs-on gate) +
           ``module.kernel`` + ``launch``;
``raw``    the bare device binary through the backend's ``load_binary`` (OpenCL:
           ``clCreateProgramWithBinary`` + build; Level Zero: ``zeModuleCreate(NATIVE)``), none of
           kernbin's checks + kernel + launch -- the floor kernbin's own overhead is measured against.

All three launch through the same launcher, so the differences are the load paths.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

__all__ = ["run_bench", "MODES"]

MODES = ("ir", "native", "raw")


def worker(mode: str, sample_name: str, path: str, target: str) -> dict:
    """One measurement in this (fresh) process. ``path``: .spv, .knb or bare binary."""
    import warnings

    import numpy as np

    import kernbin
    from .samples import SAMPLES
    sample = SAMPLES[sample_name]
    device = kernbin.open_device(target)          # context + queue: set up before timing
    launch = sample.setup(np.random.default_rng())
    with open(path, "rb") as f:
        data = f.read()
    load, read_ir = kernbin.load, kernbin.read_ir   # their modules imported before the clock too
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    if mode == "native":
        module = load(data, device, fallback=False)
    elif mode == "ir":                            # through the backend: the runtime's own JIT
        module = device.load_ir(read_ir(data))
    else:                                         # bare binary, none of kernbin's checks
        module = device.load_binary(data)
    if device.target.backend == "cuda":           # same kernels as CUDA C: shared memory in the config
        config, args = launch.cuda_args()
        module.kernel(sample.kernel).launch(config, *args)
    else:
        module.kernel(sample.kernel).launch(launch.global_size, launch.local_size, *launch.args)
    seconds = time.perf_counter() - t0
    return {"mode": mode, "sample": sample_name, "seconds": seconds, "correct": launch.correct()}


def _spawn(mode, name, path, target) -> dict:
    cmd = [sys.executable, "-m", "kernbin.bench", mode, name, path, target]
    env = dict(os.environ)
    if target.startswith("cuda:"):
        env["CUDA_CACHE_DISABLE"] = "1"           # the PTX path pays the driver's JIT every time, as cold
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        from .errors import KernbinError
        raise KernbinError(f"bench worker ({mode} {name}) failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(target: str = "opencl:cpu", repeat: int = 5, samples=None, progress=None) -> dict:
    """Build every sample once, then measure each path ``repeat`` times in fresh processes."""
    import kernbin
    from .samples import SAMPLES
    names = list(samples or SAMPLES)
    device = kernbin.open_device(target)
    results = {n: {m: [] for m in MODES} for n in names}
    correct = {n: True for n in names}
    with tempfile.TemporaryDirectory(prefix="kernbin-bench-") as tmp:
        paths = {}
        cuda = device.target.backend == "cuda"
        for n in names:
            ir_path = SAMPLES[n].ptx if cuda else SAMPLES[n].spv
            native = kernbin.build(ir_path, device)
            knb, raw = os.path.join(tmp, f"{n}.knb"), os.path.join(tmp, f"{n}.bin")
            native.without_ir().save(knb)
            with open(raw, "wb") as f:
                f.write(native.binary)
            paths[n] = {"ir": ir_path, "native": knb, "raw": raw}
        for r in range(repeat):
            for n in names:
                for m in MODES:
                    res = _spawn(m, n, paths[n][m], target)
                    results[n][m].append(res["seconds"])
                    correct[n] &= bool(res["correct"])
                    if progress:
                        progress()
    rows = []
    for n in names:
        med = {m: statistics.median(results[n][m]) for m in MODES}
        rows.append({"name": n, "ir_s": med["ir"], "native_s": med["native"], "raw_native_s": med["raw"],
                     "ratio": med["ir"] / med["native"], "overhead": med["native"] / med["raw"],
                     "correct": correct[n], "runs": results[n]})
    sum_ir = sum(r["ir_s"] for r in rows)
    sum_native = sum(r["native_s"] for r in rows)
    sum_raw = sum(r["raw_native_s"] for r in rows)
    return {"target": target, "device": device.id.describe(), "repeat": repeat, "kernels": rows,
            "ratio": sum_ir / sum_native, "native_over_raw": sum_native / sum_raw}


def plot(report: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import KernbinError
        raise KernbinError("--plot needs matplotlib: pip install 'kernbin[plot]'") from None
    import numpy as np
    rows = report["kernels"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    w = 0.27
    for i, (key, label) in enumerate((("ir_s", "from IR (SPIR-V build)"), ("native_s", "kernbin native"),
                                      ("raw_native_s", "raw binary load"))):
        vals = [r[key] * 1e3 for r in rows]
        bars = ax.bar(x + (i - 1) * w, vals, w, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [r["name"] for r in rows])
    ax.set_ylabel("time to first correct result (ms, log)")
    ax.set_title(f"kernbin bench {report['target']} — {report['device']}\n"
                 f"IR/native {report['ratio']:.1f}x, native/raw {report['native_over_raw']:.2f}x, "
                 f"median of {report['repeat']} fresh processes", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    mode, name, path, target = sys.argv[1:5]
    print(json.dumps(worker(mode, name, path, target)))
