"""A kernbin stage inside Triton's own compile pipeline (``triton.knobs.runtime.add_stages_inspection_hook``).

Triton 3.6 calls the hook from ``CUDABackend.add_stages(stages, options, language)`` as
``hook(backend, stages, options, language, capability)``, after it filled ``ttir``, ``ttgir``,
``llir``, ``ptx`` and ``cubin``. :func:`stage_hook` then

- wraps the ``cubin`` stage so that ptxas's ``-v`` report (registers, spill stores and loads, stack
  frame) is kept instead of thrown away (Triton runs ``ptxas -v`` and deletes the log unless
  ``TRITON_DUMP_PTXAS_LOG`` is set; kernbin turns that knob on for the call and captures what the
  compiling thread prints, passing everything else through);
- appends a ``kernbin`` stage after ``cubin`` that records kernbin's identity of the cubin: the
  :class:`~kernbin.artifact.BuildInfo` kernbin's CUDA backend would give it ("built by": Triton and
  its ptxas version; "runs on": NVIDIA's SM rule from :mod:`kernbin.formats.cubin`; per-kernel
  registers / spills / stack frame, the parameter layout ptxas chose, ``.reqntid``). The stage's
  output is that BuildInfo as JSON text, so Triton's own cache holds it next to the cubin
  (``<kernel>.kernbin``), and a summary goes into Triton's metadata (``metadata["kernbin"]``).

Use :func:`install` (or the :func:`installed` context manager); any hook already set is chained
(called first). The AOT compiler (:mod:`kernbin.triton.aot`) runs every compile under this hook,
so bundle entries and Triton's cache carry the same identity.

What would need upstream changes: in Triton 3.6 the hook is not part of the cache key (a kernel
compiled before the hook was installed is a cache hit without the ``kernbin`` stage: the AOT path
therefore compiles into a private cache directory); ``CompiledKernel`` reads every non-binary stage
output as text, so a stage cannot leave a second binary (the ``.knb`` itself) in Triton's cache; and
the ptxas log is only reachable through the dump knob.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["stage_hook", "install", "uninstall", "installed", "identity", "STAGE"]

STAGE = "kernbin"                      # the stage's name: Triton stores its output as <kernel>.kernbin
_pending: dict[int, tuple] = {}        # id(metadata) -> (ptx text, ptxas log, seconds): cubin -> kernbin stage
_lock = threading.Lock()


# -- ptxas log capture ------------------------------------------------------------------------------

class _Capture(io.TextIOBase):
    """``sys.stdout`` while some thread captures: writes from a capturing thread go to its buffer
    (and, if it asked to tee, through); every other write goes to the real stream."""

    def __init__(self, real):
        self.real = real
        self.buffers: dict[int, tuple[list, bool]] = {}

    def write(self, s):
        got = self.buffers.get(threading.get_ident())
        if got is None:
            return self.real.write(s)
        got[0].append(s)
        if got[1]:
            self.real.write(s)
        return len(s)

    def flush(self):
        self.real.flush()

    def __getattr__(self, name):
        return getattr(self.real, name)


_capture: _Capture | None = None
_capturing = 0
_saved: list = []
_UNSET = object()


@contextmanager
def _ptxas_log():
    """Turn Triton's ptxas-log dump on for the calling thread and collect what it prints."""
    global _capture, _capturing
    from triton import knobs
    buf: list[str] = []
    with _lock:
        if _capture is None:
            # whether the user asked for the log: read before kernbin turns the knob on, kept for every
            # thread capturing meanwhile (the knob they would read now is kernbin's, not the user's)
            _saved.append((knobs.nvidia.__dict__.get("dump_ptxas_log", _UNSET), bool(knobs.nvidia.dump_ptxas_log)))
            _capture = _Capture(sys.stdout)
            sys.stdout = _capture
        was_on = _saved[-1][1]
        _capture.buffers[threading.get_ident()] = (buf, was_on)
        _capturing += 1
        knobs.nvidia.__dict__["dump_ptxas_log"] = True      # not through the knob: it would set the env var
    try:
        yield buf
    finally:
        with _lock:
            _capture.buffers.pop(threading.get_ident(), None)
            _capturing -= 1
            if _capturing == 0:
                if sys.stdout is _capture:
                    sys.stdout = _capture.real
                _capture = None
                old = _saved.pop()[0] if _saved else _UNSET
                if old is _UNSET:
                    knobs.nvidia.__dict__.pop("dump_ptxas_log", None)
                else:
                    knobs.nvidia.__dict__["dump_ptxas_log"] = old


# -- identity ---------------------------------------------------------------------------------------

