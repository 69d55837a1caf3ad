"""Ahead-of-time: Triton kernels -> kernbin native binaries and bundles (no GPU needed for CUDA).

For each kernel specialisation (:class:`KernelSpec`: the JIT function, its signature with divisibility
hints, its constexpr values, ``num_warps`` / ``num_stages`` / ``num_ctas``) and each CUDA target,
Triton compiles for the SM (``GPUTarget("cuda", sm, 32)``: Triton's bundled ptxas) under kernbin's
pipeline stage (:mod:`kernbin.triton.stage`), so the :class:`~kernbin.artifact.NativeBinary` holds
Triton's cubin, Triton's PTX as its IR, and kernbin's identity: NVIDIA's runs-on rule (an ``sm_90a``
cubin runs on sm_90 only; ``sm_80`` on 8.x), Triton + ptxas as the toolchain, registers and spills.
``BuildInfo.extra["triton"]`` holds the launch metadata (JSON text, :mod:`kernbin.triton._meta`), checked here
against the PTX entry's parameter list and the cubin's own parameter layout before it is written.

In a bundle, each (kernel, target) is its own bundle kernel named ``<name>.<sm>`` (``add_1024.sm_90a``):
Triton's PTX differs per SM and a bundle kernel has one IR, which its entries were built from. The
launcher (:func:`kernbin.triton.load`) groups them back by ``<name>``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import KernbinError, TargetError
from ._meta import APPENDED_PARAMS, FORMAT, MAX_NUM_CTAS, SCALAR_FORMATS, LaunchMeta, json_value, parse_signature

__all__ = ["KernelSpec", "compile", "compile_many", "compile_bundle", "cuda_archs", "variant_name",
           "ptx_params", "resolve_kernel", "check_spec"]

_VARIANT = re.compile(r"(.+)\.(sm_\d{2,3}[af]?)")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,119}")


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation of a Triton kernel to compile.

    ``kernel`` is a ``triton.jit`` function or a reference to one (``"path/to/file.py:name"`` or
    ``"package.module:name"``: what worker processes can import). ``signature``: ``{name: "*fp32:16"}`` or
    Triton AOT's ``"*fp32:16, *fp32:16, i32, 1024"`` (``:16`` divisible by 16, ``:1`` fixed at 1, a
    value: a constexpr); ``constexprs``: ``{name: value}``. ``name`` is the bundle name (default: the
    function's name and a short hash of the specialisation)."""
    kernel: Any
    signature: Any
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    num_ctas: int = 1
    options: dict = field(default_factory=dict)          # other Triton options: maxnreg, enable_fp_fusion, ...
    name: str | None = None

    def reference(self) -> str:
        """The kernel as a string a worker process can import."""
        if isinstance(self.kernel, str):
            return self.kernel
        fn = getattr(self.kernel, "fn", self.kernel)
        mod = sys.modules.get(fn.__module__)
        path = getattr(mod, "__file__", None)
        if fn.__module__ == "__main__" or fn.__module__.startswith("_kernbin_triton_"):
            if not path:
                raise KernbinError(f"kernel {fn.__name__}: its module has no file a worker could load")
            return f"{os.path.abspath(path)}:{fn.__name__}"
        return f"{fn.__module__}:{fn.__qualname__}"

    def to_json(self) -> dict:
        return {"kernel": self.reference(), "signature": self.signature,
                "constexprs": {k: json_value(v) for k, v in self.constexprs.items()}, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "num_ctas": self.num_ctas, "options": dict(self.options),
                "name": self.name}


