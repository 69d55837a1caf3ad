"""kernbin: compile GPU kernels once into native device binaries and load them with zero JIT.

    import kernbin
    native = kernbin.build("vadd.spv", "opencl:cpu")      # SPIR-V -> NativeBinary
    native.save("vadd.knb")
    module = kernbin.load("vadd.knb", "opencl:cpu")        # native load, verified first
    module.kernel("vadd").launch(n, None, a, b, c, np.int32(n))

Importing kernbin loads no runtime library: backends are imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (BuildError, FallbackWarning, IncompatibleBinary, InvalidBinary, InvalidIR,  # noqa: E402
                     KernbinError, KernbinWarning, KernelNotFound, LaunchError, OfflineTarget, OptionsError,
                     RuntimeAPIError, RuntimeNotFound, TargetError)

_LAZY = {
    "SpirvModule": "ir", "PtxModule": "ir", "read_ir": "ir",
    "DeviceId": "device", "Toolchain": "device", "Requirements": "device",
    "BuildOptions": "options",
    "NativeBinary": "artifact", "BuildInfo": "artifact", "KernelInfo": "artifact",
    "Target": "target", "parse_target": "target",
    "LocalMemory": "backends._launch", "LaunchConfig": "backends._launch", "DevicePointer": "backends._launch",
    "list_devices": "backends", "open_device": "backends", "build": "builder", "build_many": "builder",
    "load": "loader", "check": "loader", "get_or_build": "builder", "get_or_build_ex": "builder",
    "default_cache": "builder", "read_native": "api",
    "describe_file": "inspect",
    "open_bundle": "loader", "load_many": "loader", "create_bundle": "builder",
}

__all__ = ["__version__", "BuildError", "FallbackWarning", "IncompatibleBinary", "InvalidBinary",
           "InvalidIR", "KernbinError", "KernbinWarning", "KernelNotFound", "LaunchError", "OfflineTarget",
           "OptionsError", "RuntimeAPIError", "RuntimeNotFound", "TargetError", *_LAZY]


_SUBMODULES = ("signing", "bundle", "samples", "container", "cache", "inspect")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'kernbin' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
