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

_EPILOG = """targets: opencl:cpu (Intel CPU runtime, the default), opencl:gpu, opencl:N, ocloc:<device>
(offline Intel GPU builds, e.g. ocloc:pvc, ocloc:acm-g10, ocloc:tgllp; see `kernbin devices`). Environment: KERNBIN_CACHE_DIR (cache directory), KERNBIN_CACHE_MAX_SIZE
(e.g. 2G), KERNBIN_REMOTE (redis://host:port/db), KERNBIN_CACHE_HMAC_KEY (sign/verify remote entries)."""


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
    from rich.table import Table
    t = Table("target", "type", "name", "arch", "driver", "SPIR-V", "fingerprint", box=None)
    for d in devices:
        spirv = d.to_json().get("spirv", [])
        t.add_row(d.target, d.type, d.id.name, d.id.arch, d.id.driver_version,
                  f"<={spirv[-1]}" if spirv else f"[red]{d.note}[/]", d.id.fingerprint[:8])
    _console().print(t)
    return 0


def cmd_build(args) -> int:
    import kernbin
    ir = kernbin.read_ir(args.input)
    targets = args.target or ["opencl:cpu"]
    if len(set(targets)) != len(targets):
        raise kernbin.KernbinError("a --target is given twice")
    if len(targets) == 1:
        outputs = {targets[0]: args.output}
    else:   # several targets: -o names a directory, one .knb per target
        os.makedirs(args.output, exist_ok=True)
        stem = os.path.splitext(os.path.basename(args.input))[0]
        outputs = {t: os.path.join(args.output, f"{stem}.{t.replace(':', '-')}.knb") for t in targets}
    kw = dict(grf=args.grf, spill_threshold=args.spill_threshold)
    if len(targets) == 1:
        from kernbin.api import get_or_build_ex
        t = targets[0]
        results = {t: get_or_build_ex(ir, t, args.options, **kw) if not args.no_cache
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
                       "build_seconds": info.build_seconds, "cache_hit": hit, "options": info.options,
                       "spill_bytes": sum(int(k.attributes.get("spill_bytes", 0)) for k in info.kernels)})
        if not args.json:
            how = "from the cache" if hit else f"built in {info.build_seconds * 1e3:.1f} ms"
            flags = f", options {info.options}" if info.options else ""
            grf = info.extra.get("grf")
            if grf and len(grf.get("tried", [])) > 1:
                tried = " vs ".join(f"{r['grf']} {r['spill_bytes']} B" for r in grf["tried"])
                flags += f" (--grf auto: spills {tried})"
            print(f"{outputs[t]}: {len(native.binary)} bytes of {info.binary_format} for "
                  f"{info.device.describe()}, kernels {', '.join(native.kernel_names)} ({how}{flags})")
    if args.json:
        _print_json(report[0] if len(report) == 1 else report)
    return 0


def _inspect_obj(path: str) -> dict:
    import kernbin
    from kernbin.formats import zebin
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] in (b"\x03\x02\x23\x07", b"\x07\x23\x02\x03"):
        ir = kernbin.SpirvModule.from_bytes(data)
        return {"file": path, "kind": "spirv", "bytes": len(data), "version": "%d.%d" % ir.version,
                "sha256": ir.sha256, "kernels": [{"name": n} for n in ir.entry_points]}
    if zebin.is_zebin(data):
        z = zebin.parse_zebin(data)
        return {"file": path, "kind": "zebin", "bytes": len(data), "notes": z.notes, "sections": z.sections,
                "ir_embedded": z.has_ir, "kernels": [{"name": k.name, **k.attributes()} for k in z.kernels]}
    if zebin.is_fat(data):
        members = zebin.read_ar(data)
        return {"file": path, "kind": "fat", "bytes": len(data),
                "members": {n: len(b) for n, b in members.items() if not n.startswith("pad_")}, "kernels": []}
    nb = kernbin.NativeBinary.from_bytes(data)
    info = nb.info
    out = {"file": path, "kind": "knb", "bytes": len(data), "target": info.target,
           "binary_format": info.binary_format, "binary_bytes": len(nb.binary), "sha256": nb.sha256,
           "device": info.device.to_json(), "device_fingerprint": info.device.fingerprint,
           "options": info.options, "ir": {"kind": info.ir_kind, "sha256": info.ir_sha256,
                                           "embedded": nb.ir is not None},
           "tools": dict(info.tools), "build_seconds": info.build_seconds,
           "kernels": [{"name": k.name, **k.attributes} for k in info.kernels]}
    if info.extra:
        out["extra"] = dict(info.extra)
    if info.binary_format == "opencl-cpu-elf":
        from kernbin.formats import opencl_elf
        out["container"] = opencl_elf.describe(nb.binary)
    elif info.binary_format == "zebin":
        z = zebin.parse_zebin(nb.binary)
        out["container"] = {"format": "zebin", "sections": z.sections, "notes": z.notes, "ir_embedded": z.has_ir}
    if info.build_log:
        out["build_log"] = info.build_log
    return out