def resolve_kernel(ref):
    """A ``triton.jit`` function from itself or ``"file.py:name"`` / ``"module:name"``."""
    if not isinstance(ref, str):
        return ref
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise KernbinError(f"kernel reference {ref!r}: use path/to/file.py:name or package.module:name")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        modname = "_kernbin_triton_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        mod = sys.modules.get(modname)
        if mod is None:
            spec = importlib.util.spec_from_file_location(modname, path)
            if spec is None or spec.loader is None:
                raise KernbinError(f"cannot load {path}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            sys.path.insert(0, os.path.dirname(path))
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(modname, None)
                raise
            finally:
                sys.path.remove(os.path.dirname(path))
    else:
        mod = importlib.import_module(target)
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise KernbinError(f"{ref!r}: no {attr!r} there")
    if not hasattr(obj, "arg_names"):
        raise KernbinError(f"{ref!r} is not a triton.jit function")
    return obj


def cuda_archs(targets) -> list[int]:
    """Compute capabilities from kernbin CUDA targets: ``cuda:sm_80``, ``cuda:sm_90a``, ``cuda:sm_80,sm_90``
    (each SM its own entry: Triton's PTX differs per SM), ``cuda:N`` (that live GPU's SM)."""
    from ..formats.cubin import parse_arch
    from ..target import parse_target
    out: list[int] = []
    for t in ([targets] if isinstance(targets, str) else targets):
        tt = parse_target(t)
        if tt.backend != "cuda":
            raise TargetError(f"{t}: Triton CUDA kernels go to cuda:sm_XY targets (Intel: kernbin.triton.xpu)", str(t))
        if tt.selector.isdigit():
            from ..api import open_device
            sms = [open_device(tt).sm]
        else:
            sms = [parse_arch(p)[0] for p in tt.selector.split(",") if p != "ptx"]
        for sm in sms:
            if sm not in out:
                out.append(sm)
    if not out:
        raise TargetError("no CUDA target given", None)
    return out


def variant_name(name: str, target: str) -> str:
    """The bundle kernel name of one target's entry: ``add_1024`` + ``cuda:sm_90a`` -> ``add_1024.sm_90a``."""
    return f"{name}.{target.split(':', 1)[1]}"


# -- PTX signature -----------------------------------------------------------------------------------

_ENTRY = re.compile(rb"\.visible\s+\.entry\s+([A-Za-z_$][\w$]*)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(rb"\.param\s+(?:\.align\s+(\d+)\s+)?\.(u8|u16|u32|u64|b8|b16|b32|b64|s8|s16|s32|s64|f16|f32|"
                    rb"f64)\b[^,\[]*?([A-Za-z_$][\w$]*)\s*(?:\[(\d+)\])?\s*(?:,|$)")
_PTX_SIZE = {b"u8": 1, b"s8": 1, b"b8": 1, b"u16": 2, b"s16": 2, b"b16": 2, b"f16": 2, b"u32": 4, b"s32": 4,
             b"b32": 4, b"f32": 4, b"u64": 8, b"s64": 8, b"b64": 8, b"f64": 8}


def ptx_params(ptx) -> tuple[str, list[int]]:
    """``(entry name, [bytes of each parameter])`` of the PTX's (one) kernel entry."""
    data = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
    m = _ENTRY.search(data)
    if m is None:
        raise KernbinError("no .visible .entry in the PTX")
    sizes = []
    for p in _PARAM.finditer(m.group(2) + b","):
        size = _PTX_SIZE[p.group(2)] * (int(p.group(4)) if p.group(4) else 1)
        sizes.append(size)
    return m.group(1).decode(), sizes


# -- one compile ------------------------------------------------------------------------------------

def _launch_meta(fn, spec: KernelSpec, sig: dict, consts: dict, extra: dict, md: dict, cc: int) -> dict:
    """``BuildInfo.extra["triton"]`` for one compile (see :mod:`kernbin.triton._meta`)."""
    attrs, fixed = extra["attrs"], extra["equal_to_1"]
    args, params = [], []
    for i, name in enumerate(fn.arg_names):
        ty = sig[name]
        if ty == "constexpr":
            if name in fixed:
                args.append({"name": name, "type": fixed[name], "specialised": "equal_to_1", "value": 1})
            else:
                args.append({"name": name, "type": "constexpr", "specialised": "constexpr",
                             "value": json_value(consts[name])})
            continue
        a = {"name": name, "type": ty}
        if (i,) in attrs:
            a["divisibility"] = 16
        args.append(a)
        params.append({"name": name, "type": ty, "size": 8 if ty.startswith("*") else SCALAR_FORMATS[ty][1]})
    params += [{"name": n, "type": "*i8", "size": 8, "appended": True} for n in APPENDED_PARAMS]
    num_ctas = int(md.get("num_ctas", 1) or 1)
    opts = {k: md.get(k) for k in ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion",
                                   "ptx_version", "debug", "default_dot_input_precision", "launch_cooperative_grid",
                                   "launch_pdl", "arch")}
    return {"format": FORMAT, "kernel": md["name"], "source": getattr(fn, "__name__", md["name"]),
            "triton_version": md.get("triton_version", ""), "hash": md.get("hash", ""),
            "target": {"backend": "cuda", "arch": cc, "warp_size": int(md.get("warp_size", 32) or 32)},
            "num_warps": int(md["num_warps"]), "threads_per_warp": int(md.get("warp_size", 32) or 32),
            "num_ctas": num_ctas, "cluster_dims": [num_ctas, 1, 1], "num_stages": int(md.get("num_stages", 0) or 0),
            "shared": int(md.get("shared") or 0), "tmem_size": int(md.get("tmem_size") or 0),
            "launch_cooperative_grid": bool(md.get("launch_cooperative_grid")), "launch_pdl": bool(md.get("launch_pdl")),
            "global_scratch": {"size": int(md.get("global_scratch_size") or 0),
                               "align": int(md.get("global_scratch_align") or 1)},
            "profile_scratch": {"size": int(md.get("profile_scratch_size") or 0),
                                "align": int(md.get("profile_scratch_align") or 1)},
            "args": args, "params": params, "options": {k: json_value(v) for k, v in opts.items()}}


def _check_layout(meta: dict, ptx: str, cubin_layout: dict) -> None:
    """The launch metadata's parameters must be the PTX entry's, and the cubin's layout (sizes)."""
    from ._meta import TritonMetaError
    entry, sizes = ptx_params(ptx)
    want = [p["size"] for p in meta["params"]]
    if entry != meta["kernel"]:
        raise TritonMetaError(f"the PTX entry is {entry!r}, the metadata says {meta['kernel']!r}", "kernel")
    if sizes != want:
        raise TritonMetaError(f"the PTX entry takes parameters of {sizes} bytes, the launch metadata "
                              f"{want} ({[p['name'] for p in meta['params']]})", "params")
    layout = (cubin_layout or {}).get(entry)
    if layout:
        got = [size for _, _, size in layout["params"]]
        if got != want:
            raise TritonMetaError(f"the cubin's parameters are {got} bytes, the launch metadata {want}", "params")
        req = layout.get("reqntid")
        if req and req[0] != meta["num_warps"] * meta["threads_per_warp"]:
            raise TritonMetaError(f"the cubin requires {req[0]} threads per block, the metadata says "
                                  f"{meta['num_warps']} x {meta['threads_per_warp']}", "num_warps")
    LaunchMeta.from_json(meta)                     # what the launcher will read back must parse


def _ref_text(spec: KernelSpec) -> str:
    if isinstance(spec.kernel, str):
        return repr(spec.kernel)
    return repr(getattr(getattr(spec.kernel, "fn", spec.kernel), "__name__", spec.kernel))


def _triton_options() -> frozenset:
    """The option names Triton's CUDA backend defines (``CUDAOptions``' fields)."""
    import dataclasses

    from triton.backends.nvidia.compiler import CUDAOptions
    return frozenset(f.name for f in dataclasses.fields(CUDAOptions))


def check_spec(spec: KernelSpec) -> None:
    """What can be refused before compiling: ``num_warps`` a power of two, ``num_ctas`` 1..16,
    ``num_stages`` >= 0, option names Triton's ``CUDAOptions`` defines (a misspelt option would be
    ignored by Triton, silently). Raises :class:`KernbinError`."""
    nw = spec.num_warps
    if type(nw) is not int or nw < 1 or nw & (nw - 1):
        raise KernbinError(f"num_warps must be a power of two >= 1, not {nw!r}")
    if type(spec.num_ctas) is not int or not 1 <= spec.num_ctas <= MAX_NUM_CTAS:
        raise KernbinError(f"num_ctas must be 1..{MAX_NUM_CTAS}, not {spec.num_ctas!r}")
    if type(spec.num_stages) is not int or spec.num_stages < 0:
        raise KernbinError(f"num_stages must be an int >= 0, not {spec.num_stages!r}")
    if spec.name is not None and (not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name)):
        raise KernbinError(f"kernel name {spec.name!r}: use [A-Za-z0-9_][A-Za-z0-9._-]{{0,119}} (the bundle "
                           f"names it <name>.sm_XY)")
    if not isinstance(spec.options, dict):
        raise KernbinError(f"options must be a dict, not {type(spec.options).__name__}")
    unknown = sorted(str(k) for k in spec.options if k not in _triton_options())
    if unknown:
        raise KernbinError(f"Triton's CUDA backend has no option {', '.join(map(repr, unknown))} "
                           f"(it has {', '.join(sorted(_triton_options()))})")


