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
from ..device import DeviceId, Requirements, Toolchain, ip_version_text
from ..errors import BuildError, InvalidBinary, LaunchError, RuntimeAPIError, RuntimeNotFound, TargetError
from ..formats import opencl_elf, zebin as zefmt
from ..ir import IR
from ..options import BuildOptions
from ..target import Target
from . import _intel
from ._icd import wire_intel_cpu_runtime
from ._launch import HostArrays, classify
from .base import Backend, Device, DeviceInfo, Fit, Kernel, Module, exact_match

__all__ = ["OpenCLBackend", "OpenCLDevice", "wire_intel_cpu_runtime", "INSTALL_HINT"]

BACKEND = "opencl"
INSTALL_HINT = ("install Intel's CPU OpenCL runtime: pip install intel-opencl-rt intel-cmplr-lib-rt "
                "(or a GPU driver with SPIR-V support)")


wire_intel_cpu_runtime()
try:
    import pyopencl as cl
    from pyopencl import _cl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise RuntimeNotFound(f"OpenCL targets need pyopencl ({e}): pip install 'kernbin[opencl]' (or "
                          f"'kernbin[cpu]' for Intel's CPU OpenCL runtime too)") from e

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
    facts = {"platform": p.name.strip()}
    if is_cpu:
        arch = _cpu_isa()
    else:
        arch = d.name.strip()
        try:   # cl_intel_device_attribute_query: CL_DEVICE_IP_VERSION_INTEL
            if "cl_intel_device_attribute_query" in d.extensions:
                facts["ip_version"] = ip_version_text(int(d.get_info(0x4250)))
                arch = f"ip {facts['ip_version']}"
        except (cl.Error, TypeError, ValueError):
            pass
    return DeviceId(backend=BACKEND, vendor=d.vendor.strip(), name=d.name.strip(), arch=arch,
                    driver_version=d.driver_version.strip(),
                    compiler_version=f"{p.version.strip()}; {d.version.strip()}", facts=facts)


def _type_name(d: "cl.Device") -> str:
    t = d.type
    return "cpu" if t & cl.device_type.CPU else "gpu" if t & cl.device_type.GPU else "accelerator"


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


class OpenCLBackend(Backend):
    """OpenCL through pyopencl: SPIR-V -> ``CL_PROGRAM_BINARIES`` -> ``clCreateProgramWithBinary``."""
    name = BACKEND
    register_file_flags = _intel.OPENCL_REGISTER_FILE_FLAGS
    register_file_spellings = _intel.REGISTER_FILE_SPELLINGS

    def __init__(self):
        self._open: dict[int, OpenCLDevice] = {}

    def list_devices(self) -> list[DeviceInfo]:
        out = []
        for i, (p, d) in enumerate(_platform_devices()):
            spirv = _spirv_versions(d)
            out.append(DeviceInfo(
                target=f"opencl:{i}", id=_device_id(p, d), type=_type_name(d), usable=bool(spirv),
                note="" if spirv else "no SPIR-V support (cl_khr_il_program)",
                details={"platform": p.name.strip(), "spirv": [f"{a}.{b}" for a, b in spirv]}))
        return out

    def open(self, target: Target) -> "OpenCLDevice":
        """A live device (context + in-order queue), shared within the process."""
        index, p, d = _select(target)
        dev = self._open.get(index)
        if dev is None:
            dev = self._open[index] = OpenCLDevice(self, target, p, d)
        return dev

    def can_run(self, info, device: "OpenCLDevice") -> Fit:
        req = info.requires
        if req.kind == "opencl-runtime":
            return exact_match(req.values, device.requirements_for_own_binaries().values, "runtime",
                               "built for another OpenCL runtime or device")
        if req.kind in ("intel-gpu", "intel-gpu-fat"):
            return _intel.can_run(info, device)
        return Fit(False, f"an OpenCL device cannot run a {req.kind} binary", "kind")


