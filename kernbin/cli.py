"""The ``kernbin`` command. Uses the public API only.

Errors print one line (``kernbin: error: ...``) and exit non-zero; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_ERROR = 1
EXIT_NOT_LOADABLE = 2

_EPILOG = """targets: opencl:cpu (Intel CPU runtime, the default), opencl:gpu, opencl:N, level-zero:N,
ocloc:<device>[,<device>...] (offline Intel GPU builds, e.g. ocloc:pvc; several devices make one fat
binary whose member is chosen at load); see `kernbin devices`.
environment: KERNBIN_CACHE_DIR (cache directory), KERNBIN_CACHE_MAX_SIZE (e.g. 2G),
KERNBIN_REMOTE (redis://host:port/db), KERNBIN_CACHE_HMAC_KEY (sign/verify remote entries)."""


def _console(stderr=False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# -- commands ------------------------------------------------------------------

def cmd_devices(args) -> int:
    import kernbin
    devices = kernbin.list_devices()
    if args.json:
        _print_json([d.to_json() for d in devices])
        return 0
    if not devices:
        print("no devices found. For the CPU OpenCL runtime: pip install intel-opencl-rt intel-cmplr-lib-rt")
        return 0
    t = _table("target", "type", "name", "arch", "driver", "IR")
    for d in devices:
        spirv = d.to_json().get("spirv", [])
        ir = d.details.get("ir") or (f"SPIR-V <={spirv[-1]}" if spirv else f"[red]{d.note}[/]")
        t.add_row(d.target, d.type, d.id.name, d.id.arch, d.id.driver_version or "-", ir)
    _console().print(t)
    return 0


def _table(*columns, title=None):
    """A table whose cells wrap instead of being cut: identifiers stay whole at 80 columns and in logs."""
    from rich.table import Table
    t = Table(box=None, title=title, pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def cmd_build(args) -> int:
    import kernbin
    ir = kernbin.read_ir(args.input)
    targets = [str(kernbin.parse_target(t)) for t in (args.target or ["opencl:cpu"])]
    if len(set(targets)) != len(targets):
        raise kernbin.TargetError("a --target is given twice", next(t for t in targets if targets.count(t) > 1))
    if len(targets) == 1:
        outputs = {targets[0]: args.output}
    else:   # several targets: -o names a directory, one .knb per target
        os.makedirs(args.output, exist_ok=True)
        stem = os.path.splitext(os.path.basename(args.input))[0]
        outputs = {t: os.path.join(args.output, f"{stem}.{t.replace(':', '-')}.knb") for t in targets}
    kw = dict(grf=args.grf, spill_threshold=args.spill_threshold)
    if len(targets) == 1:
        t = targets[0]
        results = {t: kernbin.get_or_build_ex(ir, t, args.options, **kw) if not args.no_cache
                   else (kernbin.build(ir, t, args.options, **kw), False)}
    elif sys.stderr.isatty() and not args.json:
        from rich.progress import Progress
        with Progress(console=_console(stderr=True), transient=True) as prog:
            task = prog.add_task(f"building for {len(targets)} targets", total=len(targets))
            results = kernbin.build_many(ir, targets, args.options, jobs=args.jobs, use_cache=not args.no_cache,
                                         progress=lambda t: prog.advance(task), **kw)
    else:
        results = kernbin.build_many(ir, targets, args.options, jobs=args.jobs, use_cache=not args.no_cache, **kw)
    report = []
    for t, (native, hit) in results.items():
        if args.no_ir:
            native = native.without_ir()
        native.save(outputs[t])
        info = native.info
        report.append({"output": outputs[t], "target": info.target, "sha256": native.sha256,
                       "bytes": len(native.binary), "kernels": list(native.kernel_names),
                       "build_seconds": info.build_seconds, "cache_hit": hit, "flags": list(info.flags),
                       "runs_on": info.requires.to_json(),
                       "spill_bytes": sum(int(k.attributes.get("spill_bytes", 0)) for k in info.kernels)})
        if not args.json:
            how = "from the cache" if hit else f"built in {info.build_seconds * 1e3:.1f} ms"
            flags = f", flags {info.flags_text}" if info.flags else ""
            grf = info.register_file
            if grf and len(grf.get("tried", [])) > 1:
                tried = " vs ".join(f"{r['grf']} {r['spill_bytes']} B" for r in grf["tried"])
                flags += f" (--grf auto: spills {tried})"
            print(f"{outputs[t]}: {len(native.binary)} bytes of {info.binary_format}, runs on "
                  f"{info.requires.describe()}; kernels {', '.join(native.kernel_names)} ({how}{flags})")
    if args.json:
        _print_json(report[0] if len(report) == 1 else report)
    return 0


_SHORT = {"max_work_group_size": "max wg", "preferred_work_group_size_multiple": "wg multiple",
          "private_mem_size": "private B", "local_mem_size": "local B", "num_args": "args",
          "grf_count": "GRF", "simd_size": "SIMD", "slm_size": "SLM B", "scratch_size": "scratch B",
          "spill_bytes": "spill B", "barrier_count": "barriers", "has_dpas": "DPAS", "private_size": "private B",
          "code_size": "code B", "registers": "regs", "spill_stores": "spill st B", "spill_loads": "spill ld B",
          "stack_frame": "stack B", "shared": "smem B", "local": "lmem B", "max_threads_per_block": "max thr",
          "ptx_version": "PTX", "binary_version": "SASS"}


def _kernel_table(console, kernels) -> None:
    keys = sorted({k for kern in kernels for k in kern if k != "name"})
    t = _table("kernel", *(_SHORT.get(k, k) for k in keys))
    for kern in kernels:
        t.add_row(kern["name"], *(str(kern.get(k, "")) for k in keys))
    console.print(t)


def cmd_inspect(args) -> int:
    import kernbin
    obj = kernbin.describe_file(args.file)
    if args.json:
        _print_json(obj)
        return 0
    c = _console()
    if obj["kind"] in ("spirv", "ptx"):
        what = f"SPIR-V {obj['version']}" if obj["kind"] == "spirv" else f"PTX {obj['version']} for {obj['target']}"
        c.print(f"[bold]{obj['file']}[/]: {what}, {obj['bytes']} bytes, sha256 {obj['sha256']}")
        c.print("kernels: " + ", ".join(k["name"] for k in obj["kernels"]))
        return 0
    if obj["kind"] == "fat":
        c.print(f"[bold]{obj['file']}[/]: ocloc fat binary, members: "
                + ", ".join(f"{m['member']} (IP {m['ip_version']}, .ze_info {m['ze_info_version']})"
                            for m in obj["members"]))
        return 0
    if obj["kind"] == "opencl-elf":
        c.print(f"[bold]{obj['file']}[/]: Intel CPU OpenCL program binary, {obj['bytes']} bytes, sections "
                + ", ".join(f"{k} {v}" for k, v in obj["container"]["sections"].items()))
        return 0
    if obj["kind"] == "zebin":
        c.print(f"[bold]{obj['file']}[/]: zebin, {obj['bytes']} bytes, notes {obj['notes']}, "
                f"IR {'embedded' if obj['ir_embedded'] else 'not embedded'}")
        _kernel_table(c, obj["kernels"])
        return 0
    tc = obj["toolchain"]
    c.print(f"[bold]{obj['file']}[/]: {obj['binary_format']}, {obj['binary_bytes']} bytes "
            f"(sha256 {obj['sha256']}), target {obj['target']}")
    c.print(f"runs on: {obj['runs_on']}")
    c.print(f"built by: {tc['backend']}, {tc['compiler']}" + (f", driver {tc['driver']}" if tc["driver"] else "")
            + f", on {obj['built_on']}")
    c.print(f"built from {obj['ir']['kind']} {obj['ir']['sha256']} "
            f"({'embedded' if obj['ir']['embedded'] else 'not embedded'}) with flags "
            f"{' '.join(obj['flags']) or '(none)'} in {obj['build_seconds'] * 1e3:.1f} ms")
    _kernel_table(c, obj["kernels"])
    grf = obj.get("register_file")
    if grf:
        tried = "; ".join(f"{r['grf']}: {r['spill_bytes']} B spilled, scratch {r['scratch_size']} B"
                          + (" (chosen)" if r.get("chosen") else "") for r in grf["tried"])
        c.print(f"register file: --grf {grf['mode']} (threshold {grf['spill_threshold']} B): {tried}")
    if "container" in obj:
        secs = ", ".join(f"{k} {v}" for k, v in obj["container"]["sections"].items())
        c.print(f"sections: {secs}")
    return 0


def cmd_check(args) -> int:
    import kernbin
    res = kernbin.check(args.file, args.target, isolate=not args.in_process)
    if args.json:
        _print_json(res)
    elif res["ok"]:
        member = f" (fat-binary member {res['member']})" if res.get("member") else ""
        print(f"ok: {args.file} loads natively on {res['device']}{member}; kernels: "
              + ", ".join(k["name"] for k in res["kernels"]))
    else:
        who = "kernbin refused it before the driver saw it" if res["verdict"] == "gate" else "the driver refused it"
        print(f"not loadable ({who}): {res['reason']}")
    return 0 if res["ok"] else EXIT_NOT_LOADABLE


def _cache():
    import kernbin
    return kernbin.default_cache()


def cmd_cache_stats(args) -> int:
    cache = _cache()
    st = cache.stats()
    if args.json:
        _print_json(st)
        return 0
    t = _table("counter", "value", title=f"kernbin cache at {cache.local.root}")
    for k, v in st.items():
        if k == "bytes" or (k == "max_size" and v):
            v = f"{v} ({_human(v)})"
        t.add_row(k, str(v))
    _console().print(t)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_cache_ls(args) -> int:
    import time
    cache = _cache()
    rows = []
    for e in reversed(cache.local.entries()):     # most recently used first
        native = cache.local.get(e["key"], touch=False) if args.verify else None
        row = {"key": e["key"], "size": e["size"], "last_used": e["last_used"]}
        if args.verify:
            row["valid"] = native is not None
            if native is not None:
                row.update(target=native.info.target, kernels=list(native.kernel_names),
                           device=native.info.built_on)
        rows.append(row)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_used"]))
        extra = ""
        if args.verify:
            extra = f"  {r.get('target', '')} {','.join(r.get('kernels', []))}" if r["valid"] else "  CORRUPT (removed)"
        print(f"{r['key']}  {_human(r['size']):>10}  {when}{extra}")
    if not rows:
        print("(empty)")
    return 0


def cmd_cache_prune(args) -> int:
    from kernbin.cache import parse_size
    cache = _cache()
    limit = parse_size(args.max_size) if args.max_size else cache.local.max_size
    evicted = cache.local.prune(limit)
    if args.json:
        _print_json({"evicted": evicted, "max_size": limit})
    else:
        print(f"evicted {len(evicted)} entries (least recently used first); limit {_human(limit)}")
    return 0


def cmd_cache_clear(args) -> int:
    n = _cache().local.clear()
    print(f"removed {n} entries")
    return 0


def cmd_bench(args) -> int:
    from kernbin.bench import MODES, plot, run_bench
    from kernbin.samples import SAMPLES
    names = args.kernels.split(",") if args.kernels else list(SAMPLES)
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        raise SystemExit(f"kernbin: error: unknown sample kernel(s) {', '.join(unknown)} "
                         f"(have {', '.join(SAMPLES)})")
    total = args.repeat * len(names) * len(MODES)
    if sys.stderr.isatty() and not args.json:
        from rich.progress import Progress
        with Progress(console=_console(stderr=True), transient=True) as prog:
            task = prog.add_task("fresh-process runs", total=total)
            report = run_bench(args.target, args.repeat, names, progress=lambda: prog.advance(task))
    else:
        report = run_bench(args.target, args.repeat, names)
    if args.plot:
        plot(report, args.plot)
    if args.json:
        out = dict(report)
        out["kernels"] = [{k: v for k, v in r.items() if k != "runs"} for r in report["kernels"]]
        _print_json(out)
    else:
        t = _table("kernel", "from IR (ms)", "native (ms)", "raw binary (ms)", "IR/native", "native/raw",
                   "correct", title=f"{report['target']}: {report['device']}, "
                   f"median of {report['repeat']} fresh processes")
        for r in report["kernels"]:
            t.add_row(r["name"], f"{r['ir_s'] * 1e3:.2f}", f"{r['native_s'] * 1e3:.2f}",
                      f"{r['raw_native_s'] * 1e3:.2f}", f"{r['ratio']:.1f}x", f"{r['overhead']:.2f}x",
                      "yes" if r["correct"] else "[red]NO[/]")
        c = _console()
        c.print(t)
        raw = "raw binary load"
        c.print(f"aggregate IR/native: [bold]{report['ratio']:.1f}x[/]; kernbin native vs {raw}: "
                f"{report['native_over_raw']:.2f}x")
        if args.plot:
            c.print(f"plot: {args.plot}")
    return 0 if all(r["correct"] for r in report["kernels"]) else EXIT_ERROR


# -- parser ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kernbin", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile GPU kernels once into native device binaries and load them back with zero JIT.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"kernbin {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("devices", help="list the devices kernbin can build for and load on")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_devices)

    s = sub.add_parser("build", help="build IR into a native binary (.knb)",
                       description="Build SPIR-V into a native device binary and write it as a .knb file "
                                   "(device binary + build info + checksums + the IR, for fallback).")
    s.add_argument("input", help="SPIR-V file (.spv)")
    s.add_argument("--target", "-t", action="append", metavar="TARGET",
                   help="target device (default: opencl:cpu); repeat for several, e.g. -t ocloc:pvc -t ocloc:acm-g10")
    s.add_argument("--output", "-o", required=True,
                   help="output .knb file; with several targets, a directory receiving <input>.<target>.knb each")
    s.add_argument("--grf", choices=["default", "small", "large", "auto"], default="default",
                   help="register-file policy on Intel GPU targets (auto: rebuild with the large register file "
                        "when spills exceed --spill-threshold, keep the build that spills less)")
    s.add_argument("--spill-threshold", type=int, default=None, metavar="BYTES",
                   help="--grf auto retries when the compiler reports more spill than this (default 0: any spill)")
    s.add_argument("--jobs", "-j", type=int, default=None, help="parallel builds for several targets (default: cores)")
    s.add_argument("--options", default="", help='build options passed to the compiler; write --options="-cl-fast-relaxed-math" (with =) since they start with -')
    s.add_argument("--no-ir", action="store_true", help="do not embed the IR (no fallback from this file alone)")
    s.add_argument("--no-cache", action="store_true", help="build even if the cache holds this binary, "
                   "and do not store it")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("inspect", help="show what is inside a .knb, SPIR-V, PTX, zebin or fat-binary file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("check", help="verify a .knb and load it natively on a device",
                       description="Verify integrity and requirements, load natively (no fallback), create "
                                   "every kernel. Exit 0 when it loads natively, 2 with a one-line reason "
                                   "otherwise. --json gives \"verdict\": native | gate (kernbin refused it "
                                   "before the driver saw it) | driver (the driver refused it), and \"reason\".")
    s.add_argument("file")
    s.add_argument("--target", "-t", default="opencl:cpu")
    s.add_argument("--in-process", action="store_true",
                   help="load in this process (default: a child process, so a driver crash is a verdict)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("cache", help="the native-binary cache: stats, ls, prune, clear",
                       description="The local cache at KERNBIN_CACHE_DIR (bounded by KERNBIN_CACHE_MAX_SIZE, "
                                   "default 2G) and, with KERNBIN_REMOTE=redis://host:port/db, a Redis tier.")
    csub = s.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("stats", help="entries, bytes, hits, misses, builds, corrupt, ...")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_stats)
    c = csub.add_parser("ls", help="entries, most recently used first")
    c.add_argument("--verify", action="store_true", help="read and verify each entry (removes corrupt ones)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_ls)
    c = csub.add_parser("prune", help="evict least-recently-used entries down to a size")
    c.add_argument("--max-size", help="e.g. 500M, 2G (default: KERNBIN_CACHE_MAX_SIZE or 2G)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cache_prune)
    c = csub.add_parser("clear", help="remove every local entry")
    c.set_defaults(func=cmd_cache_clear)

    s = sub.add_parser("bench", help="time to first result: build from IR vs load the native binary",
                       description="For each sample kernel, each repetition in a fresh process: time from "
                                   "handing the bytes to the runtime to the first correct result, from IR, "
                                   "from kernbin's native binary, and from the bare binary with none of kernbin's checks.")
    s.add_argument("--target", "-t", default="opencl:cpu")
    s.add_argument("--repeat", "-n", type=int, default=5, help="fresh processes per kernel and path (default 5)")
    s.add_argument("--kernels", help="comma-separated subset of the sample kernels")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--plot", metavar="PNG", help="draw the comparison into this PNG (needs matplotlib)")
    s.set_defaults(func=cmd_bench)
    return p


def _version() -> str:
    from kernbin import __version__
    return __version__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "repeat", 1) < 1:
        print("kernbin: error: --repeat must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        from kernbin.errors import KernbinError
        if args.debug:
            raise
        if isinstance(e, KernbinError):
            msg = str(e)
        elif isinstance(e, OSError):
            msg = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
        else:
            msg = f"{type(e).__name__}: {e} (run with --debug for the traceback)"
        first, *rest = msg.splitlines() or [""]
        print(f"kernbin: error: {first}", file=sys.stderr)
        for line in rest:   # a build log stays readable, but the first line says it all
            print(line, file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
