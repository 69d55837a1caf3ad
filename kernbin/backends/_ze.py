"""A focused ctypes binding to the Level Zero loader (``libze_loader.so.1``; ``ze_loader.dll``
by name on Windows, untested). Only what kernbin's Level Zero backend uses.

Structs and enums follow ``ze_api.h``; ``tests/test_level_zero.py`` compiles a C program
against the real header (Debian ``libze-dev``) and checks every struct's size and field
offsets, and every constant below, against these definitions. ``ze_device_ip_version_ext_t``
came with API 1.6 and is missing from older headers; it is checked against the spec's value.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import POINTER, Structure, c_char, c_char_p, c_int, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

__all__ = ["load_loader", "RESULTS", "result_name", "STRUCTS", "CONSTANTS"]

# -- constants (ze_api.h) -----------------------------------------------------------------
ZE_RESULT_SUCCESS = 0
ZE_RESULT_NOT_READY = 1
ZE_RESULT_ERROR_UNINITIALIZED = 0x78000001
ZE_RESULT_ERROR_MODULE_BUILD_FAILURE = 0x70000004
ZE_RESULT_ERROR_INVALID_NATIVE_BINARY = 0x7800000F
ZE_RESULT_ERROR_INVALID_SIZE = 0x78000008

ZE_STRUCTURE_TYPE_DRIVER_PROPERTIES = 0x1
ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES = 0x3
ZE_STRUCTURE_TYPE_DEVICE_MODULE_PROPERTIES = 0x5
ZE_STRUCTURE_TYPE_CONTEXT_DESC = 0xD
ZE_STRUCTURE_TYPE_COMMAND_QUEUE_DESC = 0xE
ZE_STRUCTURE_TYPE_EVENT_POOL_DESC = 0x10
ZE_STRUCTURE_TYPE_EVENT_DESC = 0x11
ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC = 0x15
ZE_STRUCTURE_TYPE_HOST_MEM_ALLOC_DESC = 0x16
ZE_STRUCTURE_TYPE_MODULE_DESC = 0x1B
ZE_STRUCTURE_TYPE_KERNEL_DESC = 0x1D
ZE_STRUCTURE_TYPE_KERNEL_PROPERTIES = 0x1E
ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT = 0x1000F      # API 1.6
ZE_MODULE_FORMAT_IL_SPIRV = 0
ZE_MODULE_FORMAT_NATIVE = 1
ZE_COMMAND_QUEUE_MODE_SYNCHRONOUS = 1
ZE_EVENT_POOL_FLAG_HOST_VISIBLE = 1 << 0
ZE_EVENT_SCOPE_FLAG_HOST = 1 << 2
ZE_DEVICE_TYPE_GPU, ZE_DEVICE_TYPE_CPU = 1, 2
ZE_MAX_DEVICE_NAME = 256
ZE_MAX_DRIVER_UUID_SIZE = 16
ZE_MAX_DEVICE_UUID_SIZE = 16
ZE_MAX_KERNEL_UUID_SIZE = 16
ZE_MAX_MODULE_UUID_SIZE = 16
ZE_MAX_NATIVE_KERNEL_UUID_SIZE = 16
UINT64_MAX = 0xFFFFFFFFFFFFFFFF

#: every constant above, for the header check
CONSTANTS = {k: v for k, v in dict(globals()).items() if k.startswith("ZE_") and isinstance(v, int)}
CONSTANTS_NOT_IN_OLD_HEADERS = {"ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT"}

RESULTS = {
    0: "ZE_RESULT_SUCCESS",
    1: "ZE_RESULT_NOT_READY",
    0x70000001: "ZE_RESULT_ERROR_DEVICE_LOST",
    0x70000002: "ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY",
    0x70000003: "ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY",
    0x70000004: "ZE_RESULT_ERROR_MODULE_BUILD_FAILURE",
    0x70000005: "ZE_RESULT_ERROR_MODULE_LINK_FAILURE",
    0x70000006: "ZE_RESULT_ERROR_DEVICE_REQUIRES_RESET",
    0x70000007: "ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE",
    0x7ff00001: "ZE_RESULT_EXP_ERROR_DEVICE_IS_NOT_VERTEX",
    0x7ff00002: "ZE_RESULT_EXP_ERROR_VERTEX_IS_NOT_DEVICE",
    0x7ff00003: "ZE_RESULT_EXP_ERROR_REMOTE_DEVICE",
    0x70010000: "ZE_RESULT_ERROR_INSUFFICIENT_PERMISSIONS",
    0x70010001: "ZE_RESULT_ERROR_NOT_AVAILABLE",
    0x70020000: "ZE_RESULT_ERROR_DEPENDENCY_UNAVAILABLE",
    0x70020001: "ZE_RESULT_WARNING_DROPPED_DATA",
    0x78000001: "ZE_RESULT_ERROR_UNINITIALIZED",
    0x78000002: "ZE_RESULT_ERROR_UNSUPPORTED_VERSION",
    0x78000003: "ZE_RESULT_ERROR_UNSUPPORTED_FEATURE",
    0x78000004: "ZE_RESULT_ERROR_INVALID_ARGUMENT",
    0x78000005: "ZE_RESULT_ERROR_INVALID_NULL_HANDLE",
    0x78000006: "ZE_RESULT_ERROR_HANDLE_OBJECT_IN_USE",
    0x78000007: "ZE_RESULT_ERROR_INVALID_NULL_POINTER",
    0x78000008: "ZE_RESULT_ERROR_INVALID_SIZE",
    0x78000009: "ZE_RESULT_ERROR_UNSUPPORTED_SIZE",
    0x7800000a: "ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT",
    0x7800000b: "ZE_RESULT_ERROR_INVALID_SYNCHRONIZATION_OBJECT",
    0x7800000c: "ZE_RESULT_ERROR_INVALID_ENUMERATION",
    0x7800000d: "ZE_RESULT_ERROR_UNSUPPORTED_ENUMERATION",
    0x7800000e: "ZE_RESULT_ERROR_UNSUPPORTED_IMAGE_FORMAT",
    0x7800000f: "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY",
    0x78000010: "ZE_RESULT_ERROR_INVALID_GLOBAL_NAME",
    0x78000011: "ZE_RESULT_ERROR_INVALID_KERNEL_NAME",
    0x78000012: "ZE_RESULT_ERROR_INVALID_FUNCTION_NAME",
    0x78000013: "ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION",
    0x78000014: "ZE_RESULT_ERROR_INVALID_GLOBAL_WIDTH_DIMENSION",
    0x78000015: "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX",
    0x78000016: "ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE",
    0x78000017: "ZE_RESULT_ERROR_INVALID_KERNEL_ATTRIBUTE_VALUE",
    0x78000018: "ZE_RESULT_ERROR_INVALID_MODULE_UNLINKED",
    0x78000019: "ZE_RESULT_ERROR_INVALID_COMMAND_LIST_TYPE",
    0x7800001a: "ZE_RESULT_ERROR_OVERLAPPING_REGIONS",
    0x7800001b: "ZE_RESULT_WARNING_ACTION_REQUIRED",
    0x7ffffffe: "ZE_RESULT_ERROR_UNKNOWN",
}


def result_name(code: int) -> str:
    return RESULTS.get(code & 0xFFFFFFFF, f"ZE_RESULT_0x{code & 0xFFFFFFFF:08x}")


# -- structs ------------------------------------------------------------------------------
class ze_driver_uuid_t(Structure):
    _fields_ = [("id", c_uint8 * ZE_MAX_DRIVER_UUID_SIZE)]


class ze_device_uuid_t(Structure):
    _fields_ = [("id", c_uint8 * ZE_MAX_DEVICE_UUID_SIZE)]


class ze_native_kernel_uuid_t(Structure):
    _fields_ = [("id", c_uint8 * ZE_MAX_NATIVE_KERNEL_UUID_SIZE)]


class ze_kernel_uuid_t(Structure):
    _fields_ = [("kid", c_uint8 * ZE_MAX_KERNEL_UUID_SIZE), ("mid", c_uint8 * ZE_MAX_MODULE_UUID_SIZE)]


class ze_driver_properties_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("uuid", ze_driver_uuid_t), ("driverVersion", c_uint32)]


class ze_device_properties_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("type", c_int), ("vendorId", c_uint32),
                ("deviceId", c_uint32), ("flags", c_uint32), ("subdeviceId", c_uint32),
                ("coreClockRate", c_uint32), ("maxMemAllocSize", c_uint64), ("maxHardwareContexts", c_uint32),
                ("maxCommandQueuePriority", c_uint32), ("numThreadsPerEU", c_uint32),
                ("physicalEUSimdWidth", c_uint32), ("numEUsPerSubslice", c_uint32),
                ("numSubslicesPerSlice", c_uint32), ("numSlices", c_uint32), ("timerResolution", c_uint64),
                ("timestampValidBits", c_uint32), ("kernelTimestampValidBits", c_uint32),
                ("uuid", ze_device_uuid_t), ("name", c_char * ZE_MAX_DEVICE_NAME)]


class ze_device_ip_version_ext_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("ipVersion", c_uint32)]


class ze_device_module_properties_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("spirvVersionSupported", c_uint32), ("flags", c_uint32),
                ("fp16flags", c_uint32), ("fp32flags", c_uint32), ("fp64flags", c_uint32),
                ("maxArgumentsSize", c_uint32), ("printfBufferSize", c_uint32),
                ("nativeKernelSupported", ze_native_kernel_uuid_t)]


class ze_context_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("flags", c_uint32)]


class ze_module_constants_t(Structure):
    _fields_ = [("numConstants", c_uint32), ("pConstantIds", POINTER(c_uint32)), ("pConstantValues", POINTER(c_void_p))]


class ze_module_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("format", c_int), ("inputSize", c_size_t),
                ("pInputModule", POINTER(c_uint8)), ("pBuildFlags", c_char_p),
                ("pConstants", POINTER(ze_module_constants_t))]


class ze_kernel_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("flags", c_uint32), ("pKernelName", c_char_p)]


class ze_kernel_properties_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("numKernelArgs", c_uint32),
                ("requiredGroupSizeX", c_uint32), ("requiredGroupSizeY", c_uint32), ("requiredGroupSizeZ", c_uint32),
                ("requiredNumSubGroups", c_uint32), ("requiredSubgroupSize", c_uint32),
                ("maxSubgroupSize", c_uint32), ("maxNumSubgroups", c_uint32), ("localMemSize", c_uint32),
                ("privateMemSize", c_uint32), ("spillMemSize", c_uint32), ("uuid", ze_kernel_uuid_t)]


class ze_command_queue_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("ordinal", c_uint32), ("index", c_uint32),
                ("flags", c_uint32), ("mode", c_int), ("priority", c_int)]


class ze_group_count_t(Structure):
    _fields_ = [("groupCountX", c_uint32), ("groupCountY", c_uint32), ("groupCountZ", c_uint32)]


class ze_host_mem_alloc_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("flags", c_uint32)]


class ze_device_mem_alloc_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("flags", c_uint32), ("ordinal", c_uint32)]


class ze_event_pool_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("flags", c_uint32), ("count", c_uint32)]


class ze_event_desc_t(Structure):
    _fields_ = [("stype", c_int), ("pNext", c_void_p), ("index", c_uint32), ("signal", c_uint32), ("wait", c_uint32)]


#: every struct the binding uses, for the header check
STRUCTS = [ze_driver_uuid_t, ze_device_uuid_t, ze_native_kernel_uuid_t, ze_kernel_uuid_t, ze_driver_properties_t,
           ze_device_properties_t, ze_device_ip_version_ext_t, ze_device_module_properties_t, ze_context_desc_t,
           ze_module_constants_t, ze_module_desc_t, ze_kernel_desc_t, ze_kernel_properties_t,
           ze_command_queue_desc_t, ze_group_count_t, ze_host_mem_alloc_desc_t, ze_device_mem_alloc_desc_t,
           ze_event_pool_desc_t, ze_event_desc_t]
STRUCTS_NOT_IN_OLD_HEADERS = {"ze_device_ip_version_ext_t"}

H = c_void_p          # every handle is an opaque pointer
_u32p, _szp = POINTER(c_uint32), POINTER(c_size_t)

#: name -> argument types (all return ze_result_t)
_SIGNATURES = {
    "zeInit": [c_uint32],
    "zeDriverGet": [_u32p, POINTER(H)],
    "zeDriverGetProperties": [H, POINTER(ze_driver_properties_t)],
    "zeDriverGetApiVersion": [H, _u32p],
    "zeDeviceGet": [H, _u32p, POINTER(H)],
    "zeDeviceGetProperties": [H, POINTER(ze_device_properties_t)],
    "zeDeviceGetModuleProperties": [H, POINTER(ze_device_module_properties_t)],
    "zeContextCreate": [H, POINTER(ze_context_desc_t), POINTER(H)],
    "zeContextDestroy": [H],
    "zeModuleCreate": [H, H, POINTER(ze_module_desc_t), POINTER(H), POINTER(H)],
    "zeModuleDestroy": [H],
    "zeModuleBuildLogGetString": [H, _szp, c_char_p],
    "zeModuleBuildLogDestroy": [H],
    "zeModuleGetNativeBinary": [H, _szp, POINTER(c_uint8)],
    "zeModuleGetKernelNames": [H, _u32p, POINTER(c_char_p)],
    "zeKernelCreate": [H, POINTER(ze_kernel_desc_t), POINTER(H)],
    "zeKernelDestroy": [H],
    "zeKernelGetProperties": [H, POINTER(ze_kernel_properties_t)],
    "zeKernelSetArgumentValue": [H, c_uint32, c_size_t, c_void_p],
    "zeKernelSetGroupSize": [H, c_uint32, c_uint32, c_uint32],
    "zeKernelSuggestGroupSize": [H, c_uint32, c_uint32, c_uint32, _u32p, _u32p, _u32p],
    "zeCommandListCreateImmediate": [H, H, POINTER(ze_command_queue_desc_t), POINTER(H)],
    "zeCommandListDestroy": [H],
    "zeCommandListAppendLaunchKernel": [H, H, POINTER(ze_group_count_t), H, c_uint32, POINTER(H)],
    "zeCommandListAppendMemoryCopy": [H, c_void_p, c_void_p, c_size_t, H, c_uint32, POINTER(H)],
    "zeCommandListAppendBarrier": [H, H, c_uint32, POINTER(H)],
    "zeMemAllocHost": [H, POINTER(ze_host_mem_alloc_desc_t), c_size_t, c_size_t, POINTER(c_void_p)],
    "zeMemAllocDevice": [H, POINTER(ze_device_mem_alloc_desc_t), c_size_t, c_size_t, H, POINTER(c_void_p)],
    "zeMemAllocShared": [H, POINTER(ze_device_mem_alloc_desc_t), POINTER(ze_host_mem_alloc_desc_t), c_size_t,
                         c_size_t, H, POINTER(c_void_p)],
    "zeMemFree": [H, c_void_p],
    "zeEventPoolCreate": [H, POINTER(ze_event_pool_desc_t), c_uint32, POINTER(H), POINTER(H)],
    "zeEventPoolDestroy": [H],
    "zeEventCreate": [H, POINTER(ze_event_desc_t), POINTER(H)],
    "zeEventDestroy": [H],
    "zeEventHostSynchronize": [H, c_uint64],
    "zeEventQueryStatus": [H],
    "zeEventHostReset": [H],
}


def load_loader(name: str | None = None):
    """The loader library with argtypes set, or raise OSError."""
    if name is None:
        name = "ze_loader.dll" if sys.platform == "win32" else "libze_loader.so.1"
    lib = ctypes.CDLL(name)
    for fn, argtypes in _SIGNATURES.items():
        f = getattr(lib, fn)
        f.argtypes = argtypes
        f.restype = c_uint32
    return lib
