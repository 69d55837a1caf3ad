"""Intel GPUs: Triton XPU's SPIR-V, built to native by kernbin (not by Triton's own ``ocloc`` call).

``triton-xpu`` (PyPI, pre-release) and upstream ``triton`` both install the package ``triton``, so they
never share an environment: the SPIR-V is made by a worker process in triton-xpu's own environment,
its Python given by ``python=`` or ``KERNBIN_TRITON_XPU_PYTHON`` (``tools/make_triton_spirv.py`` says
how to make one). kernbin then builds that SPIR-V for each Intel target with its own backend:
``ocloc:<device>`` offline (``libocloc.so``), or ``level-zero:N`` on a device, with the register-file
policy (``grf="auto"`` by default: the default register file, and the large one when the compiler
reports spills, keeping whichever spills less); the attempts and the decision are in
``info.register_file``, the flags the compiler got in ``info.flags``. Triton's launch metadata (kernel
name, ``num_warps``, ``threads_per_warp``, shared memory, its build flags, the specialised arguments)
goes to ``info.extra["triton"]``.

Inside Triton XPU's own pipeline: triton-xpu 3.3 has no ``triton.knobs`` and no stage-inspection hook
(its ``XPUBackend.add_stages`` fills ``ttir``, ``ttgir``, ``llir``, ``spv`` itself, and ``make_spv`` runs
``ocloc`` with the device hard-coded to ``pvc`` when ``TRITON_XPU_GEN_NATIVE_CODE`` is set).
:func:`install_xpu_stage` therefore wraps ``XPUBackend.add_stages`` to append a ``zebin`` stage after
``spv`` that builds with kernbin (Level Zero where a device is present, ocloc otherwise, policy applied,
flags recorded); it needs kernbin and its dependencies importable in the triton-xpu environment. Upstream,
a stage hook like Triton 3.6's (and the native binary accepted as the kernel binary by the XPU
launcher) would remove the need to wrap.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import sys
import tempfile

from ..errors import KernbinError, RuntimeNotFound

__all__ = ["PVC", "spirv_from_triton_xpu", "build_xpu", "install_xpu_stage", "ENV_PYTHON"]

ENV_PYTHON = "KERNBIN_TRITON_XPU_PYTHON"
#: a PVC-like device (Intel Data Center GPU Max) for Triton XPU's target dict: sub-groups of 16 and 32,
#: DPAS (the matrix engine) and 2D block IO
PVC = {"name": "pvc", "max_work_group_size": 1024, "max_num_sub_groups": 64, "sub_group_sizes": [16, 32],
       "has_fp64": True, "has_subgroup_matrix_multiply_accumulate": True,
       "has_subgroup_matrix_multiply_accumulate_tensor_float32": False, "has_subgroup_2d_block_io": True,
       "has_bfloat16_conversions": True}


def _python(python: str | None) -> str:
    py = python or os.environ.get(ENV_PYTHON)
    if not py:
        raise RuntimeNotFound(f"Triton XPU runs in its own environment: set {ENV_PYTHON} to its python "
                              f"(pip install --pre triton-xpu intel-sycl-rt torch; see tools/make_triton_spirv.py)")
    return py


def spirv_from_triton_xpu(jobs: list[dict], *, target: dict | None = None, warp_size: int = 16,
                          python: str | None = None, timeout: float = 1800) -> tuple[str, list[dict]]:
    """Run triton-xpu (in its environment) on ``jobs`` (``{"kernel": "file.py:name", "signature",
    "constexprs", "options"}``); returns ``(triton-xpu version, [{"spv": bytes, "metadata", ...}])``."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_xpu_worker.py")
    env = dict(os.environ)
    env.setdefault("CC", "g++")               # triton-xpu's SYCL helper is C++
    env.pop("PYTHONPATH", None)               # never this environment's packages (its triton is upstream's)
    req = {"jobs": jobs, "target": target or PVC, "warp_size": warp_size}
    py = _python(python)
    # the worker's output goes to files, read back bounded: a runaway worker cannot fill this memory
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            p = subprocess.run([py, worker], input=json.dumps(req).encode(), stdout=out, stderr=err,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise KernbinError(f"triton-xpu ({py}) did not finish within {timeout} s") from None
        except (OSError, ValueError) as e:
            raise KernbinError(f"triton-xpu: cannot run {py}: {e}") from e
        if p.returncode != 0:
            err.seek(max(os.fstat(err.fileno()).st_size - 16384, 0))
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-15:]
            raise KernbinError("triton-xpu failed:\n" + "\n".join(tail))
        size = os.fstat(out.fileno()).st_size
        if size > MAX_WORKER_OUTPUT:
            raise KernbinError(f"triton-xpu printed {size} bytes, more than {MAX_WORKER_OUTPUT}")
        out.seek(0)
        stdout = out.read()
    return _parse_worker_output(stdout, len(jobs))