class OpenCLDevice(Device):
    def __init__(self, backend: OpenCLBackend, target: Target, p: "cl.Platform", d: "cl.Device"):
        self.backend, self.target = backend, target
        self.platform, self.cl_device = p, d
        self.id = _device_id(p, d)
        self.spirv = _spirv_versions(d)
        self.context = cl.Context([d])
        self.queue = cl.CommandQueue(self.context, d)
        self._decoder: tuple[str | None] | None = None

    @property
    def handle(self):
        return self.cl_device

    @property
    def toolchain(self) -> Toolchain:
        from .. import __version__
        return Toolchain(BACKEND, f"{self.platform.name.strip()}: {self.id.compiler_version}", self.id.driver_version,
                         {"kernbin": __version__, "pyopencl": cl.VERSION_TEXT})

    @property
    def register_file_flags(self):
        """Intel GPUs have register-file modes; a CPU does not."""
        return self.backend.register_file_flags if _type_name(self.cl_device) == "gpu" and \
            "Intel" in self.platform.name else {}

    def requirements_for_own_binaries(self, binary: bytes | None = None) -> Requirements:
        """What a binary this device's runtime made needs: a zebin (Intel GPU) runs on any device
        of its IP; anything else only on this exact runtime and device."""
        if binary is not None and zefmt.is_zebin(binary) and self.id.facts.get("ip_version"):
            return zefmt.requirements(binary, self.id.name, self.id.facts["ip_version"])
        return Requirements("opencl-runtime", {"platform": self.platform.name.strip(), "device": self.id.name,
                                               "arch": self.id.arch, "driver": self.id.driver_version,
                                               "runtime": self.id.compiler_version})

    def zebin_decoder_version(self) -> str | None:
        """The ``.ze_info`` version this runtime writes (and so decodes), found once by building a
        tiny kernel; None when its binaries are not zebin."""
        if self._decoder is None:
            version = None
            try:
                from ..samples import probe_spirv
                prg = _cl._create_program_with_il(self.context, probe_spirv())
                _quiet_build(prg, "", self.cl_device)
                binary = bytes(prg.get_info(cl.program_info.BINARIES)[0])
                if zefmt.is_zebin(binary):
                    version = zefmt.parse_zebin(binary).ze_info_version or None
            except Exception:        # noqa: BLE001 - unknown stays unknown
                version = None
            self._decoder = (version,)
        return self._decoder[0]

    def _build_log(self, prg) -> str:
        try:
            return (prg.get_build_info(self.cl_device, cl.program_build_info.LOG) or "").strip()
        except cl.Error:
            return ""

    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        options = " ".join(flags)
        if ir.kind != "spirv":
            raise BuildError(BACKEND, "clCreateProgramWithIL", None, None,
                             f"OpenCL builds SPIR-V, not {ir.kind}", options=options)
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
        binary = bytes(prg.get_info(cl.program_info.BINARIES)[0])
        kernels = tuple(KernelInfo(k.function_name, _kernel_attributes(k, self.cl_device))
                        for k in prg.all_kernels())
        fmt = "zebin" if zefmt.is_zebin(binary) else self._binary_format()
        info = BuildInfo(target=str(self.target), toolchain=self.toolchain,
                         requires=self.requirements_for_own_binaries(binary), ir_kind=ir.kind,
                         ir_sha256=ir.sha256, options=BuildOptions(tuple(flags)), flags=tuple(flags),
                         binary_format=fmt, kernels=kernels, built_on=self.id.describe(),
                         build_log=self._build_log(prg), build_seconds=round(seconds, 6))
        return NativeBinary(binary=binary, info=info, ir=ir)

    def _binary_format(self) -> str:
        return "opencl-cpu-elf" if _type_name(self.cl_device) == "cpu" else "opencl-binary"

    def payload(self, native: NativeBinary, fit: Fit) -> bytes:
        if native.requires.kind in ("intel-gpu", "intel-gpu-fat"):
            return _intel.payload(native.binary, fit)
        if self._binary_format() == "opencl-cpu-elf" and "Intel" in self.platform.name:
            problem = opencl_elf.quick_check(native.binary)
            if problem:
                raise InvalidBinary(problem, rule="device-binary")
        return super().payload(native, fit)

    def load_ir(self, ir: IR, flags: tuple[str, ...] = ()) -> "OpenCLModule":
        options = " ".join(flags)
        try:
            prg = _cl._create_program_with_il(self.context, ir.data)
            _quiet_build(prg, options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e, cls=BuildError, options=options) from None
        return OpenCLModule(self, None, prg)

    def load_binary(self, binary: bytes, flags: tuple[str, ...] = ()) -> "OpenCLModule":
        try:
            prg = _cl._Program(self.context, [self.cl_device], [binary])
            _quiet_build(prg, " ".join(flags), self.cl_device)
        except cl.Error as e:
            raise _api_error(e) from None
        return OpenCLModule(self, None, prg)

    def load_native(self, native: NativeBinary, payload: bytes | None = None) -> "OpenCLModule":
        data = native.binary if payload is None else payload
        options = native.info.flags_text
        try:
            prg = _cl._Program(self.context, [self.cl_device], [data])
        except cl.Error as e:
            raise _api_error(e, "clCreateProgramWithBinary") from None
        try:
            _quiet_build(prg, options, self.cl_device)
        except cl.Error as e:
            raise _api_error(e, "clBuildProgram", BuildError, log=self._build_log(prg), options=options) from None
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
        try:      # what the runtime says the program defines, not what a header claims
            names = tuple(n for n in program.get_info(cl.program_info.KERNEL_NAMES).split(";") if n)
        except cl.Error:
            names = tuple(k.function_name for k in program.all_kernels())
        self._names = names

    @property
    def handle(self):
        """The ``cl_program`` (pyopencl object)."""
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

    def _launch(self, gs, ls, config, args) -> None:
        plan = classify(args, self._num_args, self.name)
        ctx, queue, mf = self.device.context, self.device.queue, cl.mem_flags
        queue = config.stream if config is not None and config.stream is not None else queue
        if config is not None and config.shared_mem_bytes:
            raise LaunchError("OpenCL kernels take local memory as kernbin.LocalMemory arguments, "
                              "not as LaunchConfig.shared_mem_bytes")
        try:
            with HostArrays(alloc=lambda n: cl.Buffer(ctx, mf.READ_WRITE, n),
                            write=lambda buf, a: cl.enqueue_copy(queue, buf, a, is_blocking=False),
                            read=lambda buf, a: cl.enqueue_copy(queue, a, buf, is_blocking=False),
                            alloc_with=lambda a: cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=a)) as host:
                cl_args = []
                for kind, value in plan:
                    if kind == "array":
                        cl_args.append(host.device(value))
                    elif kind == "local":
                        cl_args.append(cl.LocalMemory(value))
                    elif kind == "scalar":
                        cl_args.append(value[()])
                    else:
                        raise LaunchError("OpenCL takes buffers, not raw device pointers")
                self.handle.set_args(*cl_args)
                cl.enqueue_nd_range_kernel(queue, self.handle, gs, ls)
                host.copy_back()
                queue.finish()
        except cl.Error as e:
            raise _api_error(e) from None
