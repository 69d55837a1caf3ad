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
_ADDRESS_END = 1 << 64
_MAX_PARAMS = 4096                                # the metadata schema's bound
_CUDA_SUCCESS, _CUDA_ERROR_INVALID_VALUE, _CUDA_ERROR_NOT_FOUND, _CUDA_ERROR_NOT_SUPPORTED = 0, 1, 500, 801
_GRID_X_END, _GRID_YZ_END = 1 << 31, 1 << 16
_SCRATCH_MAX = (1 << 63) - (1 << 17)              # bytes: size_t for cuMemAllocAsync, with room to align


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
    from ..loader import open_bundle
    owned = not hasattr(bundle, "select")
    b = open_bundle(bundle, trusted_keys=trusted_keys) if owned else bundle
    if not owned and trusted_keys is not None:
        b.require_signature_by(trusted_keys)        # an open bundle: checked against these keys now
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
            from ..backends import open_device
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
        from ..loader import gate_from_bundle
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
                    if type(p) is not int:
                        raise SpecializationMismatch(meta.kernel, spec.name, "type", "data_ptr() an int",
                                                     type(p).__name__)
                    dt = getattr(v, "dtype", None)
                    if dt is not None:
                        have = TORCH_DTYPES.get(str(dt))
                        want = ty[2:] if ty[1] == "k" else ty[1:]
                        if have != want:
                            raise SpecializationMismatch(meta.kernel, spec.name, "dtype", want,
                                                         have if have is not None else str(dt),
                                                         "" if have is not None else "a dtype Triton has no type for")
                    if getattr(v, "is_cuda", True) is False:
                        raise SpecializationMismatch(meta.kernel, spec.name, "device", "a CUDA tensor",
                                                     str(getattr(v, "device", "cpu")))
                if not 0 <= p < _ADDRESS_END:
                    raise SpecializationMismatch(meta.kernel, spec.name, "range", "an address in [0, 2**64)", p)
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
                if isinstance(v, (str, bytes, bytearray)):          # float("1.5") works; Triton takes no text
                    raise SpecializationMismatch(meta.kernel, spec.name, "type", ty, type(v).__name__)
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    raise SpecializationMismatch(meta.kernel, spec.name, "type", ty, type(v).__name__) from None
                except OverflowError:                               # an int beyond any double
                    raise SpecializationMismatch(meta.kernel, spec.name, "range", f"a {ty} value",
                                                 _plain(v)) from None
                if ty in ("fp32", "f32", "bf16"):
                    f = ctypes.c_float(f).value                     # C's (float)f, as Triton: inf past FLT_MAX
                    if ty == "bf16":
                        f = struct.unpack("<I", struct.pack("<f", f))[0] >> 16      # as Triton packs it: truncated
                elif ty == "fp16":
                    try:
                        struct.pack("<e", f)
                    except OverflowError:                           # Triton's PyFloat_Pack2 refuses it too
                        raise SpecializationMismatch(meta.kernel, spec.name, "range", "an fp16 value (|x| <= 65504)",
                                                     f) from None
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
        g = (g + (1, 1))[:3]
        # what CUDA launches: x * num_ctas blocks below 2**31, y and z below 65536
        if g[0] * self.meta.num_ctas >= _GRID_X_END or g[1] >= _GRID_YZ_END or g[2] >= _GRID_YZ_END:
            raise SpecializationMismatch(self.meta.kernel, None, "grid",
                                         f"x * num_ctas ({self.meta.num_ctas}) < 2**31, y and z < 65536", g)
        return g

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
        from ..loader import load_from_bundle, load_gated
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
        _check_params(cu, f, module, meta)           # the metadata must describe the function loaded
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
        if meta.num_ctas == 16:                      # a non-portable cluster size: allowed as Triton's launcher does
            _check(cu.cuFuncSetAttribute(f, A.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
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
        try:
            if meta.global_scratch[0]:
                g_ptr = self._scratch(meta.global_scratch, gx * gy * gz * meta.num_ctas, s, scratch)
            if meta.profile_scratch[0]:
                p_ptr = self._scratch(meta.profile_scratch, gx * gy * gz * meta.num_ctas, s, scratch)
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
        if size > _SCRATCH_MAX:
            raise LaunchError(f"kernel {self._meta.kernel}: {programs} programs of {spec[0]} bytes of scratch "
                              f"each is {size} bytes, more than any device allocates")
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
    """Whether a value given for a specialised argument is the one it was specialised to: a number
    (or bool, or None) must be that number; text is compared as text only with recorded text (a
    constexpr Triton dtype is recorded as its name, ``"fp32"``), never with a number (``"64"`` is not 64)."""
    v = getattr(given, "value", given)              # tl.constexpr-like wrappers
    if isinstance(v, bool) or isinstance(recorded, bool):
        return type(v) is type(recorded) and v == recorded
    if isinstance(recorded, (int, float)):
        return isinstance(v, (int, float)) and v == recorded
    if recorded is None:
        return v is None
    if isinstance(v, (int, float, bytes, bytearray)) or v is None:
        return False
    return str(v) == str(recorded)


def _check_params(cu, f, module, meta: LaunchMeta) -> None:
    """The loaded function's parameters must be the metadata's, in number and size: asked of the
    driver (``cuFuncGetParamInfo``, CUDA 12.4+: the parameter after the last must not exist); where the
    driver cannot say, read from the cubin's ``.nv.info`` (:func:`kernbin.triton._nvinfo.kernel_info`).
    Metadata that does not describe the code would make every launch read the wrong bytes: refused
    (:class:`TritonMetaError`) before any launch."""
    want = [p.size for p in meta.params]
    got = _driver_param_sizes(cu, f, len(want))
    where = "the driver"
    if got is None:
        native = getattr(module, "native", None)
        binary = getattr(native, "binary", None)
        if not isinstance(binary, (bytes, bytearray)):
            raise TritonMetaError(f"kernel {meta.kernel}: neither the driver (no cuFuncGetParamInfo) nor a binary "
                                  f"can say what its parameters are: not launched", "params")
        binary = bytes(binary)
        if binary[:4] != b"\x7fELF":
            binary = _cubin_of_fatbin(binary, meta.kernel, getattr(module, "member", None))
        from ._nvinfo import kernel_info
        entry = kernel_info(binary).get(meta.kernel)
        if entry is None:
            raise TritonMetaError(f"the cubin describes no parameters of kernel {meta.kernel!r}", "params")
        params = entry.get("params", [])
        if [ordinal for ordinal, _, _ in params] != list(range(len(params))):
            raise TritonMetaError(f"the cubin's parameters of {meta.kernel!r} are not numbered 0..n-1: {params}",
                                  "params")
        got, where = [size for _, _, size in params], "the cubin"
    if got != want:
        raise TritonMetaError(f"kernel {meta.kernel}: {where} says its parameters hold {got} bytes, the launch "
                              f"metadata {want} ({[p.name for p in meta.params]})", "params")


def _cubin_of_fatbin(binary: bytes, kernel: str, member) -> bytes:
    """The cubin a fatbin's loaded member is (an uncompressed ELF member, the one the gate chose when it
    says which: ``"cubin sm_90"``), to read its ``.nv.info``; :class:`TritonMetaError` when there is
    none to read (a PTX member, a compressed one, not a fatbin): the metadata cannot be checked, so the
    kernel is not launched."""
    from ..errors import InvalidBinary
    from ..formats.cubin import fatbin_members
    try:
        members = fatbin_members(binary)
    except InvalidBinary:
        members = []
    want = str(member or "")
    cubins = [binary[m["offset"]:m["offset"] + m["size"]] for m in members
              if m["kind"] == "cubin" and (not want.startswith("cubin sm_") or want[len("cubin sm_"):].rstrip("af")
                                           == str(m["sm"]))]
    cubins = [c for c in cubins if c[:4] == b"\x7fELF"]
    if not cubins:
        raise TritonMetaError(f"kernel {kernel}: the driver cannot say what its parameters are (no "
                              f"cuFuncGetParamInfo) and the binary holds no readable cubin to read them from "
                              f"({want or 'not a cubin'}): not launched", "params")
    return cubins[0]


def _driver_param_sizes(cu, f, count: int):
    """The sizes of the function's parameters as ``cuFuncGetParamInfo`` gives them (asked until it
    says there is no such parameter, at most ``max(count + 1, 4097)`` of them); None where the driver
    (or cuda-bindings) lacks the call."""
    call = getattr(cu, "cuFuncGetParamInfo", None)
    if call is None:
        return None
    sizes = []
    for i in range(max(count + 1, _MAX_PARAMS + 1)):
        try:
            err, _, size = call(f, i)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return None                              # cuda-bindings without the driver symbol (CUDA < 12.4)
        code = int(err)
        if code == _CUDA_SUCCESS:
            sizes.append(int(size))
            continue
        if code == _CUDA_ERROR_INVALID_VALUE:        # past the last parameter
            return sizes
        if i == 0 and code in (_CUDA_ERROR_NOT_SUPPORTED, _CUDA_ERROR_NOT_FOUND):
            return None
        raise RuntimeAPIError("cuda", "cuFuncGetParamInfo", code, getattr(err, "name", None))
    return sizes


def _plain(v):
    v = getattr(v, "value", v)
    return v if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__


def _check(result, call: str):
    err, *values = result
    if int(err) != 0:
        raise RuntimeAPIError("cuda", call, int(err), getattr(err, "name", None))
    return values[0] if len(values) == 1 else (tuple(values) if values else None)
