"""Deploy time: Triton kernels from a kernbin bundle, launched like Triton did, without Triton.

    import kernbin.triton
    kernels = kernbin.triton.load("model.kbin")            # never imports triton
    kernels["add"][((n + 1023) // 1024,)](x, y, out, n)    # or kernels["add"](grid, x, y, out, n)

This module imports neither Triton nor PyTorch (PyTorch tensors are taken by duck typing: ``data_ptr()``,
``dtype``, ``is_cuda``; the current stream is PyTorch's when PyTorch is already imported).

A kernel is readied on first use (or :meth:`TritonKernel.ready`): of the bundle kernels
``<name>.<sm>`` the one built for the device's SM is tried first, then the others; kernbin's own
gate decides (:func:`kernbin.api.load_from_bundle`: digests, NVIDIA's runs-on rule, the cubin's
structure) and, when no cubin fits, the PTX of the most portable variant is rebuilt by the driver
(a :class:`~kernbin.errors.FallbackWarning` says why). The launch follows Triton 3.6's calling
convention: the unspecialised arguments in order, then the two scratch pointers Triton appends
(``global_scratch``, ``profile_scratch``; allocated stream-ordered when the kernel needs them,
null otherwise), ``num_warps * threads_per_warp`` threads per block, the grid's x times ``num_ctas``
(with a cluster launch when ``num_ctas > 1``), the recorded dynamic shared memory (opted in above
48 KiB). Every call is checked against what the kernel was specialised for
(:class:`~kernbin.triton.SpecializationMismatch`).
"""

from __future__ import annotations

import ctypes
import operator
import re
import struct
import sys
import threading
from typing import Mapping

from ..errors import IncompatibleBinary, InvalidBinary, KernbinError, KernelNotFound, LaunchError, RuntimeAPIError
from ._meta import SCALAR_FORMATS, TORCH_DTYPES, LaunchMeta, SpecializationMismatch, TritonMetaError

__all__ = ["load", "TritonKernels", "TritonKernel"]

_VARIANT = re.compile(r"(.+)\.sm_(\d{2,3})([af]?)")
_MISSING = object()
_SLOT = 8                                         # every parameter gets its own 8-byte slot
_SMALL_SHARED = 48 << 10


def load(bundle, target=None, *, trusted_keys=None, allocator=None, prepare: bool = True) -> "TritonKernels":
    """The Triton kernels of a bundle (a path or an open :class:`~kernbin.bundle.Bundle`), by name.

    ``target`` is ``"cuda:N"`` (default: PyTorch's current device when PyTorch is imported, else
    ``cuda:0``); the device is opened at the first launch, so the set can be built and inspected
    without a GPU. ``allocator(size, align, stream)`` supplies global scratch memory for kernels that
    need it (default: ``cuMemAllocAsync`` / ``cuMemFreeAsync`` on the launch's stream). With trusted
    keys (argument or ``KERNBIN_TRUSTED_KEYS``) the bundle must be signed by one of them.

    With ``prepare`` (the default), the first kernel readied prepares them all in one pass
    (:meth:`TritonKernels.prepare`: choose, verify, gate, read the launch metadata; no driver call),
    so each later first launch only hands verified bytes to the driver: one tight loop costs far
    less than the same steps interleaved with driver calls, which evict the CPU's caches."""
    from ..api import open_bundle
    owned = not hasattr(bundle, "select")
    b = open_bundle(bundle, trusted_keys=trusted_keys) if owned else bundle
    return TritonKernels(b, target, allocator=allocator, owned=owned, prepare=prepare)


