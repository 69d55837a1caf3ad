"""OpenCL backend (pyopencl): SPIR-V -> ``CL_PROGRAM_BINARIES`` -> ``clCreateProgramWithBinary``.

Targets: ``opencl:cpu`` / ``opencl:gpu`` (first such device that takes SPIR-V)
or ``opencl:N`` (N-th device over all platforms, as ``kernbin devices`` lists).

Intel's CPU runtime from PyPI is made visible to the ICD loader by
:func:`kernbin.backends._icd.wire_intel_cpu_runtime` -- users never set ICD
variables by hand.

Programs are built and loaded through pyopencl's raw ``_cl`` objects rather than
``pyopencl.Program``: the latter appends its own include paths to every build and
keeps its own source cache, and kernbin must pass exactly the recorded options.
"""

from __future__ import annotations

import platform
import time
import warnings

from ..artifact import BuildInfo, KernelInfo, NativeBinary
from ..device import DeviceId
from ..errors import BuildError, LaunchError, RuntimeAPIError, RuntimeNotFound, TargetError
from ..formats import opencl_elf
from ..ir import SpirvModule
from ..target import Target, parse_target
from ._icd import wire_intel_cpu_runtime
from .base import Device, DeviceInfo, Kernel, LocalMemory, Module, launch_sizes

__all__ = ["list_devices", "open_device", "wire_intel_cpu_runtime", "INSTALL_HINT"]

BACKEND = "opencl"
INSTALL_HINT = ("install Intel's CPU OpenCL runtime: pip install intel-opencl-rt intel-cmplr-lib-rt "
                "(or a GPU driver with SPIR-V support)")


wire_intel_cpu_runtime()
try:
    import numpy as np
    import pyopencl as cl
    from pyopencl import _cl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise RuntimeNotFound(f"the OpenCL backend needs pyopencl and numpy ({e}): pip install pyopencl numpy") from e

_STATUS_NAMES = {v: f"CL_{k}" for k, v in vars(cl.status_code).items() if isinstance(v, int)}


def _api_error(e: "cl.Error", call: str | None = None, cls=RuntimeAPIError, **kw):
    code = getattr(e, "code", None)
    routine = call or getattr(e, "routine", None) or "OpenCL call"
    # pyopencl's text is "routine failed: CODE - detail"; keep only the detail
    msg = str(e).split("\n")[0]
    msg = msg.split(" - ", 1)[1] if " - " in msg else ""
    if msg.startswith(f"{routine} failed:"):
        msg = ""
    return cls(BACKEND, routine, code, _STATUS_NAMES.get(code), msg, **kw)


def _platform_devices() -> list[tuple["cl.Platform", "cl.Device"]]:
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        if getattr(e, "code", None) == -1001:     # CL_PLATFORM_NOT_FOUND_KHR: no ICD at all
            return []
        raise _api_error(e, "clGetPlatformIDs") from None
    out = []
    for p in platforms:
        try:
            out.extend((p, d) for d in p.get_devices())
        except cl.Error:
            continue                              # a platform with no devices
    return out


def _spirv_versions(dev: "cl.Device") -> tuple[tuple[int, int], ...]:
    try:
        il = dev.il_version or ""
    except cl.Error:
        il = ""
    out = []
    for tok in il.split():
        if tok.startswith("SPIR-V_"):
            try:
                major, minor = tok[len("SPIR-V_"):].split(".")[:2]
                out.append((int(major), int(minor)))
            except ValueError:
                continue
    return tuple(out)


def _cpu_isa() -> str:
    """A coarse x86-64 ISA level from /proc/cpuinfo (code for v4 must not run on v3)."""
    machine = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return machine
    flags = set(flags)
    level = ""
    if {"sse4_2", "popcnt", "ssse3"} <= flags:
        level = "-v2"
    if level and {"avx2", "fma", "bmi2", "movbe"} <= flags:
        level = "-v3"
    if level == "-v3" and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        level = "-v4"
    extras = "".join(f"+{x}" for x in ("amx_tile", "avx512_fp16") if x in flags)
    return machine.replace("x86_64", "x86-64") + level + extras


def _device_id(p: "cl.Platform", d: "cl.Device") -> DeviceId:
    is_cpu = bool(d.type & cl.device_type.CPU)
    if is_cpu:
        arch = _cpu_isa()
    else:
        arch = d.name.strip()
        try:   # cl_intel_device_attribute_query: the GPU's IP version
            if "cl_intel_device_attribute_query" in d.extensions:
                arch = f"ip-{d.get_info(0x4250):#x}"
        except (cl.Error, TypeError, ValueError):
            pass
    return DeviceId(backend=BACKEND, vendor=d.vendor.strip(), name=d.name.strip(), arch=arch,
                    driver_version=d.driver_version.strip(),
                    compiler_version=f"{p.version.strip()}; {d.version.strip()}")


