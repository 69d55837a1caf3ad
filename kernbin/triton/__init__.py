"""Triton integration: Triton kernels ahead of time into bundles, a launcher that needs no Triton at
deploy time, a kernbin stage inside Triton's pipeline, and Triton's cache in kernbin's cache.

Build time (Triton installed; no GPU needed for CUDA)::

    import kernbin.triton as kt
    kt.compile_bundle("model.kbin", [kt.KernelSpec(add_kernel, "*fp32:16, *fp32:16, *fp32:16, i32",
                                                   {"BLOCK": 1024}, num_warps=4, name="add")],
                      ["cuda:sm_80", "cuda:sm_90"])

Deploy time (no Triton; PyTorch tensors or raw device pointers)::

    kernels = kt.load("model.kbin")
    kernels["add"][((n + 1023) // 1024,)](x, y, out, n)

Triton's own cache in kernbin's: ``TRITON_CACHE_MANAGER=kernbin.triton:CacheManager``; the pipeline
stage: ``kt.install_stage()``. Intel GPUs: :mod:`kernbin.triton.xpu` (triton-xpu in its own venv).

Importing this package imports neither Triton nor a GPU runtime: everything is loaded on first use
(``CacheManager`` and the compile and stage functions import Triton; ``load`` never does).
"""

from __future__ import annotations

_LAZY = {
    "LaunchMeta": "_meta", "SpecializationMismatch": "_meta", "TritonMetaError": "_meta",
    "load": "launcher", "TritonKernels": "launcher", "TritonKernel": "launcher",
    "KernelSpec": "aot", "compile": "aot", "compile_many": "aot", "compile_bundle": "aot",
    "stage_hook": "stage", "install_stage": ("stage", "install"), "uninstall_stage": ("stage", "uninstall"),
    "stage_installed": ("stage", "installed"),
    "CacheManager": "cache_manager",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'kernbin.triton' has no attribute {name!r}")
    import importlib
    mod, attr = (where, name) if isinstance(where, str) else where
    value = getattr(importlib.import_module(f".{mod}", __name__), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