class TritonKernels(Mapping):
    """The Triton kernels of one bundle: ``kernels[name]`` (or ``kernels.name``) is a :class:`TritonKernel`."""

    def __init__(self, bundle, target=None, *, allocator=None, owned: bool = False, prepare: bool = True):
        self.bundle = bundle
        self._target = target
        self._device = None
        self._allocator = allocator
        self._owned = owned
        self._auto_prepare = prepare
        self._prepared: dict | None = None
        self._kernels: dict[str, TritonKernel] = {}
        variants: dict[str, list] = {}
        for n in bundle.names:
            m = _VARIANT.fullmatch(n)
            if m:
                variants.setdefault(m.group(1), []).append((n, int(m.group(2)), m.group(3)))
        self._variants = variants

    def __getitem__(self, name: str) -> "TritonKernel":
        k = self._kernels.get(name)
        if k is None:
            v = self._variants.get(name)
            if v is None:
                raise KernelNotFound(name, tuple(self._variants))
            k = self._kernels[name] = TritonKernel(self, name, v)
        return k

    def __getattr__(self, name: str) -> "TritonKernel":
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KernelNotFound:
            raise AttributeError(f"no Triton kernel {name!r} in the bundle") from None

    def __iter__(self):
        return iter(self._variants)

    def __len__(self) -> int:
        return len(self._variants)

    def targets(self, name: str) -> tuple[str, ...]:
        """The SMs the bundle holds for kernel ``name`` (``sm_80``, ``sm_90a``, ...)."""
        return tuple(f"sm_{sm}{v}" for _, sm, v in self._variants[name])

    def device(self):
        """The kernbin CUDA device the kernels launch on (opened on first use)."""
        if self._device is None:
            from ..api import open_device
            target = self._target
            if target is None:
                torch = sys.modules.get("torch")
                index = torch.cuda.current_device() if torch is not None and torch.cuda.is_available() else 0
                target = f"cuda:{index}"
            self._device = open_device(target) if isinstance(target, str) else target
        return self._device

    def prepare(self) -> dict:
        """Choose, verify and gate every kernel's entry for the device and read its launch metadata
        now, in one pass, without loading anything: ``{name: (bundle kernel, gated entry, metadata)}``
        for the kernels whose preferred variant passed. A kernel left out (nothing fits, a damaged
        blob, bad metadata) takes the one-by-one path when readied, with its fallback and errors."""
        if self._prepared is not None:
            return self._prepared
        from ..api import gate_from_bundle
        dev = self.device()
        out = {}
        for name, variants in self._variants.items():
            for bname, _, _ in sorted(variants, key=_preference(dev.sm)):
                try:
                    gated = gate_from_bundle(self.bundle, bname, dev)
                    out[name] = (bname, gated, LaunchMeta.from_json(gated.native.info.extra.get("triton")))
                    break
                except KernbinError:
                    continue
        self._prepared = out
        return out

    def close(self) -> None:
        """Close the bundle if :func:`load` opened it (loaded kernels keep working)."""
        if self._owned:
            self.bundle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _preference(sm: int):
    def key(v):
        _, vsm, variant = v
        if vsm == sm:
            return (0, 0 if variant else 1)            # the SM's own build ('a' variants are Triton's >= 90)
        if vsm // 10 == sm // 10 and vsm < sm and not variant:
            return (1, -vsm)                            # same major, lower minor: runs natively
        return (2, -vsm)
    return key


