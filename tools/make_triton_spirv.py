#!/usr/bin/env python3
"""Makes SPIR-V from real Triton kernels with PyPI ``triton-xpu``, for the ocloc tests.

Runs on a CPU machine, no GPU: Triton's XPU backend compiles down to SPIR-V for a
target described by a dict. Run it in its own virtual environment (``triton-xpu``
and upstream ``triton`` both install the package ``triton``)::

    python3 -m venv /tmp/triton-xpu-env
    /tmp/triton-xpu-env/bin/pip install --pre triton-xpu intel-sycl-rt torch==2.13.0 numpy
    CC=g++ /tmp/triton-xpu-env/bin/python tools/make_triton_spirv.py tests/data/triton

Writes ``<name>.spv`` and ``<name>.json`` (Triton's metadata: kernel name, warps,
threads per warp, shared memory, build flags) for each kernel. Debug strings naming this
machine's paths (``OpString``) are cut down to the file's base name.
"""
import json
import os
import struct
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                  stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        acc += tl.dot(tl.load(a), tl.load(b))
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    c = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c, acc.to(tl.float16))


# A PVC-like device (Intel Data Center GPU Max): sub-groups of 16 and 32, DPAS and 2D block IO.
TARGET = GPUTarget("xpu", {
    "name": "pvc", "max_work_group_size": 1024, "max_num_sub_groups": 64, "sub_group_sizes": [16, 32],
    "has_fp64": True, "has_subgroup_matrix_multiply_accumulate": True,
    "has_subgroup_matrix_multiply_accumulate_tensor_float32": False, "has_subgroup_2d_block_io": True,
    "has_bfloat16_conversions": True}, 16)

KERNELS = {
    "triton_add": (add_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                                "BLOCK": "constexpr"}, {"BLOCK": 1024}, {"num_warps": 4}),
    "triton_matmul": (matmul_kernel, {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32", "N": "i32",
                                      "K": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32",
                                      "stride_bn": "i32", "stride_cm": "i32", "stride_cn": "i32",
                                      "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
                      {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 32}, {"num_warps": 32}),
}


def strip_paths(spv: bytes) -> bytes:
    """Rewrite every OpString (opcode 7) that holds a path to its base name."""
    words = struct.unpack(f"<{len(spv) // 4}I", spv)
    out, i = list(words[:5]), 5
    while i < len(words):
        count, opcode = words[i] >> 16, words[i] & 0xFFFF
        inst = list(words[i:i + count])
        if opcode == 7 and count >= 3:
            raw = struct.pack(f"<{count - 2}I", *inst[2:]).split(b"\0")[0]
            text = os.path.basename(raw.decode("utf-8", "replace")).encode() + b"\0"
            text += b"\0" * (-len(text) % 4)
            lit = list(struct.unpack(f"<{len(text) // 4}I", text))
            inst = [((2 + len(lit)) << 16) | 7, inst[1], *lit]
        out.extend(inst)
        i += count
    return struct.pack(f"<{len(out)}I", *out)


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name, (fn, signature, constexprs, opts) in KERNELS.items():
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(src, target=TARGET, options=opts)
        spv = strip_paths(compiled.asm["spv"])
        with open(os.path.join(out_dir, f"{name}.spv"), "wb") as f:
            f.write(spv)
        md = compiled.metadata._asdict()
        meta = {k: md[k] for k in ("name", "num_warps", "threads_per_warp", "shared", "build_flags")
                if k in md}
        meta.update(triton=triton.__version__, constexprs=constexprs)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        print(f"{name}: {len(spv)} bytes of SPIR-V, kernel {meta.get('name')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/triton")