def _compile_one(spec: KernelSpec, cc: int):
    """Compile one specialisation for one SM; returns a :class:`~kernbin.artifact.NativeBinary`."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..artifact import BuildInfo, NativeBinary
    from ..ir import read_ir
    from . import stage
    check_spec(spec)
    try:
        fn = resolve_kernel(spec.kernel)
    except KernbinError:
        raise
    except Exception as e:                      # noqa: BLE001 - importing the user's module: anything
        raise KernbinError(f"kernel {_ref_text(spec)}: cannot load it: {type(e).__name__}: {e}") from e
    sig, consts, extra = parse_signature(fn.arg_names, spec.signature, spec.constexprs)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=extra["attrs"])
    opts = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, "num_ctas": spec.num_ctas, **spec.options}
    with tempfile.TemporaryDirectory(prefix="kernbin-triton-aot-") as tmp, knobs.cache.scope(), stage.installed():
        knobs.cache.__dict__["dir"] = tmp              # a private cache: every compile runs the kernbin stage
        knobs.cache.__dict__["manager_class"] = None
        t0 = time.perf_counter()
        try:
            k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=opts)
        except KernbinError:
            raise
        except Exception as e:                  # noqa: BLE001 - Triton's CompilationError, AssertionError, ...
            raise KernbinError(f"Triton could not compile {_ref_text(spec)} for sm_{cc}: "
                               f"{type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - t0
        asm = {key: k.asm[key] for key in ("ptx", "cubin", stage.STAGE)}
    md = k.metadata._asdict()
    ptx = asm["ptx"] if isinstance(asm["ptx"], str) else asm["ptx"].decode()
    info = BuildInfo.from_json(json.loads(asm[stage.STAGE]))
    meta = _launch_meta(fn, spec, sig, consts, extra, md, cc)
    _check_layout(meta, ptx, info.extra.get("cubin_layout"))
    extra = {k: v for k, v in info.extra.items() if k != "cubin_layout"}      # checked above; not needed later
    extra["triton"] = json.dumps(meta, sort_keys=True, separators=(",", ":"))   # JSON text: see _meta
    info = replace(info, build_seconds=round(seconds, 6), extra=extra)
    return NativeBinary(binary=bytes(asm["cubin"]), info=info, ir=read_ir(ptx.encode(), "ptx"))


def default_name(spec: KernelSpec) -> str:
    """``<function>_<8 hex>``: the function's name and a hash of the specialisation."""
    if spec.name:
        return spec.name
    ref = spec.reference() if not isinstance(spec.kernel, str) else spec.kernel
    base = ref.rpartition(":")[2].rpartition(".")[2]
    # the kernel itself is part of the hash: two files' add_kernel with one specialisation differ
    blob = json.dumps({k: v for k, v in spec.to_json().items() if k != "name"}, sort_keys=True, default=str)
    return f"{base}_{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def compile(kernel, signature, constexprs=None, *, targets=("cuda:sm_90",), num_warps: int = 4,
            num_stages: int = 3, num_ctas: int = 1, options=None) -> list:
    """Compile one Triton kernel specialisation for each CUDA target (no GPU needed); returns one
    :class:`~kernbin.artifact.NativeBinary` per SM (Triton's cubin, its PTX as IR, the launch metadata
    in ``info.extra["triton"]``)."""
    spec = KernelSpec(kernel, signature, dict(constexprs or {}), num_warps, num_stages, num_ctas, dict(options or {}))
    check_spec(spec)
    return [_compile_one(spec, cc) for cc in cuda_archs(targets)]