#: the most the worker may print (its SPIR-V, base64): beyond it the output is refused unread
MAX_WORKER_OUTPUT = 256 << 20


def _parse_worker_output(stdout: bytes, count: int) -> tuple[str, list[dict]]:
    """The worker's last line: ``{"triton": version, "results": [one per job: {"spv": base64, ...}]}``;
    anything else is a :class:`KernbinError` saying what was wrong."""
    if len(stdout) > MAX_WORKER_OUTPUT:
        raise KernbinError(f"triton-xpu printed {len(stdout)} bytes, more than {MAX_WORKER_OUTPUT}")
    try:
        lines = stdout.decode("utf-8").strip().splitlines()
        if not lines:
            raise ValueError("no output")
        out = json.loads(lines[-1])
        if not isinstance(out, dict) or not isinstance(out.get("triton"), str):
            raise ValueError("not an object with a 'triton' version")
        results = out["results"]
        if not isinstance(results, list) or len(results) != count:
            raise ValueError(f"'results' is not a list of {count}")
        for r in results:
            if not isinstance(r, dict) or not isinstance(r.get("spv"), str):
                raise ValueError("a result without 'spv' text")
            r["spv"] = base64.b64decode(r["spv"], validate=True)
            if not r["spv"]:
                raise ValueError("an empty SPIR-V module")
            for key, kind in (("metadata", dict), ("arg_names", list), ("signature", dict), ("constexprs", dict),
                              ("attrs", list), ("equal_to_1", dict)):
                if not isinstance(r.get(key), kind):
                    raise ValueError(f"a result's {key!r} is missing or not a {kind.__name__}")
            r["launch"] = _launch_meta(out["triton"], r)
            if not all(isinstance(n, str) for n in r.get("arg_names", ())) or \
                    not all(isinstance(a, list) and len(a) == 2 for a in r.get("attrs", ())):
                raise ValueError("a result's 'arg_names' or 'attrs' are malformed")
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError, binascii.Error) as e:
        head = stdout[-200:].decode("utf-8", "replace")
        raise KernbinError(f"triton-xpu's worker printed no valid result ({type(e).__name__}: {e}); "
                           f"its output ended with {head!r}") from e
    return out["triton"], results


def _launch_meta(version: str, r: dict) -> dict:
    """Launch metadata (the shape ``LaunchMeta`` reads) from one worker result; malformed parts raise
    ValueError / KeyError / TypeError (turned into a KernbinError by the caller)."""
    md = r["metadata"]
    attrs = {int(i) for i, _ in r["attrs"]}
    args = []
    for i, name in enumerate(r["arg_names"]):
        ty = r["signature"][name]
        if ty == "constexpr":
            if name in r["equal_to_1"]:
                args.append({"name": name, "type": r["equal_to_1"][name], "specialised": "equal_to_1", "value": 1})
            else:
                args.append({"name": name, "type": "constexpr", "specialised": "constexpr",
                             "value": r["constexprs"].get(name)})
        else:
            args.append({"name": name, "type": ty, **({"divisibility": 16} if i in attrs else {})})
    return {"format": 1, "backend": "xpu", "kernel": md.get("name"), "triton_version": version,
            "num_warps": md.get("num_warps"), "threads_per_warp": md.get("threads_per_warp"),
            "shared": md.get("shared", 0), "triton_build_flags": md.get("build_flags", ""),
            "global_scratch": {"size": md.get("global_scratch_size", 0) or 0,
                               "align": md.get("global_scratch_align", 1) or 1},
            "args": args}


