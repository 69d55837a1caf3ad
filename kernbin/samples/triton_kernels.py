"""Triton sample kernels (a vector op, a row softmax, a ``tl.dot`` matmul, and a scaled add for many
specialisations) with the specialisations kernbin's tests and ``benchmarks/triton_start.py`` compile.
Importing this module imports Triton (upstream or triton-xpu); kernbin itself never does.
Reference as ``kernbin.samples.triton_kernels:add_kernel`` (or by file path, for triton-xpu's worker).
"""

import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def add_scaled_kernel(x_ptr, y_ptr, out_ptr, n, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + y * SCALE, mask=mask)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(in_ptr + row * stride + cols, mask=cols < n_cols, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    tl.store(out_ptr + row * stride + cols, num / tl.sum(num, axis=0), mask=cols < n_cols)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * sam + (k + rk)[None, :] * sak)
        b = tl.load(b_ptr + (k + rk)[:, None] * sbk + rn[None, :] * sbn)
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, acc.to(tl.float16))


#: name -> (kernel, signature (Triton AOT spelling), constexprs, num_warps): the three CI kernels.
#: matmul: M, N, K multiples of the blocks; row strides (sam, sbk, scm) divisible by 16, column strides 1.
SPECS = {
    "add": (add_kernel, "*fp32:16, *fp32:16, *fp32:16, i32", {"BLOCK": 1024}, 4),
    "softmax": (softmax_kernel, "*fp32:16, *fp32:16, i32:16, i32", {"BLOCK": 1024}, 4),
    "matmul": (matmul_kernel, "*fp16:16, *fp16:16, *fp16:16, i32:16, i32:16, i32:16, i32:16, i32:1, i32:16, i32:1, "
                              "i32:16, i32:1", {"BM": 64, "BN": 64, "BK": 32}, 4),
}
