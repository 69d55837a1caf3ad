"""An emulated CUDA driver under kernbin's real CUDA backend, for machines without a GPU.

It stands where ``cuda.bindings.driver`` stands (the same call names, result tuples and enums that
kernbin uses) and costs what a real driver costs where it matters to a loader:

``cuModuleLoadData(image)``   checks the ELF magic and machine (190) and the cubin's SM major like the
                              driver (``CUDA_ERROR_INVALID_IMAGE`` / ``CUDA_ERROR_NO_BINARY_FOR_GPU``),
                              copies the image, then writes an eviction buffer for a calibrated time
                              (``cost_us``, default 40: the H200's ``cuModuleLoadData`` + ``cuModuleGetFunction``
                              for a small cubin, ``benchmarks/results/cuda_load_floor_h200.json``): the CPU
                              caches are as cold after it as after a real driver call. Both steps are
                              libc calls through ``ctypes``, so the GIL is released, as in ``cuda.bindings``;
``cuModuleGetFunction``       finds the kernel's ``.text.NAME`` section in the image (else ``NOT_FOUND``);
device queries                one device, ``sm`` (default 90), CUDA 13.0.

Used by ``benchmarks/load_path.py`` (kernbin's load path against the raw call and the minimal verifying
loader) and by tests of the CUDA load path that need no GPU. Nothing of it runs a kernel:
``cuLaunchKernel`` is refused (``CUDA_ERROR_NOT_SUPPORTED``).

    from cuda_emu import install
    drv = install(cost_us=40, sm=90)          # before the first kernbin.open_device("cuda:0")
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import statistics
import struct
import time

__all__ = ["EmulatedDriver", "install", "uninstall"]


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_IMAGE = 200
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209
    CUDA_ERROR_NOT_FOUND = 500
    CUDA_ERROR_NOT_SUPPORTED = 801


class CUdevice_attribute(enum.IntEnum):
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK = 8
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97


class CUfunction_attribute(enum.IntEnum):
    CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1
    CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES = 2
    CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3
    CU_FUNC_ATTRIBUTE_NUM_REGS = 4
    CU_FUNC_ATTRIBUTE_PTX_VERSION = 5
    CU_FUNC_ATTRIBUTE_BINARY_VERSION = 6
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8


_libc = ctypes.CDLL(None)                    # CDLL: the GIL is released around every call
_memset = _libc.memset
_memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
_memset.restype = ctypes.c_void_p
_memcpy = _libc.memcpy
_memcpy.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcpy.restype = ctypes.c_void_p

_OK = CUresult.CUDA_SUCCESS


class EmulatedDriver:
    """The ``cu`` object kernbin's CUDA backend calls (see the module docstring)."""

    CUresult = CUresult
    CUdevice_attribute = CUdevice_attribute
    CUfunction_attribute = CUfunction_attribute

    def __init__(self, cost_us: float = 40.0, sm: int = 90, version: int = 13000):
        self.sm, self.version, self.cost_us = sm, version, cost_us
        self._modules: dict[int, bytes] = {}
        self._functions: dict[int, tuple[int, bytes]] = {}
        self._ids = itertools.count(1)
        self.loads = 0
        self._evict = ctypes.create_string_buffer(64 << 20)
        self._evict_bytes = self._calibrate(cost_us) if cost_us > 0 else 0

    def _spend(self, n: int) -> None:
        if n:
            _memset(self._evict, self.loads & 0xFF, n)

    def _calibrate(self, cost_us: float) -> int:
        """The eviction size that makes one load cost ``cost_us`` on this machine (median of 15)."""
        n = 1 << 20
        for _ in range(4):
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                self._spend(n)
                times.append(time.perf_counter() - t0)
            took = statistics.median(times) * 1e6
            n = max(4096, min(len(self._evict), int(n * cost_us / max(took, 0.1))))
        return n

    # -- initialisation and the device --------------------------------------------------
    def cuInit(self, flags):
        return (_OK,)

    def cuDriverGetVersion(self):
        return _OK, self.version

    def cuDeviceGetCount(self):
        return _OK, 1

    def cuDeviceGet(self, index):
        return (_OK, 0) if int(index) == 0 else (CUresult.CUDA_ERROR_INVALID_VALUE, None)

    def cuDeviceGetAttribute(self, attr, dev):
        A = CUdevice_attribute
        value = {A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: self.sm // 10,
                 A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: self.sm % 10,
                 A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: 132,
                 A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: 48 << 10,
                 A.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 227 << 10}.get(attr)
        return (_OK, value) if value is not None else (CUresult.CUDA_ERROR_INVALID_VALUE, None)

    def cuDeviceGetName(self, size, dev):
        return _OK, b"Emulated CUDA driver (kernbin tools/cuda_emu.py)"

    def cuDevicePrimaryCtxRetain(self, dev):
        return _OK, 1

    def cuDevicePrimaryCtxRelease(self, dev):
        return (_OK,)

    def cuCtxSetCurrent(self, ctx):
        return (_OK,)

    # -- modules and functions ----------------------------------------------------------
    def cuModuleLoadData(self, image):
        if not isinstance(image, bytes):
            image = bytes(image)
        if image[:4] != b"\x7fELF" or len(image) < 64 or struct.unpack_from("<H", image, 18)[0] != 190:
            return CUresult.CUDA_ERROR_INVALID_IMAGE, None
        flags = struct.unpack_from("<I", image, 48)[0]
        sm = (flags >> 8) & 0xFF if image[8] >= 8 else flags & 0xFF          # EF_CUDA_SM (ABI 8 / older)
        if sm and sm // 10 != self.sm // 10:
            return CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU, None
        copy = ctypes.create_string_buffer(len(image))
        _memcpy(copy, image, len(image))            # the driver keeps its own copy of the image
        self.loads += 1
        self._spend(self._evict_bytes)
        handle = next(self._ids)
        self._modules[handle] = image
        return _OK, handle

    def cuModuleUnload(self, module):
        return (_OK,) if self._modules.pop(int(module), None) is not None else (CUresult.CUDA_ERROR_INVALID_HANDLE,)

    def cuModuleGetFunction(self, module, name):
        image = self._modules.get(int(module))
        if image is None:
            return CUresult.CUDA_ERROR_INVALID_HANDLE, None
        if b".text." + bytes(name) + b"\0" not in image:
            return CUresult.CUDA_ERROR_NOT_FOUND, None
        handle = next(self._ids)
        self._functions[handle] = (int(module), bytes(name))
        return _OK, handle

    def cuFuncGetAttribute(self, attr, f):
        return (_OK, 0) if int(f) in self._functions else (CUresult.CUDA_ERROR_INVALID_HANDLE, None)

    def cuFuncSetAttribute(self, f, attr, value):
        return (_OK,) if int(f) in self._functions else (CUresult.CUDA_ERROR_INVALID_HANDLE,)

    def cuLaunchKernel(self, *args):
        return (CUresult.CUDA_ERROR_NOT_SUPPORTED,)


class _Installed:
    """What ``kernbin.backends.cuda._drv()`` returns: the driver after a successful ``cuInit``."""

    def __init__(self, cu: EmulatedDriver):
        self.cu, self.error, self.count, self.version = cu, None, 1, cu.version


def install(cost_us: float = 40.0, sm: int = 90) -> EmulatedDriver:
    """Put an emulated driver under kernbin's CUDA backend (before ``open_device("cuda:0")``)."""
    from kernbin.backends import cuda
    cu = EmulatedDriver(cost_us, sm)
    cuda._driver = _Installed(cu)
    return cu


def uninstall() -> None:
    """Forget the emulated driver and every device opened on it."""
    from kernbin.backends import cuda, get_backend
    cuda._driver = None
    get_backend("cuda")._open.clear()