_SHORT = {"max_work_group_size": "max wg", "preferred_work_group_size_multiple": "wg multiple",
          "private_mem_size": "private B", "local_mem_size": "local B", "num_args": "args",
          "grf_count": "GRF", "simd_size": "SIMD", "slm_size": "SLM B", "scratch_size": "scratch B",
          "spill_bytes": "spill B", "barrier_count": "barriers", "has_dpas": "DPAS", "private_size": "private B",
          "code_size": "code B"}


def _kernel_table(console, kernels) -> None:
    from rich.table import Table
    keys = sorted({k for kern in kernels for k in kern if k != "name"})
    t = Table("kernel", *(_SHORT.get(k, k) for k in keys), box=None)
    for kern in kernels:
        t.add_row(kern["name"], *(str(kern.get(k, "")) for k in keys))
    console.print(t)


def cmd_inspect(args) -> int:
    obj = _inspect_obj(args.file)
    if args.json:
        _print_json(obj)
        return 0
    c = _console()
    if obj["kind"] == "spirv":
        c.print(f"[bold]{obj['file']}[/]: SPIR-V {obj['version']}, {obj['bytes']} bytes, sha256 {obj['sha256'][:16]}")
        c.print("kernels: " + ", ".join(k["name"] for k in obj["kernels"]))
        return 0
    if obj["kind"] == "fat":
        c.print(f"[bold]{obj['file']}[/]: ocloc fat binary, members: "
                + ", ".join(f"{n} ({b} B)" for n, b in obj["members"].items()))
        return 0
    if obj["kind"] == "zebin":
        c.print(f"[bold]{obj['file']}[/]: zebin, {obj['bytes']} bytes, notes {obj['notes']}, "
                f"IR {'embedded' if obj['ir_embedded'] else 'not embedded'}")
        _kernel_table(c, obj["kernels"])
        return 0
    d = obj["device"]
    c.print(f"[bold]{obj['file']}[/]: {obj['binary_format']}, {obj['binary_bytes']} bytes "
            f"(sha256 {obj['sha256'][:16]}), target {obj['target']}")
    c.print(f"device: {d['name']} [{d['vendor']}] arch {d['arch']}, driver {d['driver_version']}, "
            f"compiler {d['compiler_version']} (fingerprint {obj['device_fingerprint']})")
    c.print(f"built from {obj['ir']['kind']} {obj['ir']['sha256'][:16]} "
            f"({'embedded' if obj['ir']['embedded'] else 'not embedded'}) with options "
            f"{obj['options'] or '(none)'} in {obj['build_seconds'] * 1e3:.1f} ms")
    _kernel_table(c, obj["kernels"])
    grf = obj.get("extra", {}).get("grf")
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
    res = kernbin.check(args.file, args.target)
    if args.json:
        _print_json(res)
    elif res["ok"]:
        print(f"ok: {args.file} loads natively on {res['device']}; kernels: "
              + ", ".join(k["name"] for k in res["kernels"]))
    else:
        print(f"not loadable: {res['reason']}")
    return 0 if res["ok"] else EXIT_NOT_LOADABLE


def _cache():
    from kernbin.cache import Cache
    return Cache.from_env()


def cmd_cache_stats(args) -> int:
    cache = _cache()
    st = cache.stats()
    if args.json:
        _print_json(st)
        return 0
    from rich.table import Table
    t = Table("counter", "value", box=None, title=f"kernbin cache at {cache.local.root}")
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
                           device=native.info.device.name)
        rows.append(row)
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_used"]))
        extra = ""
        if args.verify:
            extra = f"  {r.get('target', '')} {','.join(r.get('kernels', []))}" if r["valid"] else "  CORRUPT (removed)"
        print(f"{r['key'][:16]}  {_human(r['size']):>10}  {when}{extra}")
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
        from rich.table import Table
        t = Table("kernel", "from IR (ms)", "native (ms)", "raw binary (ms)", "IR/native", "native/raw",
                  "correct", box=None, title=f"{report['target']}: {report['device']}, "
                  f"median of {report['repeat']} fresh processes")
        for r in report["kernels"]:
            t.add_row(r["name"], f"{r['ir_s'] * 1e3:.2f}", f"{r['native_s'] * 1e3:.2f}",
                      f"{r['raw_native_s'] * 1e3:.2f}", f"{r['ratio']:.1f}x", f"{r['overhead']:.2f}x",
                      "yes" if r["correct"] else "[red]NO[/]")
        c = _console()
        c.print(t)
        raw = "raw pyopencl binary load" if report["target"].startswith("opencl") else "raw binary load"
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

    s = sub.add_parser("build", help="build SPIR-V into a native binary (.knb)",
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

    s = sub.add_parser("inspect", help="show what is inside a .knb or .spv file, per kernel")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("check", help="verify a .knb and load it natively on a device",
                       description="Verify integrity and compatibility, load natively (no fallback), list "
                                   "kernels. Exit 0 when it loads natively, 2 with a one-line reason otherwise.")
    s.add_argument("file")
    s.add_argument("--target", "-t", default="opencl:cpu")
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
                                   "from kernbin's native binary, and from the bare binary via raw pyopencl.")
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