def identity(cubin: bytes, ptx: str | bytes | None, arch: int, *, ptxas_version: str = "", log: str = "",
             triton_version: str = "", seconds: float = 0.0) -> dict:
    """kernbin's BuildInfo (as JSON data) for a cubin Triton made from ``ptx`` for ``arch``: the SM
    and variant read from the cubin (and checked against the PTX target), NVIDIA's runs-on rule,
    Triton + ptxas as the toolchain, per-kernel registers / spills / stack frame (ptxas log, else the
    cubin's ``.nv.info``), the parameter layout and ``.reqntid``."""
    from .. import __version__
    from ..artifact import BuildInfo, KernelInfo
    from ..device import Toolchain
    from ..errors import InvalidBinary
    from ..formats import cubin as cufmt
    from ..ir import read_ir
    from ..options import BuildOptions
    from ._nvinfo import kernel_info
    sm = cufmt.cubin_sm(cubin)
    if sm != arch:
        raise InvalidBinary(f"Triton's cubin is for sm_{sm}, it was asked for {arch}", rule="device-binary")
    ir = read_ir(ptx.encode() if isinstance(ptx, str) else ptx, "ptx") if ptx is not None else None
    variant = ir.arch_suffix if ir is not None and ir.sm == sm else ("a" if sm >= 90 else "")
    from_log = cufmt.parse_ptxas_log(log) if log else {}
    from_elf = kernel_info(cubin)
    kernels = []
    for name in (ir.kernels if ir is not None else cufmt.cubin_kernels(cubin)):
        attrs = dict(from_log.get(name, {}))
        elf = from_elf.get(name, {})
        if "registers" not in attrs and "registers" in elf:
            attrs["registers"] = elf["registers"]
        if "stack_frame" not in attrs and "stack_frame" in elf:
            attrs["stack_frame"] = elf["stack_frame"]
        if "param_bytes" in elf:
            attrs["param_bytes"] = elf["param_bytes"]
        kernels.append(KernelInfo(name, attrs))
    toolchain = Toolchain("cuda", f"Triton {triton_version} ptxas {ptxas_version}".strip(), "",
                          {"kernbin": __version__, "triton": triton_version, "ptxas": ptxas_version})
    info = BuildInfo(
        target=f"cuda:sm_{sm}{variant}", toolchain=toolchain, requires=cufmt.requirements_cubin(sm, variant),
        ir_kind="ptx", ir_sha256=ir.sha256 if ir is not None else "", options=BuildOptions(()), flags=(),
        binary_format="cubin", kernels=tuple(kernels), built_on=f"Triton {triton_version} (sm_{sm}{variant})",
        build_log=log.strip(), build_seconds=round(seconds, 6),
        extra={"ptx_version": "%d.%d" % ir.version if ir is not None else "",
               "ptx_target": ir.target if ir is not None else "",
               "cubin_layout": {k: {"params": [list(p) for p in v.get("params", [])],
                                    "reqntid": v.get("reqntid")} for k, v in from_elf.items()}})
    return info.to_json()


# -- the hook ---------------------------------------------------------------------------------------

def _add_cuda_stages(backend, stages: dict, capability) -> None:
    from triton import __version__ as triton_version
    arch = backend.target.arch
    make_cubin = stages["cubin"]

    def cubin_stage(src, metadata):
        t0 = time.perf_counter()
        with _ptxas_log() as log:
            cubin = make_cubin(src, metadata)
        _pending[id(metadata)] = (src, "".join(log), time.perf_counter() - t0)
        return cubin

    def kernbin_stage(src, metadata):
        ptx, log, seconds = _pending.pop(id(metadata), (None, "", 0.0))
        try:
            from triton.backends.nvidia.compiler import get_ptxas
            ptxas = get_ptxas(arch).version
        except Exception:                 # noqa: BLE001 - a missing version is recorded as unknown
            ptxas = ""
        info = identity(src, ptx, arch, ptxas_version=ptxas, log=log, triton_version=triton_version,
                        seconds=seconds)
        k = info["kernels"][0] if info["kernels"] else {"name": "", "attributes": {}}
        metadata[STAGE] = {"target": info["target"], "requires": info["requires"], "ptxas": ptxas,
                           "kernel": k["name"], **{a: v for a, v in k["attributes"].items()
                                                    if a in ("registers", "spill_stores", "spill_loads",
                                                             "stack_frame")}}
        return json.dumps(info, sort_keys=True)

    stages["cubin"] = cubin_stage
    stages[STAGE] = kernbin_stage


def stage_hook(backend, stages, options, language, capability):
    """The hook itself (``knobs.runtime.add_stages_inspection_hook``): on CUDA, keep ptxas's report
    and add the ``kernbin`` stage after ``cubin``; on other backends, nothing."""
    if "cubin" in stages and getattr(backend, "binary_ext", None) == "cubin":
        _add_cuda_stages(backend, stages, capability)


_previous = []


def _chained(prev):
    def hook(*args):
        if prev is not None:
            prev(*args)
        if args:
            stage_hook(*args)
    hook.kernbin_stage = True
    return hook


def install() -> None:
    """Install :func:`stage_hook` (chained after any hook already set). Idempotent."""
    from triton import knobs
    cur = knobs.runtime.add_stages_inspection_hook
    if getattr(cur, "kernbin_stage", False):
        return
    _previous.append(cur)
    knobs.runtime.add_stages_inspection_hook = _chained(cur)


def uninstall() -> None:
    """Put back the hook that was set before :func:`install`."""
    from triton import knobs
    if getattr(knobs.runtime.add_stages_inspection_hook, "kernbin_stage", False):
        knobs.runtime.add_stages_inspection_hook = _previous.pop() if _previous else None


@contextmanager
def installed():
    """The stage for the duration of a ``with`` block (left as it was if it was already installed)."""
    from triton import knobs
    already = getattr(knobs.runtime.add_stages_inspection_hook, "kernbin_stage", False)
    if not already:
        install()
    try:
        yield
    finally:
        if not already:
            uninstall()
