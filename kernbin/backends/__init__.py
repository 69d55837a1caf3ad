"""Runtime backends. Each module implements the small protocol in :mod:`.base`.

Backends are imported lazily, on first use of their target, so that
``import kernbin`` loads no runtime library.
"""

from __future__ import annotations

import importlib

from ..errors import TargetError
from ..target import BACKENDS

__all__ = ["get_backend", "IMPLEMENTED"]

#: backend name -> module implementing it
IMPLEMENTED = {"opencl": "kernbin.backends.opencl", "ocloc": "kernbin.backends.ocloc",
               "level-zero": "kernbin.backends.level_zero"}


def get_backend(name: str):
    """The backend module for ``name`` (imports it on first use)."""
    if name not in IMPLEMENTED:
        known = ", ".join(IMPLEMENTED)
        if name in BACKENDS:
            raise TargetError(f"the {name} backend is not implemented yet (available: {known})")
        raise TargetError(f"unknown backend {name!r} (available: {known})")
    return importlib.import_module(IMPLEMENTED[name])