def build_xpu(kernel: str, signature, constexprs=None, *, targets=("ocloc:pvc",), num_warps: int = 4,
              options=None, grf: str = "auto", python: str | None = None, target: dict | None = None) -> list:
    """One Triton kernel specialisation -> SPIR-V (triton-xpu, its own environment) -> a native binary per
    Intel target through kernbin (``grf`` policy recorded). ``kernel`` is ``"file.py:name"``."""
    version, results = spirv_from_triton_xpu(
        [{"kernel": os.path.abspath(kernel.rpartition(":")[0]) + ":" + kernel.rpartition(":")[2],
          "signature": signature, "constexprs": dict(constexprs or {}),
          "options": {"num_warps": num_warps, **(options or {})}}], target=target, python=python)
    return [build_spirv(r["spv"], t, r["launch"], grf=grf) for r in results for t in targets]


def build_spirv(spv: bytes, target: str, launch_meta: dict | None = None, *, grf: str = "auto"):
    """SPIR-V from Triton XPU -> kernbin native binary for ``target`` with the register-file policy;
    Triton's launch metadata recorded in ``info.extra["triton"]``."""
    from dataclasses import replace

    from ..api import build
    native = build(spv, target, grf=grf)
    if launch_meta is not None:
        native = replace(native, info=replace(native.info, extra={**native.info.extra, "triton": launch_meta}))
    return native


def install_xpu_stage(target: str | None = None, grf: str = "auto") -> None:
    """In a triton-xpu environment (with kernbin importable): wrap ``XPUBackend.add_stages`` so a
    ``zebin`` stage after ``spv`` builds the SPIR-V with kernbin for ``target`` (default: ``level-zero:0``
    when a Level Zero device is present, else ``ocloc:pvc``) and the register-file policy; Triton's
    cache then holds the ``.knb`` (base64 text: Triton reads non-binary stages as text) and
    ``metadata["kernbin"]`` the flags and the policy's decision."""
    from triton.backends.intel.compiler import XPUBackend       # triton-xpu only
    if getattr(XPUBackend.add_stages, "kernbin_stage", False):
        return
    original = XPUBackend.add_stages

    def add_stages(self, stages, options, *rest):
        original(self, stages, options, *rest)

        def zebin_stage(src, metadata):
            import kernbin
            chosen = target
            if chosen is None:
                chosen = "level-zero:0" if any(d.target.startswith("level-zero") for d in
                                               kernbin.list_devices(["level-zero"])) else "ocloc:pvc"
            native = kernbin.build(bytes(src), chosen, grf=grf)
            metadata["kernbin"] = {"target": native.info.target, "flags": list(native.info.flags),
                                   "register_file": native.info.register_file}
            return base64.b64encode(native.to_bytes()).decode()
        stages["zebin"] = zebin_stage
    add_stages.kernbin_stage = True
    XPUBackend.add_stages = add_stages


if __name__ == "__main__":              # python -m kernbin.triton.xpu FILE.py:NAME SIGNATURE [K=V ...]
    ref, sig, *consts = sys.argv[1:]
    from ._meta import _constant
    c = {k: _constant(v) for k, _, v in (x.partition("=") for x in consts)}
    for nb in build_xpu(ref, sig, c):
        print(nb.info.target, nb.info.flags, json.dumps(nb.info.register_file)[:300])
