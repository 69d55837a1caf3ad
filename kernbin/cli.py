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
KERNBIN_REMOTE (redis://host:port/db and/or http(s)://host:port/prefix, several whitespace-separated;
used only with KERNBIN_CACHE_HMAC_KEY, which signs and verifies its entries), KERNBIN_REMOTE_WAIT
(seconds a host waits for another host's build of the same kernel, default 300, 0 = no fleet leases),
KERNBIN_REMOTE_LEASE_TTL (seconds a dead builder's lease lives, default 10),
KERNBIN_CACHE_ALLOW_SHARED=1 (accept a cache directory others can write),
KERNBIN_TRUSTED_KEYS (public keys: refuse .knb files and bundles not signed by one of them)."""


def _console(stderr=False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, markup=False)   # names from files are never markup


def _safe(text) -> str:
    """Names read from files, fit for a terminal: control characters shown escaped (the console
    interprets no markup, so nothing else can style or move the output)."""
    return _plain(text)


def _plain(text) -> str:
    """Like :func:`_safe`, for print() rather than rich (no markup to escape)."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check_output(path) -> None:
    """Outputs are regular files: refuse a directory, device node, FIFO or socket at ``path`` now,
    before any work (``atomic_write`` refuses it again when it writes)."""
    from kernbin._fs import check_output
    check_output(path)


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
        ir = d.details.get("ir") or (f"SPIR-V <={spirv[-1]}" if spirv else f"{d.note}")
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
        _check_output(args.output)          # before building: a device, FIFO or directory there is refused
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
    sign_key = _private_key(args.sign)
    for t, (native, hit) in results.items():
        if args.no_ir:
            native = native.without_ir()
        if sign_key is not None:
            from kernbin import signing
            from kernbin._fs import atomic_write
            from kernbin.artifact import KNB_MAGIC, KNB_VERSION
            atomic_write(outputs[t], signing.sign(native.to_bytes(), sign_key, magic=KNB_MAGIC,
                                                  versions=(KNB_VERSION,)))
        else:
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
        t.add_row(_safe(kern["name"]), *(_safe(kern.get(k, "")) for k in keys))
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
        c.print(f"{obj['file']}: {what}, {obj['bytes']} bytes, sha256 {obj['sha256']}")
        c.print("kernels: " + ", ".join(_safe(k["name"]) for k in obj["kernels"]))
        return 0
    if obj["kind"] == "fat":
        c.print(f"{obj['file']}: ocloc fat binary, members: "
                + ", ".join(f"{m['member']} (IP {m['ip_version']}, .ze_info {m['ze_info_version']})"
                            for m in obj["members"]))
        return 0
    if obj["kind"] == "bundle":
        c.print(f"{obj['file']}: kernbin bundle, {obj['bytes']} bytes, kernels "
                + ", ".join(_safe(k) for k in obj["kernels"]) + " (details: kernbin bundle inspect)")
        return 0
    if obj["kind"] == "opencl-elf":
        c.print(f"{obj['file']}: Intel CPU OpenCL program binary, {obj['bytes']} bytes, sections "
                + ", ".join(f"{k} {v}" for k, v in obj["container"]["sections"].items()))
        return 0
    if obj["kind"] == "zebin":
        c.print(f"{obj['file']}: zebin, {obj['bytes']} bytes, notes {obj['notes']}, "
                f"IR {'embedded' if obj['ir_embedded'] else 'not embedded'}")
        _kernel_table(c, obj["kernels"])
        return 0
    tc = obj["toolchain"]
    c.print(f"{obj['file']}: {obj['binary_format']}, {obj['binary_bytes']} bytes "
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


def _private_key(path):
    if not path:
        return None
    from kernbin import signing
    return signing.load_private_key(path)


def _trusted(keys):
    if not keys:
        return None
    from kernbin import signing
    return [signing.load_public_key(k) for k in keys]


def _trust_in_force(key_args):
    """``(keys, source)``: the public keys a signature must be by, and where they came from
    (``"--key"``, else ``"KERNBIN_TRUSTED_KEYS"``); ``(None, None)`` when no trust is asked for."""
    if key_args:
        return _trusted(key_args), "--key"
    if os.environ.get("KERNBIN_TRUSTED_KEYS"):
        from kernbin import signing
        return signing.trusted_keys_from_env(), "KERNBIN_TRUSTED_KEYS"
    return None, None


def _key_ids(keys) -> list:
    from kernbin import signing
    return [signing.key_id(k) for k in keys or []]


def _is_bundle(path) -> bool:
    """Whether ``path`` starts like a bundle. Opened non-blocking, and only a regular file is read: a
    FIFO, device or directory is not a bundle (``kernbin.check`` then refuses it, rule ``"not-regular"``)."""
    from kernbin._fs import FileRefused, open_regular
    try:
        fd = open_regular(path)
    except (OSError, FileRefused):
        return False
    try:
        head = os.read(fd, 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    from kernbin.bundle import is_bundle
    return is_bundle(head)


def cmd_check(args) -> int:
    import kernbin
    if _is_bundle(args.file):
        return _check_bundle(args)
    res = kernbin.check(args.file, args.target, isolate=not args.in_process, trusted_keys=_trusted(args.key))
    if args.json:
        _print_json(res)
    elif res["ok"]:
        member = f" (fat-binary member {res['member']})" if res.get("member") else ""
        print(f"ok: {args.file} loads natively on {res['device']}{member}; kernels: "
              + ", ".join(_plain(k["name"]) for k in res["kernels"]))
    else:
        who = "kernbin refused it before the driver saw it" if res["verdict"] == "gate" else "the driver refused it"
        print(f"not loadable ({who}): {res['reason']}")
    return 0 if res["ok"] else EXIT_NOT_LOADABLE


def _check_bundle(args) -> int:
    """Every kernel of a bundle on one target: which entry the gate picks, and whether it loads."""
    import kernbin
    device = kernbin.open_device(args.target)
    keys, source = _trust_in_force(args.key)
    out = {"file": args.file, "target": str(device.target), "device": device.id.describe(), "kernels": {},
           "signed_by": None, "trusted_keys": _key_ids(keys), "trusted_keys_from": source}
    checked = f" (checked against {source})" if source else ""
    try:
        b = kernbin.open_bundle(args.file, trusted_keys=keys, require_signature=keys is not None)
    except kernbin.InvalidBinary as e:
        out.update(ok=False, verdict="gate", rule=e.rule, reason=e.reason)
        if args.json:
            _print_json(out)
        else:
            print(f"not loadable (kernbin refused it before the driver saw it): {e.reason}{checked}")
        return EXIT_NOT_LOADABLE
    from kernbin.loader import check_entry
    with b:
        out["signed_by"] = b.signed_by
        for name in b.names:
            entry, reasons = b.select(name, device)
            if entry is None:
                res = {"ok": False, "verdict": "gate", "entry": None, "reason": "; ".join(reasons)}
            else:
                r = check_entry(b, entry, device, isolate=not args.in_process)
                res = {"ok": r["ok"], "verdict": r["verdict"], "entry": entry.target, "reason": r["reason"],
                       "kernels": r["kernels"]}
            res["candidates"] = reasons
            out["kernels"][name] = res
    out["ok"] = all(k["ok"] for k in out["kernels"].values())
    if args.json:
        _print_json(out)
    else:
        if out["signed_by"]:
            print(f"signed by trusted key {out['signed_by']}{checked}")
        for name, r in out["kernels"].items():
            state = f"ok ({r['entry']})" if r["ok"] else f"not loadable ({r['verdict']}): {r['reason']}"
            print(f"{name}: {state}")
    return 0 if out["ok"] else EXIT_NOT_LOADABLE


def cmd_keygen(args) -> int:
    from kernbin import signing
    priv, pub = signing.generate_key(args.output)
    key = signing.load_public_key(pub)
    if args.json:
        _print_json({"private": priv, "public": pub, "key_id": signing.key_id(key)})
    else:
        print(f"private key: {priv} (keep it secret)\npublic key:  {pub} (key id {signing.key_id(key)}); "
              f"trust it with KERNBIN_TRUSTED_KEYS={pub}")
    return 0


def _bundle_progress(args, total):
    if not (sys.stderr.isatty() and not args.json):
        return None, None
    from rich.progress import Progress
    prog = Progress(console=_console(stderr=True), transient=True)
    task = prog.add_task(f"building {total} binaries", total=total)
    return prog, (lambda t: prog.advance(task))


def cmd_bundle_create(args, add_to=None) -> int:
    import kernbin
    targets = [str(kernbin.parse_target(t)) for t in args.target]
    if len(set(targets)) != len(targets):
        raise kernbin.TargetError("a --target is given twice", next(t for t in targets if targets.count(t) > 1))
    if add_to is None:
        _check_output(args.output)
    prog, progress = _bundle_progress(args, len(targets) * len(args.inputs))
    kw = dict(grf=args.grf, spill_threshold=args.spill_threshold, keep_ir=not args.no_ir, jobs=args.jobs,
              use_cache=not args.no_cache, sign_key=_private_key(args.sign), add_to=add_to, progress=progress,
              executor=args.executor, trust_existing=getattr(args, "trust_existing", False))
    if prog is not None:
        with prog:
            report = kernbin.create_bundle(args.output, args.inputs, targets, args.options, **kw)
    else:
        report = kernbin.create_bundle(args.output, args.inputs, targets, args.options, **kw)
    if args.json:
        _print_json({"output": args.output, "kernels": report})
    else:
        size = os.path.getsize(args.output)
        built = sum(1 for k in report.values() for hit in k.values() if not hit)
        print(f"{args.output}: {len(report)} kernel(s) x {len(targets)} target(s), {size} bytes "
              f"({built} built, {sum(len(k) for k in report.values()) - built} from the cache)"
              + (", signed" if args.sign else ""))
    return 0


def cmd_bundle_add(args) -> int:
    args.output = args.file
    return cmd_bundle_create(args, add_to=args.file)


def cmd_bundle_inspect(args) -> int:
    import kernbin
    with kernbin.open_bundle(args.file, require_signature=False) as b:
        obj = b.describe()
        from kernbin import signing
        obj["signature"] = signing.signature_of(b._c)
    if args.json:
        _print_json(obj)
        return 0
    c = _console()
    sig = obj["signature"]
    c.print(f"{obj['file']}: kernbin bundle, {obj['bytes']} bytes, {len(obj['kernels'])} kernel(s), "
            f"{obj['blobs']} blob(s), made by {obj['created_by']}; "
            + (f"signed by key {sig.get('key_id')}" if sig else "unsigned"))
    t = _table("kernel", "target", "format", "bytes", "runs on", "flags")
    for name, k in obj["kernels"].items():
        for e in k["entries"]:
            t.add_row(_safe(name), _safe(e["target"]), _safe(e["binary_format"]), str(e["bytes"]),
                      _safe(e["runs_on"]), _safe(" ".join(e["flags"])))
        if k["ir"]:
            t.add_row(name, "(IR)", k["ir"]["kind"], str(k["ir"]["bytes"]), "rebuild anywhere its backend runs", "")
    c.print(t)
    return 0


def cmd_bundle_verify(args) -> int:
    import kernbin
    from kernbin import signing
    keys, source = _trust_in_force(args.key)      # --key, else KERNBIN_TRUSTED_KEYS: then a signature is a must
    out = {"file": args.file, "ok": False, "signed_by": None, "reason": "", "rule": "", "trusted": False,
           "trusted_keys": _key_ids(keys), "trusted_keys_from": source}
    try:
        with kernbin.open_bundle(args.file, trusted_keys=keys, require_signature=keys is not None) as b:
            b.verify()
            out.update(ok=True, signed_by=b.signed_by or (signing.signature_of(b._c) or {}).get("key_id"),
                       trusted=keys is not None)
    except kernbin.InvalidBinary as e:
        out.update(reason=e.reason, rule=e.rule)
    checked = f" (checked against {source}: {', '.join(out['trusted_keys']) or 'no keys'})" if source else ""
    if args.json:
        _print_json(out)
    elif out["ok"]:
        who = f"signed by trusted key {out['signed_by']}{checked}" if out["trusted"] else (
            f"signed by {out['signed_by']} (not checked against a trusted key: pass --key or set "
            "KERNBIN_TRUSTED_KEYS)" if out["signed_by"] else "unsigned")
        print(f"ok: every digest matches; {who}")
    else:
        print(f"FAILED ({out['rule']}): {out['reason']}{checked}")
    return 0 if out["ok"] else EXIT_NOT_LOADABLE


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
    if args.plot:
        _check_output(args.plot)
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
                      "yes" if r["correct"] else "NO")
        c = _console()
        c.print(t)
        raw = "raw binary load"
        c.print(f"aggregate IR/native: {report['ratio']:.1f}x; kernbin native vs {raw}: "
                f"{report['native_over_raw']:.2f}x")
        if args.plot:
            c.print(f"plot: {args.plot}")
    return 0 if all(r["correct"] for r in report["kernels"]) else EXIT_ERROR


# -- parser ----------------------------------------------------------------------

def positive_int(text: str) -> int:
    """An argparse type: a positive integer (``-j 0`` or ``-j -1`` is a usage error, not a hang or a
    crash deep inside)."""
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {n}")
    return n


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
    s.add_argument("--jobs", "-j", type=positive_int, default=None,
                   help="parallel builds for several targets (default: cores)")
    s.add_argument("--options", default="", help='build options passed to the compiler; write --options="-cl-fast-relaxed-math" (with =) since they start with -')
    s.add_argument("--no-ir", action="store_true", help="do not embed the IR (no fallback from this file alone)")
    s.add_argument("--no-cache", action="store_true", help="build even if the cache holds this binary, "
                   "and do not store it")
    s.add_argument("--sign", metavar="KEY", help="sign the .knb with this private key (see `kernbin keygen`)")
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
    s.add_argument("--key", action="append", metavar="PUB",
                   help="require a signature by this public key (repeatable; default: KERNBIN_TRUSTED_KEYS if set)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("keygen", help="make an Ed25519 key pair for signing .knb files and bundles",
                       description="Writes the private key to OUT (mode 0600) and the public key to OUT.pub. "
                                   "Sign with `kernbin build --sign OUT` / `kernbin bundle create --sign OUT`; "
                                   "trust with KERNBIN_TRUSTED_KEYS=OUT.pub or --key OUT.pub.")
    s.add_argument("output", metavar="OUT")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("bundle", help="one file with many kernels x targets: create, add, inspect, verify",
                       description="A bundle holds, for every kernel, native binaries for several targets and "
                                   "the IR; the loader picks the entry that runs on the device in front of it. "
                                   "Format: docs/bundle-format.md.")
    bsub = s.add_subparsers(dest="bundle_command", metavar="ACTION")
    bsub.required = True

    def _build_args(b, out_name):
        b.add_argument("--target", "-t", action="append", required=True, metavar="TARGET",
                       help="build every input for this target (repeat)")
        b.add_argument("--options", default="", help='compiler flags, e.g. --options="-cl-mad-enable"')
        b.add_argument("--grf", choices=["default", "small", "large", "auto"], default="default",
                       help="register-file policy on Intel GPU targets")
        b.add_argument("--spill-threshold", type=int, default=None, metavar="BYTES")
        b.add_argument("--jobs", "-j", type=positive_int, default=None, help="parallel builds (default: cores)")
        b.add_argument("--executor", default="process", metavar="process|ray[=ADDRESS]",
                       help="where the builds run: local worker processes (default), or tasks on a Ray cluster "
                            "(ray=HOST:PORT; plain 'ray': RAY_ADDRESS, else the latest cluster started here, else "
                            "a new local one). Each Ray worker builds through its own cache and needs kernbin and "
                            "the same toolchain; its answers are verified here. Needs pip install 'kernbin[ray]'")
        b.add_argument("--no-ir", action="store_true", help="leave the IR out (no rebuild where no binary fits)")
        b.add_argument("--no-cache", action="store_true", help="build even when the cache holds the binary")
        b.add_argument("--sign", metavar="KEY", help="sign the bundle with this private key")
        b.add_argument("--json", action="store_true", help="machine-readable output")

    b = bsub.add_parser("create", help="build inputs for targets into a new bundle")
    b.add_argument("output", metavar="OUT.kbin")
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="IR files (SPIR-V, PTX); the kernel name is the stem")
    _build_args(b, "output")
    b.set_defaults(func=cmd_bundle_create)
    b = bsub.add_parser("add", help="add inputs or targets to an existing bundle (rewritten atomically)")
    b.add_argument("file", metavar="FILE.kbin")
    b.add_argument("inputs", nargs="+", metavar="INPUT")
    _build_args(b, "file")
    b.add_argument("--trust-existing", action="store_true",
                   help="with --sign (or KERNBIN_TRUSTED_KEYS): accept what FILE.kbin holds although it is not "
                        "signed by a trusted key or by the --sign key (by default it must be: signing never "
                        "vouches for bytes it did not check)")
    b.set_defaults(func=cmd_bundle_add)
    b = bsub.add_parser("inspect", help="kernels, targets, sizes, who signed")
    b.add_argument("file")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bundle_inspect)
    b = bsub.add_parser("verify", help="check every digest and the signature; exit 2 on any mismatch")
    b.add_argument("file")
    b.add_argument("--key", action="append", metavar="PUB", help="require a signature by this public key")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bundle_verify)

    s = sub.add_parser("cache", help="the native-binary cache: stats, ls, prune, clear",
                       description="The local cache at KERNBIN_CACHE_DIR (bounded by KERNBIN_CACHE_MAX_SIZE, "
                                   "default 2G) and, with KERNBIN_REMOTE (Redis and/or HTTP URLs), the remote tiers.")
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
    s.add_argument("--repeat", "-n", type=positive_int, default=5,
                   help="fresh processes per kernel and path (default 5)")
    s.add_argument("--kernels", help="comma-separated subset of the sample kernels")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--plot", metavar="PNG", help="draw the comparison into this PNG (needs matplotlib)")
    s.set_defaults(func=cmd_bench)

    from kernbin.triton.cli import add_parser as add_triton_parser     # `kernbin triton compile` (no Triton import)
    add_triton_parser(sub)
    return p


def _version() -> str:
    from kernbin import __version__
    return __version__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
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