def _job(spec_json: dict, cc: int) -> bytes:
    """One compile in a worker process: returns the .knb bytes (verified again by the parent)."""
    spec = KernelSpec(spec_json["kernel"], spec_json["signature"], spec_json["constexprs"], spec_json["num_warps"],
                      spec_json["num_stages"], spec_json["num_ctas"], spec_json["options"], spec_json["name"])
    return _compile_one(spec, cc).to_bytes()


def compile_many(specs, targets, *, jobs: int | None = None, progress=None) -> dict:
    """Compile every spec for every target, in ``jobs`` worker processes (default: one per core; 1: in
    this process). Returns ``{name: {target: NativeBinary}}`` in the order given."""
    from ..artifact import NativeBinary
    specs = [s if isinstance(s, KernelSpec) else KernelSpec(**s) for s in specs]
    for s in specs:
        check_spec(s)
    archs = cuda_archs(targets)
    names = [default_name(s) for s in specs]
    if len(set(names)) != len(names):
        raise KernbinError("two kernel specs have the same name: give each its own name=")
    work = [(i, cc) for i in range(len(specs)) for cc in archs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    got: dict = {}
    if jobs == 1:
        for i, cc in work:
            got[(i, cc)] = _compile_one(replace(specs[i], name=names[i]), cc)
            if progress:
                progress(names[i], cc)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        payload = [replace(s, name=n).to_json() for s, n in zip(specs, names)]
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_job, payload[i], cc): (i, cc) for i, cc in work}
            for fut in as_completed(futures):
                i, cc = futures[fut]
                got[(i, cc)] = NativeBinary.from_bytes(fut.result())
                if progress:
                    progress(names[i], cc)
    out: dict = {}
    for i, cc in work:
        nb = got[(i, cc)]
        out.setdefault(names[i], {})[nb.info.target] = nb
    return out


def compile_bundle(out, specs, targets, *, jobs: int | None = None, sign_key=None, add_to: str | None = None,
                   progress=None) -> dict:
    """Compile every spec for every CUDA target into one bundle at ``out`` (with ``add_to``, added to
    that bundle's kernels; the same name is replaced). Bundle kernels are named ``<name>.<sm>``, each
    with its own PTX as IR. Returns ``{name: [targets]}``."""
    from ..bundle import read_all, write_bundle
    built = compile_many(specs, targets, jobs=jobs, progress=progress)
    kernels = read_all(add_to) if add_to else {}
    for name, per_target in built.items():
        for target, nb in per_target.items():
            kernels[variant_name(name, target)] = {"ir": nb.ir, "natives": [nb.without_ir()]}
    write_bundle(out, kernels, sign_key=sign_key, created_by=None)
    return {name: list(per_target) for name, per_target in built.items()}