def _type_name(d: "cl.Device") -> str:
    t = d.type
    return "cpu" if t & cl.device_type.CPU else "gpu" if t & cl.device_type.GPU else "accelerator"


def list_devices() -> list[DeviceInfo]:
    out = []
    for i, (p, d) in enumerate(_platform_devices()):
        spirv = _spirv_versions(d)
        out.append(DeviceInfo(
            target=f"opencl:{i}", id=_device_id(p, d), type=_type_name(d), usable=bool(spirv),
            note="" if spirv else "no SPIR-V support (cl_khr_il_program)",
            details={"platform": p.name.strip(),
                     "spirv": [f"{a}.{b}" for a, b in spirv]}))
    return out


def _select(target: Target) -> tuple[int, "cl.Platform", "cl.Device"]:
    pds = _platform_devices()
    sel = target.selector.lower()
    if sel.isdigit():
        i = int(sel)
        if i >= len(pds):
            if not pds:
                raise RuntimeNotFound(f"{target}: no OpenCL device found; {INSTALL_HINT}")
            raise TargetError(f"{target}: there are only {len(pds)} OpenCL devices (see `kernbin devices`)")
        if not _spirv_versions(pds[i][1]):
            raise RuntimeNotFound(f"{target}: {pds[i][1].name.strip()} does not accept SPIR-V; {INSTALL_HINT}")
        return (i, *pds[i])
    if sel not in ("cpu", "gpu"):
        raise TargetError(f"bad target {target}: use opencl:cpu, opencl:gpu or opencl:N")
    for i, (p, d) in enumerate(pds):
        if _type_name(d) == sel and _spirv_versions(d):
            return i, p, d
    seen = ", ".join(f"{d.name.strip()} ({p.name.strip()})" for p, d in pds) or "none"
    raise RuntimeNotFound(f"{target}: no OpenCL {sel.upper()} device with SPIR-V support found "
                          f"(devices seen: {seen}); {INSTALL_HINT}")


_open: dict[int, "OpenCLDevice"] = {}


def open_device(target: "Target | str") -> "OpenCLDevice":
    """A live device (context + in-order queue), shared within the process."""
    target = parse_target(target)
    index, p, d = _select(target)
    dev = _open.get(index)
    if dev is None:
        dev = _open[index] = OpenCLDevice(target, p, d)
    return dev


class OpenCLDevice(Device):
    def __init__(self, target: Target, p: "cl.Platform", d: "cl.Device"):
        self.target = target
        self.platform, self.cl_device = p, d
        self.id = _device_id(p, d)
        self.spirv = _spirv_versions(d)
        self.context = cl.Context([d])
        self.queue = cl.CommandQueue(self.context, d)

    @property
    def handle(self):
        return self.cl_device

    def _tools(self) -> dict[str, str]:
        from .. import __version__
        return {"kernbin": __version__, "pyopencl": cl.VERSION_TEXT,
                "runtime": f"{self.platform.name.strip()} {self.platform.version.strip()}",
                "driver": self.id.driver_version}

    def _build_log(self, prg) -> str:
        try:
            return (prg.get_build_info(self.cl_device, cl.program_build_info.LOG) or "").strip()
        except cl.Error:
            return ""

    def build(self, ir: SpirvModule, options: str = "") -> NativeBinary:
        if ir.version not in self.spirv:
            accepted = ", ".join(f"{a}.{b}" for a, b in self.spirv)
            raise BuildError(BACKEND, "clCreateProgramWithIL", None, None,
                             f"SPIR-V {ir.version[0]}.{ir.version[1]} is not accepted by "
                             f"{self.id.name} (accepts {accepted})", options=options)
        t0 = time.perf_counter()
        try:
            prg = _cl._create_program_with_il(self.context, ir.data)
        except cl.Error as e:
            raise _api_error(e, "clCreateProgramWithIL", BuildError, options=options) from None
        try:
            _quiet_build(prg, options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e, "clBuildProgram", BuildError, log=self._build_log(prg),
                             options=options) from None
        seconds = time.perf_counter() - t0
        binary = prg.get_info(cl.program_info.BINARIES)[0]
        kernels = tuple(KernelInfo(k.function_name, _kernel_attributes(k, self.cl_device))
                        for k in prg.all_kernels())
        info = BuildInfo(target=str(self.target), device=self.id, ir_kind=ir.kind, ir_sha256=ir.sha256,
                         options=options, binary_format=self._binary_format(), kernels=kernels,
                         tools=self._tools(), build_log=self._build_log(prg), build_seconds=round(seconds, 6))
        return NativeBinary(binary=bytes(binary), info=info, ir=ir)

    def _binary_format(self) -> str:
        return "opencl-cpu-elf" if _type_name(self.cl_device) == "cpu" else "opencl-binary"

    def check_native(self, binary: bytes) -> str | None:
        if self._binary_format() == "opencl-cpu-elf" and "Intel" in self.platform.name:
            return opencl_elf.quick_check(binary)
        return None if binary else "empty binary"

    def load_ir(self, ir: SpirvModule, options: str = "") -> "OpenCLModule":
        try:
            prg = _cl._create_program_with_il(self.context, ir.data)
            _quiet_build(prg, options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e, cls=BuildError, options=options) from None
        return OpenCLModule(self, None, prg)

    def load_binary(self, binary: bytes, options: str = "") -> "OpenCLModule":
        try:
            prg = _cl._Program(self.context, [self.cl_device], [binary])
            _quiet_build(prg, options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e) from None
        return OpenCLModule(self, None, prg)

    def load_native(self, native: NativeBinary) -> "OpenCLModule":
        try:
            prg = _cl._Program(self.context, [self.cl_device], [native.binary])
        except cl.Error as e:
            raise _api_error(e, "clCreateProgramWithBinary") from None
        try:
            _quiet_build(prg, native.info.options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e, "clBuildProgram", BuildError, log=self._build_log(prg),
                             options=native.info.options) from None
        return OpenCLModule(self, native, prg)


