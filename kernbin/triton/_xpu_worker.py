"""Runs inside a triton-xpu environment (not kernbin's: ``triton-xpu`` and ``triton`` both install the
package ``triton``): compiles Triton kernels to SPIR-V and prints the result as JSON. Imports only
Triton and the standard library (and ``_sig.py`` next to it, by path).

stdin: ``{"jobs": [{"kernel": "file.py:name", "signature": ..., "constexprs": {...}, "options": {...}}],
"target": {...GPUTarget arch dict...}, "warp_size": 16}``
stdout (last line): ``{"triton": version, "results": [{"spv": base64, "metadata": {...}, "arg_names": [...],
"signature": {...}, "constexprs": {...}, "attrs": [[index, 16], ...], "equal_to_1": {...}}]}``
"""

import base64
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sig  # noqa: E402


def _load(ref):
    path, _, name = ref.rpartition(":")
    spec = importlib.util.spec_from_file_location("_kernbin_xpu_kernels", os.path.abspath(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def main():
    req = json.loads(sys.stdin.read())
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("xpu", req["target"], int(req.get("warp_size", 16)))
    results = []
    for job in req["jobs"]:
        fn = _load(job["kernel"])
        sig, consts, extra = _sig.parse(fn.arg_names, job["signature"], job.get("constexprs"))
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=extra["attrs"])
        k = triton.compile(src, target=target, options=job.get("options") or {})
        md = k.metadata._asdict()
        keep = {key: md[key] for key in ("name", "num_warps", "threads_per_warp", "shared", "build_flags",
                                         "num_ctas", "num_stages", "global_scratch_size", "global_scratch_align",
                                         "profile_scratch_size", "profile_scratch_align", "spill_size", "hash")
                if key in md and isinstance(md[key], (int, str, float, bool, type(None)))}
        results.append({"spv": base64.b64encode(k.asm["spv"]).decode(), "metadata": keep,
                        "arg_names": list(fn.arg_names), "signature": sig,
                        "constexprs": {n: v if isinstance(v, (int, float, bool, str)) else str(v)
                                       for n, v in consts.items()},
                        "attrs": [[i[0], 16] for i in extra["attrs"]], "equal_to_1": extra["equal_to_1"]})
    sys.stdout.write("\n" + json.dumps({"triton": triton.__version__, "results": results}) + "\n")


if __name__ == "__main__":
    main()
