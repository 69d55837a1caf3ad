"""Make the OpenCL ICD loader see Intel's CPU runtime from PyPI (``intel-opencl-rt``).

The wheel's ``.icd`` files point at its build machine's path, so ICD loaders cannot
find it. When it is installed and the user has not set ``OCL_ICD_VENDORS``, kernbin
points the loader at a small vendors directory holding the system's ``.icd`` files
plus one for the wheel's ``libintelocl.so``. Used by the OpenCL backend and, for
drivers layered on OpenCL (the project's Level Zero test driver), by the Level Zero
backend. Imports no runtime.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["wire_intel_cpu_runtime"]

_SYSTEM_VENDORS = "/etc/OpenCL/vendors"


def _find_intel_cpu_runtime() -> str | None:
    """Path of ``libintelocl.so`` from the ``intel-opencl-rt`` wheel, if installed."""
    from importlib import metadata
    try:
        dist = metadata.distribution("intel-opencl-rt")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "libintelocl.so":
            path = os.path.realpath(f.locate())
            if os.path.exists(path):
                return path
    return None


def wire_intel_cpu_runtime() -> str | None:
    """Make the ICD loader see the PyPI Intel CPU runtime. Returns the vendors path used."""
    if "OCL_ICD_VENDORS" in os.environ:
        return os.environ["OCL_ICD_VENDORS"]
    lib = _find_intel_cpu_runtime()
    if lib is None:
        return None
    icds = {}
    if os.path.isdir(_SYSTEM_VENDORS):
        for name in sorted(os.listdir(_SYSTEM_VENDORS)):
            if name.endswith(".icd"):
                try:
                    with open(os.path.join(_SYSTEM_VENDORS, name)) as f:
                        icds[name] = f.read()
                except OSError:
                    pass
    icds["kernbin-intel-cpu.icd"] = lib + "\n"
    digest = hashlib.sha256(repr(sorted(icds.items())).encode()).hexdigest()[:16]
    from ..paths import cache_dir
    vendors = os.path.join(cache_dir(), "icd", digest)
    if not os.path.isdir(vendors):
        os.makedirs(os.path.dirname(vendors), exist_ok=True)
        import tempfile
        tmp = tempfile.mkdtemp(dir=os.path.dirname(vendors), prefix=".tmp-")
        for name, text in icds.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        try:
            os.rename(tmp, vendors)
        except OSError:                 # another process published it first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    os.environ["OCL_ICD_VENDORS"] = vendors
    return vendors