def _quiet_build(prg, options: str, dev) -> None:
    # pyopencl turns a non-empty build log into a CompilerWarning; kernbin keeps the log itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cl.CompilerWarning)
        prg.build(options.encode(), [dev])


def _kernel_attributes(k: "cl.Kernel", dev: "cl.Device") -> dict[str, int]:
    wgi = cl.kernel_work_group_info
    out = {}
    for key, param in (("max_work_group_size", wgi.WORK_GROUP_SIZE),
                       ("preferred_work_group_size_multiple", wgi.PREFERRED_WORK_GROUP_SIZE_MULTIPLE),
                       ("private_mem_size", wgi.PRIVATE_MEM_SIZE),
                       ("local_mem_size", wgi.LOCAL_MEM_SIZE)):
        try:
            out[key] = int(k.get_work_group_info(param, dev))
        except cl.Error:
            continue
    out["num_args"] = int(k.get_info(cl.kernel_info.NUM_ARGS))
    return out


class OpenCLModule(Module):
    def __init__(self, device: OpenCLDevice, native: NativeBinary | None, program):
        super().__init__(device, native)
        self.program = program
        names = native.kernel_names if native is not None else ()
        if not names:
            names = tuple(k.function_name for k in program.all_kernels())
        self._names = names

    @property
    def handle(self):
        return self.program

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return self._names

    def _make_kernel(self, name: str) -> "OpenCLKernel":
        try:
            k = cl.Kernel(self.program, name)
        except cl.Error as e:
            raise _api_error(e, "clCreateKernel") from None
        return OpenCLKernel(self.device, name, k)


class OpenCLKernel(Kernel):
    def __init__(self, device: OpenCLDevice, name: str, handle: "cl.Kernel"):
        self.device, self.name, self.handle = device, name, handle
        self._attributes = None
        self._num_args = int(handle.get_info(cl.kernel_info.NUM_ARGS))

    @property
    def attributes(self) -> dict[str, int]:
        if self._attributes is None:
            self._attributes = _kernel_attributes(self.handle, self.device.cl_device)
        return dict(self._attributes)

    def launch(self, global_size, local_size, *args) -> None:
        gs, ls = launch_sizes(global_size, "global size"), launch_sizes(local_size, "local size")
        if ls is not None and len(ls) != len(gs):
            raise LaunchError(f"local size {ls} and global size {gs} differ in dimensions")
        if len(args) != self._num_args:
            raise LaunchError(f"kernel {self.name} takes {self._num_args} arguments, {len(args)} given")
        ctx, queue = self.device.context, self.device.queue
        mf = cl.mem_flags
        cl_args, copy_back = [], []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise LaunchError(f"argument {i}: array must be C-contiguous")
                buf = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=a) if a.nbytes else \
                    cl.Buffer(ctx, mf.READ_WRITE, 1)
                cl_args.append(buf)
                if a.flags.writeable and a.nbytes:
                    copy_back.append((a, buf))
            elif isinstance(a, LocalMemory):
                cl_args.append(cl.LocalMemory(a.nbytes))
            elif isinstance(a, np.generic):
                cl_args.append(a)
            else:
                raise LaunchError(f"argument {i}: pass numpy arrays, numpy scalars (e.g. np.int32(n)) "
                                  f"or kernbin.LocalMemory, not {type(a).__name__}")
        try:
            self.handle.set_args(*cl_args)
            cl.enqueue_nd_range_kernel(queue, self.handle, gs, ls)
            for a, buf in copy_back:
                cl.enqueue_copy(queue, a, buf)
            queue.finish()
        except cl.Error as e:
            raise _api_error(e) from None