class TritonKernel:
    """One Triton kernel of a bundle. ``k[grid](*args)`` / ``k(grid, *args)`` launch it on the
    current stream (``stream=`` to choose); ``grid`` is 1-3 ints or a callable of the arguments by
    name (``meta["BLOCK"]``), as in Triton. :attr:`meta` is the launch metadata."""

    def __init__(self, kernels: TritonKernels, name: str, variants: list):
        self.kernels, self.name, self.variants = kernels, name, variants
        self._meta: LaunchMeta | None = None
        self._function = None
        self.module = None
        self.choice: dict | None = None
        self._lock = threading.Lock()

    # -- metadata, no device needed ---------------------------------------------------------------
    def _meta_of(self, bundle_name: str) -> LaunchMeta:
        entries = self.kernels.bundle.entries(bundle_name)
        if not entries:
            raise TritonMetaError(f"bundle kernel {bundle_name!r} has no native entry", "entries")
        raw = entries[0].info.extra.get("triton")
        if raw is None:
            raise TritonMetaError(f"bundle kernel {bundle_name!r} carries no Triton launch metadata", "triton")
        return LaunchMeta.from_json(raw)

    @property
    def meta(self) -> LaunchMeta:
        """The launch metadata (of the variant loaded, or before that of the first variant)."""
        if self._meta is None:
            self._set_meta(self._meta_of(self.variants[0][0]))
        return self._meta

    def _set_meta(self, meta: LaunchMeta) -> None:
        self._meta = meta
        self._by_name = {a.name: i for i, a in enumerate(meta.args)}
        fmt = "<"
        for p in meta.params:
            code, size = ("Q", 8) if p.type.startswith("*") else SCALAR_FORMATS[p.type]
            fmt += code + "x" * (_SLOT - size)
        self._fmt = fmt
        self._buf = ctypes.create_string_buffer(_SLOT * max(len(meta.params), 1))
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * max(len(meta.params), 1))(*[base + _SLOT * i for i in range(len(meta.params))])
        self._params_addr = ctypes.addressof(self._ptrs)
        self._grid_mul = meta.num_ctas

    def bind(self, args, kwargs) -> list:
        """The parameter values for these call arguments (positional, or by name; a specialised argument
        may be left out, and must equal what it was specialised to if given), checked against the
        specialisation; the two appended scratch pointers are not included. Raises
        :class:`SpecializationMismatch`."""
        meta = self.meta
        specs = meta.args
        if len(args) > len(specs):
            raise SpecializationMismatch(meta.kernel, None, "arity", f"at most {len(specs)} arguments", len(args))
        if kwargs:
            unknown = [k for k in kwargs if k not in self._by_name]
            if unknown:
                raise SpecializationMismatch(meta.kernel, unknown[0], "arity", [a.name for a in specs], unknown)
        out = []
        n = len(args)
        for i, spec in enumerate(specs):
            if i < n:
                v = args[i]
                if kwargs and spec.name in kwargs:
                    raise SpecializationMismatch(meta.kernel, spec.name, "arity", "one value", "given twice")
            else:
                v = kwargs.get(spec.name, _MISSING) if kwargs else _MISSING
            if spec.specialised:
                if v is not _MISSING and not _same(v, spec.value):
                    raise SpecializationMismatch(meta.kernel, spec.name, spec.specialised, spec.value, _plain(v))
                continue
            if v is _MISSING:
                raise SpecializationMismatch(meta.kernel, spec.name, "arity", "a value", "nothing")
            ty = spec.type
            if ty[0] == "*":
                if v is None:
                    p = 0
                elif type(v) is int:
                    p = v
                else:
                    dp = getattr(v, "data_ptr", None)
                    if dp is None:
                        raise SpecializationMismatch(meta.kernel, spec.name, "type", "a tensor (data_ptr()) or int",
                                                     type(v).__name__)
                    p = dp()
                    dt = getattr(v, "dtype", None)
                    if dt is not None:
                        have = TORCH_DTYPES.get(str(dt))
                        want = ty[2:] if ty[1] == "k" else ty[1:]
                        if have is not None and have != want:
                            raise SpecializationMismatch(meta.kernel, spec.name, "dtype", want, have)
                    if getattr(v, "is_cuda", True) is False:
                        raise SpecializationMismatch(meta.kernel, spec.name, "device", "a CUDA tensor",
                                                     str(getattr(v, "device", "cpu")))
                if spec.divisibility > 1 and p % spec.divisibility:
                    raise SpecializationMismatch(meta.kernel, spec.name, "divisibility",
                                                 f"address % {spec.divisibility} == 0", p % spec.divisibility,
                                                 "Triton compiled it assuming an aligned pointer")
                out.append(p)
            elif ty[0] in "iu":
                if type(v) is not int:
                    try:
                        v = operator.index(v)
                    except TypeError:
                        raise SpecializationMismatch(meta.kernel, spec.name, "type", ty, type(v).__name__) from None
                meta.check_int(spec, v)
                if spec.divisibility > 1 and v % spec.divisibility:
                    raise SpecializationMismatch(meta.kernel, spec.name, "divisibility",
                                                 f"value % {spec.divisibility} == 0", v)
                out.append(v)
            else:
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    raise SpecializationMismatch(meta.kernel, spec.name, "type", ty, type(v).__name__) from None
                if ty == "bf16":
                    f = struct.unpack("<I", struct.pack("<f", f))[0] >> 16      # as Triton packs it: truncated
                out.append(f)
        return out

    def grid_of(self, grid, args, kwargs) -> tuple[int, int, int]:
        """The launch grid in programs: a tuple of 1-3 ints, or ``grid(meta)`` with ``meta`` the
        arguments by name (specialised ones at their values) plus ``num_warps``, ``num_stages``, ``num_ctas``."""
        if callable(grid):
            meta = self.meta
            named = {a.name: (args[i] if i < len(args) else kwargs.get(a.name, a.value))
                     for i, a in enumerate(meta.args)}
            named.update(num_warps=meta.num_warps, num_stages=meta.num_stages, num_ctas=meta.num_ctas)
            grid = grid(named)
        if isinstance(grid, int):
            grid = (grid,)
        try:
            g = tuple(operator.index(x) for x in grid)
        except TypeError:
            raise SpecializationMismatch(self.meta.kernel, None, "grid", "1-3 ints", grid) from None
        if not 1 <= len(g) <= 3 or min(g) < 0:
            raise SpecializationMismatch(self.meta.kernel, None, "grid", "1-3 non-negative ints", g)
        return (g + (1, 1))[:3]

    def pack(self, *args, **kwargs) -> bytes:
        """The parameter block a launch would hand to ``cuLaunchKernel`` (scratch pointers null): for
        tests and inspection; needs no device."""
        values = self.bind(args, kwargs)
        buf = ctypes.create_string_buffer(_SLOT * max(len(self.meta.params), 1))
        struct.pack_into(self._fmt, buf, 0, *values, 0, 0)
        return buf.raw

    # -- the device ----------------------------------------------------------------------------------
    def ready(self) -> "TritonKernel":
        """Load the kernel onto the device now (else at the first launch)."""
        if self._function is not None:
            return self
        from ..api import load_from_bundle, load_gated
        kernels = self.kernels
        dev = kernels.device()
        bundle = kernels.bundle
        reasons, module, chosen, meta = [], None, None, None
        prepared = (kernels.prepare() if kernels._auto_prepare else kernels._prepared or {}).get(self.name)
        if prepared is not None:
            try:
                module = load_gated(dev, prepared[1])
                chosen, meta = prepared[0], prepared[2]
            except RuntimeAPIError as e:         # the driver refused it: the one-by-one path says why
                reasons.append(f"{prepared[0]}: {e}")
        order = sorted(self.variants, key=_preference(dev.sm)) if module is None else ()
        for bname, _, _ in order:
            try:
                module = load_from_bundle(bundle, bname, dev, fallback=False)
                chosen = bname
                break
            except (IncompatibleBinary, InvalidBinary, RuntimeAPIError) as e:
                reasons.append(f"{bname}: {e}")
        if module is None:                       # no cubin fits: rebuild the most portable PTX on the device
            portable = [v for v in self.variants if not v[2] and v[1] <= dev.sm] or \
                       [v for v in self.variants if not v[2]]
            if not portable:
                raise IncompatibleBinary(f"Triton kernel {self.name!r}: no cubin fits {dev.target} "
                                         f"(sm_{dev.sm}) and every PTX is architecture-specific: "
                                         + "; ".join(reasons), rule="no-entry", device=dev.id)
            chosen = max(portable, key=lambda v: v[1])[0]
            module = load_from_bundle(bundle, chosen, dev, fallback=True)
        if meta is None:
            meta = self._meta if self._meta is not None and chosen == self.variants[0][0] else self._meta_of(chosen)
        cu = dev.cu
        f = module.kernel(meta.kernel).handle
        A = cu.CUfunction_attribute
        if meta.shared > _SMALL_SHARED:
            optin = _check(cu.cuDeviceGetAttribute(
                cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev.device),
                "cuDeviceGetAttribute")
            static = _check(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f), "cuFuncGetAttribute")
            if meta.shared > optin:
                raise LaunchError(f"kernel {meta.kernel} needs {meta.shared} bytes of shared memory, "
                                  f"{dev.id.name} gives at most {optin}")
            _check(cu.cuFuncSetCacheConfig(f, cu.CUfunc_cache.CU_FUNC_CACHE_PREFER_SHARED), "cuFuncSetCacheConfig")
            _check(cu.cuFuncSetAttribute(f, A.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - static),
                   "cuFuncSetAttribute")
        max_threads = _check(cu.cuFuncGetAttribute(A.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f), "cuFuncGetAttribute")
        if meta.block > max_threads:
            raise LaunchError(f"kernel {meta.kernel} runs {meta.block} threads per block, this build allows "
                              f"{max_threads}")
        with self._lock:
            self._set_meta(meta)
            self.module, self.choice = module, {"bundle_kernel": chosen, "source": module.source,
                                                "entry": getattr(module, "bundle_choice", None),
                                                "tried": reasons}
            self._cu, self._dev = cu, dev
            self._function = f
        return self

    def _stream(self, stream):
        if stream is not None:
            return int(stream) if not hasattr(stream, "cuda_stream") else stream.cuda_stream
        torch = sys.modules.get("torch")
        if torch is None:
            return 0
        return torch._C._cuda_getCurrentRawStream(torch._C._cuda_getDevice())

    def launch(self, grid, args, kwargs, stream=None) -> None:
        """Launch with these arguments (the body of ``k[grid](*args)``)."""
        if self._function is None:
            self.ready()
        values = self.bind(args, kwargs)
        gx, gy, gz = self.grid_of(grid, args, kwargs)
        if gx * gy * gz == 0:
            return
        meta, cu = self._meta, self._cu
        s = self._stream(stream)
        self._dev.current()
        scratch = []
        g_ptr = p_ptr = 0
        if meta.global_scratch[0]:
            g_ptr = self._scratch(meta.global_scratch, gx * gy * gz * meta.num_ctas, s, scratch)
        if meta.profile_scratch[0]:
            p_ptr = self._scratch(meta.profile_scratch, gx * gy * gz * meta.num_ctas, s, scratch)
        try:
            with self._lock:
                struct.pack_into(self._fmt, self._buf, 0, *values, g_ptr, p_ptr)
                if meta.num_ctas == 1 and not meta.launch_cooperative_grid and not meta.launch_pdl:
                    err = cu.cuLaunchKernel(self._function, gx, gy, gz, meta.block, 1, 1, meta.shared, s,
                                            self._params_addr, 0)[0]
                else:
                    err = self._launch_ex(gx, gy, gz, s)
            if err:
                _check((err,), "cuLaunchKernel")
        finally:
            for free in scratch:
                free()

    def _launch_ex(self, gx, gy, gz, s):
        """``cuLaunchKernelEx`` with the cluster / cooperative / PDL attributes Triton sets."""
        cu, meta = self._cu, self._meta
        cfg = cu.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = gx * meta.num_ctas, gy, gz
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = meta.block, 1, 1
        cfg.sharedMemBytes, cfg.hStream = meta.shared, cu.CUstream(s)
        attrs = []
        A = cu.CUlaunchAttributeID
        if meta.launch_pdl:
            a = cu.CUlaunchAttribute()
            a.id = A.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            a.value.programmaticStreamSerializationAllowed = 1
            attrs.append(a)
        if meta.launch_cooperative_grid:
            a = cu.CUlaunchAttribute()
            a.id = A.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
            a.value.cooperative = 1
            attrs.append(a)
        if meta.num_ctas != 1:
            a = cu.CUlaunchAttribute()
            a.id = A.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
            a.value.clusterDim.x, a.value.clusterDim.y, a.value.clusterDim.z = meta.num_ctas, 1, 1
            attrs.append(a)
            b = cu.CUlaunchAttribute()
            b.id = A.CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE
            b.value.clusterSchedulingPolicyPreference = \
                cu.CUclusterSchedulingPolicy.CU_CLUSTER_SCHEDULING_POLICY_SPREAD
            attrs.append(b)
        cfg.attrs, cfg.numAttrs = attrs, len(attrs)
        return cu.cuLaunchKernelEx(cfg, self._function, self._params_addr, 0)[0]

    def _scratch(self, spec, programs: int, stream: int, frees: list) -> int:
        size, align = spec[0] * programs, spec[1]
        alloc = self.kernels._allocator
        if alloc is not None:
            obj = alloc(size, align, stream)
            frees.append(lambda o=obj: None)             # keep it alive until the launch is queued
            return obj if isinstance(obj, int) else obj.data_ptr()
        cu = self._cu
        ptr = _check(cu.cuMemAllocAsync(size + max(align - 256, 0), stream), "cuMemAllocAsync")
        frees.append(lambda: cu.cuMemFreeAsync(ptr, stream))
        p = int(ptr)
        return (p + align - 1) // align * align

    def __getitem__(self, grid):
        def run(*args, stream=None, **kwargs):
            self.launch(grid, args, kwargs, stream)
        return run

    def __call__(self, grid, *args, stream=None, **kwargs) -> None:
        self.launch(grid, args, kwargs, stream)

    def __repr__(self) -> str:
        state = self.choice["bundle_kernel"] if self.choice else "not loaded"
        return f"<TritonKernel {self.name} ({', '.join(self.kernels.targets(self.name))}; {state})>"


def _same(given, recorded) -> bool:
    """Whether a value given for a specialised argument is the one it was specialised to."""
    v = getattr(given, "value", given)              # tl.constexpr-like wrappers
    if isinstance(v, bool) or isinstance(recorded, bool):
        return type(v) is type(recorded) and v == recorded
    if isinstance(v, (int, float)) and isinstance(recorded, (int, float)):
        return v == recorded
    return str(v) == str(recorded)


def _plain(v):
    v = getattr(v, "value", v)
    return v if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__


def _check(result, call: str):
    err, *values = result
    if int(err) != 0:
        raise RuntimeAPIError("cuda", call, int(err), getattr(err, "name", None))
    return values[0] if len(values) == 1 else (tuple(values) if values else None)
