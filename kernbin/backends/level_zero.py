"""Level Zero backend: zeModuleCreate(SPIR-V) -> zeModuleGetNativeBinary -> zeModuleCreate(NATIVE).

Targets: ``level-zero:N`` (N-th device over all drivers, as ``kernbin devices`` lists).

Through a focused ctypes binding (:mod:`._ze`) to the real loader. The native binary is
exactly what the installed driver made; the spec promises such binaries only within one
driver instance, so the :class:`~kernbin.device.DeviceId` carries the driver version and
UUID, and kernbin rebuilds from the IR when they change (or when the driver answers
``ZE_RESULT_ERROR_INVALID_NATIVE_BINARY`` or ``ZE_RESULT_ERROR_MODULE_BUILD_FAILURE``).

Native means native: Intel's driver recompiles a native binary from the IR inside it when its
own checks fail, and says so only in the build log (``-Wrecompiled-from-ir``). Every native load
reads that log (``module.build_log``); a recompile sets ``module.driver_jit`` (what
:mod:`kernbin._jit` then does: a warning, or an error in strict mode), and the flag that would
hide the warning (``-Wno-recompiled-from-ir``) is never passed on a native load.

Safety: after a failed ``zeInit`` nothing else is called (the Debian loader with the
Intel GPU driver and no GPU crashes in ``zeDriverGet``), and on Linux the loader is not
even opened when there is no GPU device node and ``ZE_ENABLE_ALT_DRIVERS`` is unset.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import time
import weakref

from ..artifact import BuildInfo, KernelInfo, NativeBinary
from ..device import DeviceId, Requirements, Toolchain, ip_version_text
from ..errors import BuildError, LaunchError, RuntimeAPIError, RuntimeNotFound, TargetError
from ..formats import zebin as zefmt
from ..ir import IR
from ..options import BuildOptions
from ..target import Target
from . import _intel
from . import _ze as ze
from ._icd import wire_intel_cpu_runtime
from ._launch import HostArrays, classify
from .base import Backend, Device, DeviceInfo, Fit, Kernel, Module, exact_match

__all__ = ["LevelZeroBackend", "LevelZeroDevice", "INSTALL_HINT"]

BACKEND = "level-zero"
INSTALL_HINT = ("install the Level Zero loader (Debian/Ubuntu: apt-get install libze1) and a driver "
                "(Intel GPU: intel-level-zero-gpu / libze-intel-gpu1); without a GPU, kernbin's CPU test "
                "driver: ZE_ENABLE_ALT_DRIVERS=$(tools/ze_cpu_driver/build.sh)")
_VENDORS = {0x8086: "Intel(R) Corporation"}


class _Runtime:
    """The loader, initialised once per process; ``devices`` lists (driver, device) handles."""

    def __init__(self):
        self.lib = None
        self.error: str | None = None
        self.devices: list[tuple[int, int]] = []
        if sys.platform.startswith("linux") and not os.environ.get("ZE_ENABLE_ALT_DRIVERS") and not (
                glob.glob("/dev/dri/renderD*") or os.path.exists("/dev/dxg") or glob.glob("/dev/accel/accel*")):
            self.error = ("no GPU device node (/dev/dri/renderD*) and no ZE_ENABLE_ALT_DRIVERS: "
                          "not starting the Level Zero loader")
            return
        wire_intel_cpu_runtime()            # for drivers layered on OpenCL (the CPU test driver)
        try:
            self.lib = ze.load_loader()
        except OSError as e:
            self.error = f"Level Zero loader not found ({e})"
            return
        rc = self.lib.zeInit(0)
        if rc != ze.ZE_RESULT_SUCCESS:
            # nothing else may be called now: zeDriverGet after a failed zeInit can crash the loader
            self.error = f"zeInit failed: {ze.result_name(rc)} (no usable Level Zero driver)"
            self.lib = None
            return
        n = ctypes.c_uint32(0)
        _check(self.lib.zeDriverGet(ctypes.byref(n), None), "zeDriverGet")
        drivers = (ctypes.c_void_p * max(n.value, 1))()
        _check(self.lib.zeDriverGet(ctypes.byref(n), drivers), "zeDriverGet")
        for d in range(n.value):
            m = ctypes.c_uint32(0)
            _check(self.lib.zeDeviceGet(drivers[d], ctypes.byref(m), None), "zeDeviceGet")
            devs = (ctypes.c_void_p * max(m.value, 1))()
            _check(self.lib.zeDeviceGet(drivers[d], ctypes.byref(m), devs), "zeDeviceGet")
            self.devices.extend((drivers[d], devs[i]) for i in range(m.value))


_runtime: _Runtime | None = None


def _rt() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime()
    return _runtime


def _check(rc: int, call: str, cls=RuntimeAPIError, **kw) -> None:
    if rc != ze.ZE_RESULT_SUCCESS:
        raise cls(BACKEND, call, rc, ze.result_name(rc), **kw)


def _props(lib, driver, device) -> dict:
    dp = ze.ze_driver_properties_t(stype=ze.ZE_STRUCTURE_TYPE_DRIVER_PROPERTIES)
    _check(lib.zeDriverGetProperties(driver, ctypes.byref(dp)), "zeDriverGetProperties")
    ip = ze.ze_device_ip_version_ext_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT)
    p = ze.ze_device_properties_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES,
                                  pNext=ctypes.cast(ctypes.pointer(ip), ctypes.c_void_p))
    _check(lib.zeDeviceGetProperties(device, ctypes.byref(p)), "zeDeviceGetProperties")
    mp = ze.ze_device_module_properties_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_MODULE_PROPERTIES)
    _check(lib.zeDeviceGetModuleProperties(device, ctypes.byref(mp)), "zeDeviceGetModuleProperties")
    spirv = mp.spirvVersionSupported
    return {"name": p.name.decode("utf-8", "replace").strip(), "vendor_id": p.vendorId, "device_id": p.deviceId,
            "type": {ze.ZE_DEVICE_TYPE_GPU: "gpu", ze.ZE_DEVICE_TYPE_CPU: "cpu"}.get(p.type, "accelerator"),
            "ip_version": ip.ipVersion, "device_uuid": bytes(p.uuid.id).hex(),
            "driver_version": dp.driverVersion, "driver_uuid": bytes(dp.uuid.id).hex(),
            "spirv": (spirv >> 16, spirv & 0xFFFF)}


def _device_id(props: dict) -> DeviceId:
    ip = ip_version_text(props["ip_version"]) if props["ip_version"] else ""
    arch = f"ip {ip}" if ip else f"device {props['device_id']:#x}"
    vendor = _VENDORS.get(props["vendor_id"], f"vendor {props['vendor_id']:#06x}")
    return DeviceId(backend=BACKEND, vendor=vendor, name=props["name"], arch=arch,
                    driver_version=f"{props['driver_version']:#x}",
                    compiler_version=f"driver {props['driver_uuid']}",
                    facts={"ip_version": ip, "driver_uuid": props["driver_uuid"]})


class LevelZeroBackend(Backend):
    """Level Zero through the real loader: zeModuleCreate(SPIR-V) -> zeModuleGetNativeBinary ->
    zeModuleCreate(NATIVE)."""
    name = BACKEND
    register_file_flags = _intel.LEVEL_ZERO_REGISTER_FILE_FLAGS
    register_file_spellings = _intel.REGISTER_FILE_SPELLINGS

    def __init__(self):
        self._open: dict[int, LevelZeroDevice] = {}

    def list_devices(self) -> list[DeviceInfo]:
        rt = _rt()
        out = []
        for i, (drv, dev) in enumerate(rt.devices):
            p = _props(rt.lib, drv, dev)
            out.append(DeviceInfo(target=f"level-zero:{i}", id=_device_id(p), type=p["type"], usable=True,
                                  details={"spirv": ["%d.%d" % p["spirv"]], "device_uuid": p["device_uuid"]}))
        return out

    def open(self, target: Target) -> "LevelZeroDevice":
        """A live device (context, immediate command list, event), shared within the process."""
        rt = _rt()
        if rt.error:
            raise RuntimeNotFound(f"{target}: {rt.error}; {INSTALL_HINT}")
        i = int(target.selector)
        if i >= len(rt.devices):
            if not rt.devices:
                raise RuntimeNotFound(f"{target}: no Level Zero device; {INSTALL_HINT}")
            raise TargetError(f"{target}: there are only {len(rt.devices)} Level Zero devices "
                              f"(see `kernbin devices`)", str(target))
        dev = self._open.get(i)
        if dev is None:
            dev = self._open[i] = LevelZeroDevice(self, target, rt.lib, *rt.devices[i])
        return dev

    def can_run(self, info, device: "LevelZeroDevice") -> Fit:
        req = info.requires
        if req.kind in ("intel-gpu", "intel-gpu-fat"):
            return _intel.can_run(info, device)
        if req.kind == "level-zero-driver":
            # not a zebin: the spec promises native binaries only within one driver instance
            return exact_match(req.values, device.requirements_for_own_binaries().values, "driver",
                               "made by another Level Zero driver or device")
        return Fit(False, f"a Level Zero device cannot run a {req.kind} binary", "kind")


def _release(lib, calls):
    for fn, handle in calls:
        if handle:
            getattr(lib, fn)(handle)


class LevelZeroDevice(Device):
    reports_recompile = True            # load_native reads the build log (-Wrecompiled-from-ir)

    def __init__(self, backend: LevelZeroBackend, target: Target, lib, driver, device):
        self.backend, self.target, self.lib, self.driver, self.device = backend, target, lib, driver, device
        self._decoder: tuple[str | None] | None = None
        self.props = _props(lib, driver, device)
        self.id = _device_id(self.props)
        ctx, cl_, pool, ev = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.zeContextCreate(driver, ctypes.byref(ze.ze_context_desc_t(stype=ze.ZE_STRUCTURE_TYPE_CONTEXT_DESC)),
                                   ctypes.byref(ctx)), "zeContextCreate")
        self.context = ctx.value
        qd = ze.ze_command_queue_desc_t(stype=ze.ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC, ordinal=0, index=0,
                                        mode=ze.ZE_COMMAND_QUEUE_MODE_SYNCHRONOUS)
        _check(lib.zeCommandListCreateImmediate(self.context, device, ctypes.byref(qd), ctypes.byref(cl_)),
               "zeCommandListCreateImmediate")
        self.cmdlist = cl_.value
        pd = ze.ze_event_pool_desc_t(stype=ze.ZE_STRUCTURE_TYPE_EVENT_POOL_DESC,
                                     flags=ze.ZE_EVENT_POOL_FLAG_HOST_VISIBLE, count=1)
        _check(lib.zeEventPoolCreate(self.context, ctypes.byref(pd), 1, ctypes.byref(ctypes.c_void_p(device)),
                                     ctypes.byref(pool)), "zeEventPoolCreate")
        self.event_pool = pool.value
        ed = ze.ze_event_desc_t(stype=ze.ZE_STRUCTURE_TYPE_EVENT_DESC, index=0, signal=ze.ZE_EVENT_SCOPE_FLAG_HOST,
                                wait=ze.ZE_EVENT_SCOPE_FLAG_HOST)
        _check(lib.zeEventCreate(self.event_pool, ctypes.byref(ed), ctypes.byref(ev)), "zeEventCreate")
        self.event = ev.value
        self._finalizer = weakref.finalize(self, _release, lib, [
            ("zeEventDestroy", self.event), ("zeEventPoolDestroy", self.event_pool),
            ("zeCommandListDestroy", self.cmdlist), ("zeContextDestroy", self.context)])

    @property
    def handle(self):
        return self.device

    # -- modules -------------------------------------------------------------------
    def _create_module(self, fmt: int, data: bytes, options: str, call: str) -> int:
        """zeModuleCreate; the build log is kept on ``self._last_log``."""
        return self._create_module_logged(fmt, data, options, call)[0]

    def _create_module_logged(self, fmt: int, data: bytes, options: str, call: str) -> tuple[int, str]:
        """zeModuleCreate and its build log (read and released here)."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        desc = ze.ze_module_desc_t(stype=ze.ZE_STRUCTURE_TYPE_MODULE_DESC, format=fmt, inputSize=len(data),
                                   pInputModule=buf, pBuildFlags=options.encode())
        module, log = ctypes.c_void_p(), ctypes.c_void_p()
        rc = self.lib.zeModuleCreate(self.context, self.device, ctypes.byref(desc), ctypes.byref(module),
                                     ctypes.byref(log))
        text = self._log(log.value)
        if rc != ze.ZE_RESULT_SUCCESS:
            cls = BuildError if fmt == ze.ZE_MODULE_FORMAT_IL_SPIRV else RuntimeAPIError
            kw = {"options": options} if cls is BuildError else {}
            raise cls(BACKEND, call, rc, ze.result_name(rc), "", log=text, **kw)
        self._last_log = text
        return module.value, text

    def _log(self, handle) -> str:
        if not handle:
            return ""
        try:
            size = ctypes.c_size_t(0)
            if self.lib.zeModuleBuildLogGetString(handle, ctypes.byref(size), None) != ze.ZE_RESULT_SUCCESS:
                return ""
            buf = ctypes.create_string_buffer(size.value)
            self.lib.zeModuleBuildLogGetString(handle, ctypes.byref(size), buf)
            return buf.value.decode("utf-8", "replace").strip()
        finally:
            self.lib.zeModuleBuildLogDestroy(handle)

    def _kernel_names(self, module) -> tuple[str, ...]:
        n = ctypes.c_uint32(0)
        _check(self.lib.zeModuleGetKernelNames(module, ctypes.byref(n), None), "zeModuleGetKernelNames")
        names = (ctypes.c_char_p * max(n.value, 1))()
        _check(self.lib.zeModuleGetKernelNames(module, ctypes.byref(n), names), "zeModuleGetKernelNames")
        return tuple(names[i].decode() for i in range(n.value))

    @property
    def toolchain(self) -> Toolchain:
        from .. import __version__
        api = ctypes.c_uint32(0)
        self.lib.zeDriverGetApiVersion(self.driver, ctypes.byref(api))
        return Toolchain(BACKEND, f"driver {self.props['driver_uuid']}", self.id.driver_version,
                         {"kernbin": __version__, "level_zero_api": f"{api.value >> 16}.{api.value & 0xFFFF}"})

    def requirements_for_own_binaries(self, binary: bytes | None = None) -> Requirements:
        """A zebin runs on any device of its IP whose runtime decodes its version; anything else
        (a driver's private format) only within this driver, on this device."""
        ip = self.id.facts.get("ip_version", "")
        if binary is not None and ip and zefmt.is_zebin(binary):
            return zefmt.requirements(binary, self.id.name, ip)
        return Requirements("level-zero-driver", {"driver_version": self.id.driver_version,
                                                  "driver_uuid": self.props["driver_uuid"],
                                                  "device": self.id.name, "ip_version": ip})

    def zebin_decoder_version(self) -> str | None:
        """The ``.ze_info`` version this driver writes (and so decodes), found once per process by
        building a tiny kernel; None when its native binaries are not zebin."""
        if self._decoder is None:
            version = None
            try:
                from ..samples import probe_spirv
                module = self._create_module(ze.ZE_MODULE_FORMAT_IL_SPIRV, probe_spirv(), "", "zeModuleCreate")
                try:
                    binary = self._native_binary(module)
                finally:
                    self.lib.zeModuleDestroy(module)
                if zefmt.is_zebin(binary):
                    version = zefmt.parse_zebin(binary).ze_info_version or None
            except Exception:         # noqa: BLE001 - unknown stays unknown
                version = None
            self._decoder = (version,)
        return self._decoder[0]

    def _native_binary(self, module) -> bytes:
        size = ctypes.c_size_t(0)
        _check(self.lib.zeModuleGetNativeBinary(module, ctypes.byref(size), None), "zeModuleGetNativeBinary")
        buf = (ctypes.c_uint8 * size.value)()
        _check(self.lib.zeModuleGetNativeBinary(module, ctypes.byref(size), buf), "zeModuleGetNativeBinary")
        return bytes(buf[:size.value])

    def build(self, ir: IR, flags: tuple[str, ...] = ()) -> NativeBinary:
        options = " ".join(flags)
        if ir.kind != "spirv":
            raise BuildError(BACKEND, "zeModuleCreate", None, None, f"Level Zero builds SPIR-V, not {ir.kind}",
                             options=options)
        if ir.version > self.props["spirv"]:
            raise BuildError(BACKEND, "zeModuleCreate", None, None,
                             f"SPIR-V {ir.version[0]}.{ir.version[1]} is newer than the driver accepts "
                             f"({self.props['spirv'][0]}.{self.props['spirv'][1]})", options=options)
        t0 = time.perf_counter()
        module = self._create_module(ze.ZE_MODULE_FORMAT_IL_SPIRV, ir.data, options, "zeModuleCreate")
        try:
            seconds = time.perf_counter() - t0
            binary = self._native_binary(module)
            kernels = []
            for name in self._kernel_names(module):
                k = LevelZeroKernel(self, module, name)
                kernels.append(KernelInfo(name, k.attributes))
                k.close()
        finally:
            self.lib.zeModuleDestroy(module)
        extra = {"device_uuid": self.props["device_uuid"], "driver_uuid": self.props["driver_uuid"]}
        if zefmt.is_zebin(binary):
            extra["ir_embedded_in_binary"] = zefmt.parse_zebin(binary).has_ir
        info = BuildInfo(target=str(self.target), toolchain=self.toolchain,
                         requires=self.requirements_for_own_binaries(binary), ir_kind=ir.kind,
                         ir_sha256=ir.sha256, options=BuildOptions(tuple(flags)), flags=tuple(flags),
                         binary_format="zebin" if zefmt.is_zebin(binary) else "ze-native",
                         kernels=tuple(kernels), built_on=self.id.describe(), build_log=self._last_log,
                         build_seconds=round(seconds, 6), extra=extra)
        return NativeBinary(binary=binary, info=info, ir=ir)

    def payload(self, native: NativeBinary, fit: Fit) -> bytes:
        if native.requires.kind in ("intel-gpu", "intel-gpu-fat"):
            return _intel.payload(native.binary, fit)
        return super().payload(native, fit)

    def load_native(self, native: NativeBinary, payload: bytes | None = None) -> "LevelZeroModule":
        """zeModuleCreate(NATIVE) of verified bytes; the build log says whether the driver loaded
        them or recompiled them from IR (then ``module.driver_jit`` says so)."""
        data = native.binary if payload is None else payload
        handle, log = self._create_module_logged(ze.ZE_MODULE_FORMAT_NATIVE, data,
                                                 _intel.native_load_flags(native.info.flags),
                                                 "zeModuleCreate(native)")
        module = LevelZeroModule(self, native, handle)
        module.build_log = log
        said = _intel.recompiled_from_ir(log)
        if said:
            module.driver_jit = f"the driver recompiled the native binary from IR (build log: {said})"
        return module

    def load_ir(self, ir: IR, flags: tuple[str, ...] = ()) -> "LevelZeroModule":
        return LevelZeroModule(self, None, self._create_module(ze.ZE_MODULE_FORMAT_IL_SPIRV, ir.data,
                                                                " ".join(flags), "zeModuleCreate"))

    def load_binary(self, binary: bytes, flags: tuple[str, ...] = ()) -> "LevelZeroModule":
        return LevelZeroModule(self, None, self._create_module(ze.ZE_MODULE_FORMAT_NATIVE, binary,
                                                                " ".join(flags), "zeModuleCreate(native)"))


