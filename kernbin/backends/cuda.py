"""CUDA backend on NVIDIA's own Python packages (``cuda-bindings``): PTX -> cubin / fatbin -> load.

Targets:

``cuda:N``                 a live device: builds through the driver's own linker
                           (``cuLinkCreate`` / ``cuLinkAddData`` / ``cuLinkComplete``, the CUDA twin of
                           ``zeModuleGetNativeBinary``) and loads with ``cuModuleLoadData``;
``cuda:sm_90``, ``cuda:sm_90a``, ``cuda:sm_100f``   offline, no GPU: nvJitLink (``nvidia-nvjitlink``);
``cuda:sm_80,sm_90[,ptx]`` one fatbin through nvFatbin (``nvidia-nvfatbin``): a cubin per architecture,
                           and with ``ptx`` the PTX too, for devices newer than any cubin.

What a binary runs on is NVIDIA's rule (:func:`kernbin.formats.cubin.cuda_can_run`): a cubin for
sm_XY on the same major with minor >= Y, an ``a`` cubin only on sm_XY, PTX where the driver knows
its ISA. A binary that fails it never reaches the driver; kernbin rebuilds from the PTX and says why.
Nothing here imports pyopencl; ``cuda.bindings`` is imported on first use.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
import weakref

from ..artifact import BuildInfo, KernelInfo, NativeBinary
from ..device import DeviceId, Toolchain
from ..errors import (BuildError, InvalidBinary, KernelNotFound, LaunchError, OfflineTarget, OptionsError,
                      RuntimeAPIError, RuntimeNotFound, TargetError)
from ..formats import cubin as cufmt
from ..ir import IR
from ..options import BuildOptions
from ..target import Target
from ._launch import HostArrays, classify
from .base import Backend, Device, DeviceInfo, Fit, Kernel, Module

__all__ = ["CudaBackend", "CudaDevice", "CudaOfflineDevice", "INSTALL_HINT"]

BACKEND = "cuda"
INSTALL_HINT = ("pip install 'kernbin[cuda]' (cuda-bindings, nvidia-nvjitlink, nvidia-nvfatbin); loading needs an "
                "NVIDIA GPU and driver")
#: offline targets `kernbin devices` lists (any sm_XY nvJitLink knows can be targeted)
LISTED = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_120")
_SMALL_SHARED = 48 << 10
_thread = threading.local()


# -- imports and the driver -----------------------------------------------------------------

def _nvjitlink():
    try:
        from cuda.bindings import nvjitlink
        return nvjitlink
    except ImportError as e:
        raise RuntimeNotFound(f"offline CUDA builds need nvJitLink ({e}); {INSTALL_HINT}") from None


def _nvfatbin():
    try:
        from cuda.bindings import nvfatbin
        return nvfatbin
    except ImportError as e:
        raise RuntimeNotFound(f"CUDA fatbins need nvFatbin ({e}); {INSTALL_HINT}") from None


class _Driver:
    """``cuda.bindings.driver`` after ``cuInit``, once per process; ``error`` says why not."""

    def __init__(self):
        self.cu, self.error, self.count, self.version = None, None, 0, 0
        try:
            from cuda.bindings import driver as cu
        except ImportError as e:
            self.error = f"cuda-bindings is not installed ({e})"
            return
        try:
            err, = cu.cuInit(0)
        except Exception as e:          # noqa: BLE001 - no libcuda.so: a missing runtime, not a crash
            self.error = f"no NVIDIA driver library ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            return
        if err != cu.CUresult.CUDA_SUCCESS:
            self.error = f"cuInit failed: {err.name}"
            return
        self.cu = cu
        self.version = _ok(cu.cuDriverGetVersion(), "cuDriverGetVersion")
        self.count = _ok(cu.cuDeviceGetCount(), "cuDeviceGetCount")


_driver: _Driver | None = None


def _drv() -> _Driver:
    global _driver
    if _driver is None:
        _driver = _Driver()
    return _driver


def _ok(result, call: str, cls=RuntimeAPIError, **kw):
    """Unpack a cuda.bindings result tuple, raising ``cls`` with the CUresult on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", None)
        raise cls(BACKEND, call, int(err), name, **kw)
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def _version_text(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


# -- the backend ---------------------------------------------------------------------------------

class CudaBackend(Backend):
    """NVIDIA GPUs: PTX in, cubin or fatbin out, NVIDIA's runs-on rule at the gate."""
    name = BACKEND
    ir_kinds = ("ptx",)

    def __init__(self):
        self._open: dict[str, Device] = {}

    def list_devices(self) -> list[DeviceInfo]:
        out = []
        d = _drv()
        for i in range(d.count if d.cu is not None else 0):
            try:
                dev = self.open(Target(BACKEND, str(i)))
            except RuntimeAPIError:
                continue
            out.append(DeviceInfo(target=f"cuda:{i}", id=dev.id, type="gpu", usable=True,
                                  details={"ptx_isa": dev.id.facts["ptx_isa"], "ir": f"PTX <={dev.id.facts['ptx_isa']}"}))
        try:
            nj = _nvjitlink()
            ver = "%d.%d" % nj.version()
        except (RuntimeNotFound, Exception):   # noqa: BLE001 - a broken wheel lists nothing
            return out
        for arch in LISTED:
            sm, variant = cufmt.parse_arch(arch)
            out.append(DeviceInfo(target=f"cuda:{arch}", id=_offline_id(((sm, variant),), False, ver),
                                  type="gpu (offline)", usable=True, note="builds only",
                                  details={"nvjitlink": ver, "ir": "PTX"}))
        return out

    def open(self, target: Target) -> Device:
        dev = self._open.get(target.selector)
        if dev is None:
            if target.selector.isdigit():
                dev = CudaDevice(self, target)
            else:
                parts = target.selector.split(",")
                with_ptx = "ptx" in parts
                archs = tuple(cufmt.parse_arch(p) for p in parts if p != "ptx")
                if not archs or len(set(archs)) != len(archs) or parts.count("ptx") > 1:
                    raise TargetError(f"{target}: name each sm_XY once, and ptx at most once", str(target))
                dev = CudaOfflineDevice(self, target, archs, with_ptx)
            self._open[target.selector] = dev
        return dev

    def can_run(self, info, device: Device) -> Fit:
        if isinstance(device, CudaOfflineDevice):
            return Fit(False, f"{device.target} is an offline target: load on cuda:N", "offline")
        req = info.requires
        memo = device.__dict__.get("_verdicts")
        if memo is None:
            memo = device._verdicts = {}
        seen = memo.get(id(req))                      # requirements are shared per distinct text
        if seen is not None and seen[0] is req:
            return seen[1]
        if req.kind not in ("cuda", "cuda-fat"):
            return Fit(False, f"an NVIDIA GPU cannot run a {req.kind} binary", "kind")
        ok, rule, reason, member = cufmt.cuda_can_run(req, device.sm, device.ptx_isa)
        fit = Fit(ok, reason, rule, member)
        if len(memo) >= 256:
            memo.clear()
        memo[id(req)] = (req, fit)                    # (req kept alive: its id is not reused meanwhile)
        return fit


def _offline_id(archs, with_ptx: bool, ver: str) -> DeviceId:
    names = ",".join(f"sm_{sm}{v}" for sm, v in archs) + (",ptx" if with_ptx else "")
    return DeviceId(BACKEND, "NVIDIA Corporation", names, names, "", f"nvJitLink {ver}",
                    {"archs": [f"sm_{sm}{v}" for sm, v in archs], "ptx": with_ptx})


def _check_ptx(ir: IR, flags) -> None:
    if ir.kind != "ptx":
        raise BuildError(BACKEND, "build", None, None, f"the CUDA backend builds PTX, not {ir.kind}",
                         options=" ".join(flags))


def _kernels_from_log(ir: IR, log: str) -> tuple[KernelInfo, ...]:
    props = cufmt.parse_ptxas_log(log)
    return tuple(KernelInfo(name, props.get(name, {})) for name in ir.kernels)


# -- offline: nvJitLink + nvFatbin ----------------------------------------------------------------

def _jitlink(ir: IR, arch: str, flags: tuple[str, ...]) -> tuple[bytes, str]:
    """PTX -> cubin for ``arch`` through nvJitLink; (cubin, verbose info log)."""
    nj = _nvjitlink()
    options = [f"-arch={arch}", "-verbose", "-Xptxas=-v", *flags]      # ptxas -v: registers and spills
    handle = None
    try:
        handle = nj.create(len(options), options)
        nj.add_data(handle, nj.InputType.PTX, ir.data, len(ir.data), "kernbin.ptx")
        nj.complete(handle)
        size = nj.get_linked_cubin_size(handle)
        buf = bytearray(size)
        nj.get_linked_cubin(handle, buf)
        return bytes(buf), _log(nj, handle, "info")
    except nj.nvJitLinkError as e:
        log = _log(nj, handle, "error") if handle is not None else ""
        status = getattr(e, "status", None)
        try:
            name = nj.Result(int(status)).name
        except (TypeError, ValueError):
            name = None
        raise BuildError(BACKEND, "nvJitLinkComplete", int(status) if status is not None else None, name,
                         f"PTX -> {arch} failed", log=log, options=" ".join(flags)) from None
    finally:
        if handle is not None:
            nj.destroy(handle)


def _log(nj, handle, which: str) -> str:
    try:
        size = getattr(nj, f"get_{which}_log_size")(handle)
        buf = bytearray(size)
        getattr(nj, f"get_{which}_log")(handle, buf)
        return buf.rstrip(b"\0").decode("utf-8", "replace").strip()
    except Exception:                  # noqa: BLE001 - a log we cannot read is an empty log
        return ""


class CudaOfflineDevice(Device):
    """Offline builds for one or more architectures (several, or ``ptx``: one fatbin)."""

    def __init__(self, backend: CudaBackend, target: Target, archs, with_ptx: bool):
        self.backend, self.target, self.archs, self.with_ptx = backend, target, tuple(archs), with_ptx
        self._nj = _nvjitlink()
        self.nvjitlink_version = "%d.%d" % self._nj.version()
        self.id = _offline_id(self.archs, with_ptx, self.nvjitlink_version)

    @property
    def handle(self):
        """The nvJitLink module (``cuda.bindings.nvjitlink``)."""
        return self._nj

    @property
    def toolchain(self) -> Toolchain:
        from .. import __version__
        return Toolchain(BACKEND, f"nvJitLink {self.nvjitlink_version}", "",
                         {"kernbin": __version__, "nvjitlink": self.nvjitlink_version})

    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        _check_ptx(ir, flags)
        t0 = time.perf_counter()
        cubins, logs = [], []
        for sm, variant in self.archs:
            cubin, log = _jitlink(ir, f"sm_{sm}{variant}", tuple(flags))
            cubins.append((sm, variant, cubin))
            logs.append(f"[sm_{sm}{variant}]\n{log}")
        log = "\n".join(logs)
        if len(cubins) == 1 and not self.with_ptx:
            sm, variant, binary = cubins[0]
            requires, fmt = cufmt.requirements_cubin(sm, variant), "cubin"
        else:
            binary, requires = self._fatbin(ir, cubins)
            fmt = "fatbin"
        seconds = time.perf_counter() - t0
        info = BuildInfo(target=str(self.target), toolchain=self.toolchain, requires=requires, ir_kind=ir.kind,
                         ir_sha256=ir.sha256, options=BuildOptions(tuple(flags)), flags=tuple(flags),
                         binary_format=fmt, kernels=_kernels_from_log(ir, logs[0]), built_on=self.id.describe(),
                         build_log=log, build_seconds=round(seconds, 6),
                         extra={"ptx_version": "%d.%d" % ir.version, "ptx_target": ir.target,
                                "per_arch": {f"sm_{sm}{v}": {k.name: k.attributes for k in
                                                             _kernels_from_log(ir, lg)}
                                             for (sm, v, _), lg in zip(cubins, logs)}})
        return NativeBinary(binary=binary, info=info, ir=ir)

    def _fatbin(self, ir: IR, cubins):
        nf = _nvfatbin()
        handle = nf.create([], 0)
        members = []
        try:
            for sm, variant, cubin in cubins:
                nf.add_cubin(handle, cubin, len(cubin), f"{sm}{variant}", f"sm_{sm}{variant}")
                members.append({"code": "cubin", "sm": sm, "variant": variant})
            if self.with_ptx:
                nf.add_ptx(handle, ir.data, len(ir.data), f"{ir.sm}{ir.arch_suffix}", "kernbin.ptx", "")
                members.append({"code": "ptx", "sm": ir.sm, "variant": ir.arch_suffix,
                                "ptx_isa": "%d.%d" % ir.version})
            buf = bytearray(nf.size(handle))
            nf.get(handle, buf)
        except nf.nvFatbinError as e:
            raise BuildError(BACKEND, "nvFatbin", None, None, f"fatbin assembly failed: {e}") from None
        finally:
            nf.destroy(handle)
        return bytes(buf), cufmt.requirements_fatbin(members)

    def load_native(self, native: NativeBinary, payload: bytes | None = None):
        raise OfflineTarget(str(self.target), "load on cuda:N")


# -- live devices -----------------------------------------------------------------------------

_JIT_FLAG = re.compile(r"-(maxrregcount)=(\d+)|-O([0-4])|-(lineinfo)")


class CudaDevice(Device):
    """A live NVIDIA GPU: its primary context, made current on use."""

    def __init__(self, backend: CudaBackend, target: Target):
        d = _drv()
        if d.cu is None:
            raise RuntimeNotFound(f"{target}: {d.error}; {INSTALL_HINT}")
        index = int(target.selector)
        if index >= d.count:
            if not d.count:
                raise RuntimeNotFound(f"{target}: no CUDA device; {INSTALL_HINT}")
            raise TargetError(f"{target}: there are only {d.count} CUDA devices (see `kernbin devices`)", str(target))
        cu = self.cu = d.cu
        self.backend, self.target = backend, target
        self.device = _ok(cu.cuDeviceGet(index), "cuDeviceGet")
        A = cu.CUdevice_attribute
        major = _ok(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device),
                    "cuDeviceGetAttribute")
        minor = _ok(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device),
                    "cuDeviceGetAttribute")
        self.sm = major * 10 + minor
        self.ptx_isa = cufmt.driver_ptx_isa(d.version)
        name = _ok(cu.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        name = bytes(name).split(b"\0")[0].decode("utf-8", "replace").strip()
        self.driver_version = d.version
        self.id = DeviceId(BACKEND, "NVIDIA Corporation", name, f"sm_{self.sm}", _version_text(d.version),
                           f"CUDA driver {_version_text(d.version)}",
                           {"sm": self.sm, "ptx_isa": "%d.%d" % self.ptx_isa})
        self.context = _ok(cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._finalizer = weakref.finalize(self, _release_ctx, cu, self.device)
        self.current()

    def current(self) -> None:
        """Make this device's primary context current on the calling thread (a no-op when this
        thread last made it current through kernbin)."""
        if getattr(_thread, "context", None) is not self.context:
            _ok(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            _thread.context = self.context

    @property
    def handle(self):
        """The ``CUdevice``."""
        return self.device

    @property
    def toolchain(self) -> Toolchain:
        from .. import __version__
        return Toolchain(BACKEND, f"CUDA driver JIT {_version_text(self.driver_version)}", str(self.driver_version),
                         {"kernbin": __version__})

    def _jit_options(self, flags):
        """kernbin flags -> cuLink options: -maxrregcount=N, -O0..-O4, -lineinfo."""
        J = self.cu.CUjit_option
        opts, vals = [], []
        for f in flags:
            m = _JIT_FLAG.fullmatch(f)
            if not m:
                raise OptionsError("flags", f"the driver linker takes -maxrregcount=N, -O0..-O4, -lineinfo; "
                                            f"not {f!r}", BACKEND)
            if m.group(1):
                opts.append(J.CU_JIT_MAX_REGISTERS)
                vals.append(int(m.group(2)))
            elif m.group(3):
                opts.append(J.CU_JIT_OPTIMIZATION_LEVEL)
                vals.append(int(m.group(3)))
            else:
                opts.append(J.CU_JIT_GENERATE_LINE_INFO)
                vals.append(1)
        return opts, vals

    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        """PTX -> cubin through the driver's own linker, for exactly this device."""
        _check_ptx(ir, flags)
        cu, J = self.cu, self.cu.CUjit_option
        self.current()
        extra_opts, extra_vals = self._jit_options(flags)
        size = 1 << 16
        info_log, error_log = bytearray(size), bytearray(size)
        opts = [J.CU_JIT_INFO_LOG_BUFFER, J.CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, J.CU_JIT_ERROR_LOG_BUFFER,
                J.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, J.CU_JIT_LOG_VERBOSE, *extra_opts]
        vals = [info_log, size, error_log, size, 1, *extra_vals]
        t0 = time.perf_counter()
        state = _ok(cu.cuLinkCreate(len(opts), opts, vals), "cuLinkCreate")
        try:
            data = ir.data if ir.data.endswith(b"\0") else ir.data + b"\0"
            try:
                _ok(cu.cuLinkAddData(state, cu.CUjitInputType.CU_JIT_INPUT_PTX, data, len(data), b"kernbin.ptx",
                                     0, None, None), "cuLinkAddData", BuildError, options=" ".join(flags))
                ptr, n = _ok(cu.cuLinkComplete(state), "cuLinkComplete", BuildError, options=" ".join(flags))
            except BuildError as e:
                e.log = _text(error_log) or _text(info_log)
                raise
            binary = ctypes.string_at(int(ptr), int(n))
        finally:
            cu.cuLinkDestroy(state)
        seconds = time.perf_counter() - t0
        log = _text(info_log)
        kernels = self._attributes_of(binary, ir.kernels, log)
        variant = ir.arch_suffix if ir.sm == self.sm else ""
        info = BuildInfo(target=str(self.target), toolchain=self.toolchain,
                         requires=cufmt.requirements_cubin(self.sm, variant), ir_kind=ir.kind, ir_sha256=ir.sha256,
                         options=BuildOptions(tuple(flags)), flags=tuple(flags), binary_format="cubin",
                         kernels=kernels, built_on=self.id.describe(), build_log=log, build_seconds=round(seconds, 6),
                         extra={"ptx_version": "%d.%d" % ir.version, "ptx_target": ir.target})
        return NativeBinary(binary=binary, info=info, ir=ir)

    def _attributes_of(self, binary: bytes, names, log: str) -> tuple[KernelInfo, ...]:
        from_log = cufmt.parse_ptxas_log(log)
        module = _ok(self.cu.cuModuleLoadData(binary), "cuModuleLoadData")
        try:
            out = []
            for name in names:
                f = _ok(self.cu.cuModuleGetFunction(module, name.encode()), "cuModuleGetFunction")
                out.append(KernelInfo(name, {**from_log.get(name, {}), **_func_attributes(self.cu, f)}))
            return tuple(out)
        finally:
            self.cu.cuModuleUnload(module)

    def payload(self, native: NativeBinary, fit: Fit) -> bytes:
        b = native.binary
        req = native.requires
        if req.kind == "cuda":
            try:
                sm = cufmt.cubin_sm(b)
            except InvalidBinary:
                raise InvalidBinary("not a cubin (ELF64 for machine 190)", rule="device-binary") from None
            v = req.values
            if v.get("code") != "cubin" or sm != v.get("sm"):
                raise InvalidBinary(f"the cubin is for sm_{cufmt.cubin_sm(b)}, its build info says "
                                    f"{req.get('code')} sm_{req.get('sm')}", rule="device-binary")
            return b
        if req.kind == "cuda-fat":
            have = sorted(((m["kind"], m["sm"]) for m in cufmt.fatbin_members(b)), key=repr)   # bounds-checked
            said = sorted(((m.get("code"), m.get("sm")) for m in req.get("members", []) if isinstance(m, dict)),
                          key=repr)          # (values of any JSON type: never compared with each other)
            if have != said:
                raise InvalidBinary(f"the fatbin holds {have}, its build info says {said}", rule="device-binary")
            return b
        raise InvalidBinary(f"unknown CUDA binary kind {req.kind!r}", rule="device-binary")

    def _load(self, data: bytes, call: str):
        self.current()
        return _ok(self.cu.cuModuleLoadData(data), call)

    def load_native(self, native: NativeBinary, payload: bytes | None = None) -> "CudaModule":
        return CudaModule(self, native, self._load(native.binary if payload is None else payload, "cuModuleLoadData"))

    def load_ir(self, ir: IR, flags: tuple[str, ...] = ()) -> "CudaModule":
        """The driver's PTX JIT (what a process pays without kernbin)."""
        _check_ptx(ir, flags)
        data = ir.data if ir.data.endswith(b"\0") else ir.data + b"\0"
        return CudaModule(self, None, self._load(data, "cuModuleLoadData(ptx)"), names=ir.kernels)

    def load_binary(self, binary: bytes, flags: tuple[str, ...] = ()) -> "CudaModule":
        return CudaModule(self, None, self._load(binary, "cuModuleLoadData"))


def _text(buf: bytearray) -> str:
    return bytes(buf).split(b"\0")[0].decode("utf-8", "replace").strip()


def _release_ctx(cu, device) -> None:
    try:
        cu.cuDevicePrimaryCtxRelease(device)
    except Exception:                  # noqa: BLE001 - interpreter shutdown
        pass


def _unload(cu, module) -> None:
    try:
        cu.cuModuleUnload(module)
    except Exception:                  # noqa: BLE001
        pass


def _func_attributes(cu, f) -> dict[str, int]:
    A = cu.CUfunction_attribute
    out = {}
    for key, attr in (("registers", A.CU_FUNC_ATTRIBUTE_NUM_REGS),
                      ("local", A.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
                      ("shared", A.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
                      ("max_threads_per_block", A.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK),
                      ("ptx_version", A.CU_FUNC_ATTRIBUTE_PTX_VERSION),
                      ("binary_version", A.CU_FUNC_ATTRIBUTE_BINARY_VERSION)):
        err, value = cu.cuFuncGetAttribute(attr, f)
        if int(err) == 0:
            out[key] = int(value)
    return out


class CudaModule(Module):
    def __init__(self, device: CudaDevice, native: NativeBinary | None, handle, names=()):
        self.device, self.native, self.handle, self._kernels = device, native, handle, {}
        self._names = tuple(names) if names else None        # None: from the build info, when asked

    def __del__(self):
        _unload(self.device.cu, self.handle)

    @property
    def kernel_names(self) -> tuple[str, ...]:
        """Kernel names: recorded at build time, or asked of the driver (CUDA 12.4+)."""
        if self._names is None:
            self._names = self.native.kernel_names if self.native is not None else ()
        if not self._names:
            cu = self.device.cu
            try:
                n = _ok(cu.cuModuleGetFunctionCount(self.handle), "cuModuleGetFunctionCount")
                funcs = _ok(cu.cuModuleEnumerateFunctions(n, self.handle), "cuModuleEnumerateFunctions")
                self._names = tuple(_ok(cu.cuFuncGetName(f), "cuFuncGetName").decode() for f in funcs)
            except (RuntimeAPIError, AttributeError):
                self._names = ()
        return self._names

    def kernel(self, name: str) -> "CudaKernel":
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = self._make_kernel(name)
        return k

    def _make_kernel(self, name: str) -> "CudaKernel":
        err, f = self.device.cu.cuModuleGetFunction(self.handle, name.encode())
        if int(err) != 0:
            raise KernelNotFound(name, self.kernel_names)
        return CudaKernel(self, name, f)


class CudaKernel(Kernel):
    def __init__(self, module: CudaModule, name: str, handle):
        self.module, self.device, self.name, self.handle = module, module.device, name, handle
        self._attributes = None
        self._max_shared = _SMALL_SHARED

    @property
    def attributes(self) -> dict[str, int]:
        if self._attributes is None:
            self._attributes = _func_attributes(self.device.cu, self.handle)
        return dict(self._attributes)

    def _launch(self, gs, ls, config, args) -> None:
        from ._launch import LaunchConfig
        cu, dev = self.device.cu, self.device
        if config is None:                      # launch(global, None, ...): pick a block that divides
            n = gs[0]
            block = next((b for b in (256, 128, 64, 32, 16, 8, 4, 2, 1) if n % b == 0), 1)
            config = LaunchConfig.nd(gs, (block,) + (1,) * (len(gs) - 1))
        grid3, block3 = config.dims3()
        plan = classify(args, None, self.name)
        stream = config.stream
        if stream is None and any(type(a).__module__.startswith("torch") for a in args):
            import torch
            stream = torch.cuda.current_stream().cuda_stream
        stream = 0 if stream is None else stream
        dev.current()
        if config.shared_mem_bytes > self._max_shared:
            A = cu.CUfunction_attribute
            _ok(cu.cuFuncSetAttribute(self.handle, A.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                      config.shared_mem_bytes), "cuFuncSetAttribute")
            self._max_shared = config.shared_mem_bytes
        with HostArrays(alloc=lambda n: _ok(cu.cuMemAlloc(n), "cuMemAlloc"),
                        write=lambda p, a: _ok(cu.cuMemcpyHtoD(p, a.ctypes.data, a.nbytes), "cuMemcpyHtoD"),
                        read=lambda p, a: _ok(cu.cuMemcpyDtoH(a.ctypes.data, p, a.nbytes), "cuMemcpyDtoH"),
                        free=lambda p: cu.cuMemFree(p)) as host:
            keep = []
            for i, (kind, value) in enumerate(plan):
                if kind == "array":
                    keep.append(ctypes.c_uint64(int(host.device(value))))
                elif kind == "pointer":
                    keep.append(ctypes.c_uint64(value))
                elif kind == "scalar":
                    keep.append(value)                       # a 0-d numpy array: its buffer is the value
                else:
                    raise LaunchError(f"argument {i}: CUDA kernels take dynamic shared memory as "
                                      f"LaunchConfig(shared_mem_bytes=...), not kernbin.LocalMemory")
            params = (ctypes.c_void_p * max(len(keep), 1))(
                *[ctypes.addressof(v) if isinstance(v, ctypes.c_uint64) else v.ctypes.data for v in keep])
            _ok(cu.cuLaunchKernel(self.handle, *grid3, *block3, config.shared_mem_bytes, stream,
                                  ctypes.addressof(params), 0), "cuLaunchKernel")
            _ok(cu.cuStreamSynchronize(stream), "cuStreamSynchronize")
            host.copy_back()
