"""The backend registry: one line per backend.

Each entry names the module and class implementing :class:`~kernbin.backends.base.Backend`,
the pattern its device selectors follow and how to spell them. Nothing here imports a
runtime: a backend module is imported on first use of its target, so ``import kernbin``
loads no runtime library. Adding a backend = its module + one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
import re
from typing import NamedTuple

from ..errors import TargetError
from ..target import Target, parse_target

__all__ = ["REGISTRY", "get_backend", "backend_names", "open_device", "list_devices"]


class Entry(NamedTuple):
    module: str
    cls: str
    selector: str        # regular expression a (lower-cased) selector must match
    spelling: str        # how to write its targets, for help and errors


REGISTRY: dict[str, Entry] = {
    "opencl": Entry("kernbin.backends.opencl", "OpenCLBackend", r"cpu|gpu|\d+", "opencl:cpu, opencl:gpu, opencl:N"),
    "level-zero": Entry("kernbin.backends.level_zero", "LevelZeroBackend", r"\d+", "level-zero:N"),
    "ocloc": Entry("kernbin.backends.ocloc", "OclocBackend", r"[a-z0-9][a-z0-9._-]*(,[a-z0-9][a-z0-9._-]*)*",
                   "ocloc:<device>[,<device>...] (e.g. ocloc:pvc, ocloc:pvc,acm-g10 for one fat binary)"),
    "cuda": Entry("kernbin.backends.cuda", "CudaBackend", r"\d+|sm_\d{2,3}[af]?(,sm_\d{2,3}[af]?)*(,ptx)?",
                  "cuda:N (a GPU), cuda:sm_90 / cuda:sm_90a (offline), cuda:sm_80,sm_90,ptx (one fatbin)"),
}

_instances: dict = {}


def backend_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_backend(name: str):
    """The :class:`~kernbin.backends.base.Backend` for ``name`` (imports its module on first use)."""
    backend = _instances.get(name)
    if backend is None:
        entry = REGISTRY.get(name)
        if entry is None:
            raise TargetError(f"unknown backend {name!r} (available: {', '.join(REGISTRY)})", name)
        backend = _instances[name] = getattr(importlib.import_module(entry.module), entry.cls)()
    return backend


def check_selector(backend: str, selector: str, spec: str) -> None:
    entry = REGISTRY[backend]
    if not re.fullmatch(entry.selector, selector):
        raise TargetError(f"bad target {spec!r}: {backend} targets are {entry.spelling}", spec)


def open_device(target):
    """A live device for ``target`` (a target string, a :class:`~kernbin.target.Target`, or a device
    already open, returned as is), shared within the process."""
    if not isinstance(target, (str, Target)):      # a device already
        return target
    t = parse_target(target)
    return get_backend(t.backend).open(t)


def list_devices(backends=None) -> list:
    """Every device of every registered backend (``DeviceInfo``); runtimes that are missing are
    skipped. ``backends`` restricts to the given names."""
    from ..errors import KernbinError
    out = []
    for name in backends or REGISTRY:
        try:
            out.extend(get_backend(name).list_devices())
        except KernbinError:
            continue
    return out