class LevelZeroModule(Module):
    def __init__(self, device: LevelZeroDevice, native: NativeBinary | None, handle):
        super().__init__(device, native)
        self.handle = handle
        self.build_log = ""                 # the driver's build log of a native load
        self._names = device._kernel_names(handle)
        self._finalizer = weakref.finalize(self, _release, device.lib, [("zeModuleDestroy", handle)])

    @property
    def kernel_names(self) -> tuple[str, ...]:
        return self._names

    def _make_kernel(self, name: str) -> "LevelZeroKernel":
        return LevelZeroKernel(self.device, self.handle, name, owner=self)


class LevelZeroKernel(Kernel):
    def __init__(self, device: LevelZeroDevice, module, name: str, owner=None):
        self.device, self.name, self._owner = device, name, owner      # owner keeps the module alive
        k = ctypes.c_void_p()
        desc = ze.ze_kernel_desc_t(stype=ze.ZE_STRUCTURE_TYPE_KERNEL_DESC, pKernelName=name.encode())
        _check(device.lib.zeKernelCreate(module, ctypes.byref(desc), ctypes.byref(k)), "zeKernelCreate")
        self.handle = k.value
        self._finalizer = weakref.finalize(self, _release, device.lib, [("zeKernelDestroy", self.handle)])
        p = ze.ze_kernel_properties_t(stype=ze.ZE_STRUCTURE_TYPE_KERNEL_PROPERTIES)
        _check(device.lib.zeKernelGetProperties(self.handle, ctypes.byref(p)), "zeKernelGetProperties")
        self._attributes = {
            "num_args": p.numKernelArgs, "private_mem_size": p.privateMemSize, "spill_bytes": p.spillMemSize,
            "local_mem_size": p.localMemSize, "max_subgroup_size": p.maxSubgroupSize,
            "max_num_subgroups": p.maxNumSubgroups, "required_group_size_x": p.requiredGroupSizeX,
            "required_group_size_y": p.requiredGroupSizeY, "required_group_size_z": p.requiredGroupSizeZ}

    def close(self) -> None:
        self._finalizer()

    @property
    def attributes(self) -> dict[str, int]:
        return dict(self._attributes)

    def _launch(self, gs, ls, config, args) -> None:
        lib, dev = self.device.lib, self.device
        plan = classify(args, self._attributes["num_args"], self.name)
        if config is not None and config.shared_mem_bytes:
            raise LaunchError("Level Zero kernels take local memory as kernbin.LocalMemory arguments, "
                              "not as LaunchConfig.shared_mem_bytes")
        gs3 = tuple(gs) + (1,) * (3 - len(gs))
        if ls is None:
            x, y, z = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_uint32()
            _check(lib.zeKernelSuggestGroupSize(self.handle, *gs3, ctypes.byref(x), ctypes.byref(y), ctypes.byref(z)),
                   "zeKernelSuggestGroupSize")
            ls3 = (x.value, y.value, z.value)
        else:
            ls3 = tuple(ls) + (1,) * (3 - len(ls))
        if any(g % l for g, l in zip(gs3, ls3)):
            raise LaunchError(f"global size {gs} is not a multiple of the group size {ls3[:len(gs)]} "
                              f"(Level Zero launches whole groups)")

        def alloc(nbytes):
            ptr = ctypes.c_void_p()
            desc = ze.ze_device_mem_alloc_desc_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC)
            _check(lib.zeMemAllocDevice(dev.context, ctypes.byref(desc), nbytes, 64, dev.device, ctypes.byref(ptr)),
                   "zeMemAllocDevice")
            return ptr.value

        def copy(dst, src, nbytes):
            _check(lib.zeCommandListAppendMemoryCopy(dev.cmdlist, ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes,
                                                     None, 0, None), "zeCommandListAppendMemoryCopy")

        keep = []
        with HostArrays(alloc=alloc, write=lambda p, a: copy(p, a.ctypes.data, a.nbytes),
                        read=lambda p, a: copy(a.ctypes.data, p, a.nbytes),
                        free=lambda p: lib.zeMemFree(dev.context, ctypes.c_void_p(p))) as host:
            for i, (kind, value) in enumerate(plan):
                if kind in ("array", "pointer"):
                    ptr = ctypes.c_void_p(host.device(value) if kind == "array" else value)
                    keep.append(ptr)
                    _check(lib.zeKernelSetArgumentValue(self.handle, i, ctypes.sizeof(ptr), ctypes.byref(ptr)),
                           "zeKernelSetArgumentValue")
                elif kind == "local":
                    _check(lib.zeKernelSetArgumentValue(self.handle, i, value, None), "zeKernelSetArgumentValue")
                else:
                    keep.append(value)
                    _check(lib.zeKernelSetArgumentValue(self.handle, i, value.nbytes,
                                                        value.ctypes.data_as(ctypes.c_void_p)),
                           "zeKernelSetArgumentValue")
            _check(lib.zeKernelSetGroupSize(self.handle, *ls3), "zeKernelSetGroupSize")
            _check(lib.zeEventHostReset(dev.event), "zeEventHostReset")
            groups = ze.ze_group_count_t(*(g // l for g, l in zip(gs3, ls3)))
            _check(lib.zeCommandListAppendLaunchKernel(dev.cmdlist, self.handle, ctypes.byref(groups), dev.event, 0,
                                                       None), "zeCommandListAppendLaunchKernel")
            _check(lib.zeEventHostSynchronize(dev.event, ze.UINT64_MAX), "zeEventHostSynchronize")
            host.copy_back()
