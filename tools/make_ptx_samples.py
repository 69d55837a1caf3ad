#!/usr/bin/env python3
"""Makes PTX from real compilers, for the PTX tests: upstream PyPI ``triton`` and ``nvcc``.

Runs on a CPU machine, no GPU: Triton's CUDA backend lowers a kernel to PTX through
LLVM's NVPTX back end without touching a driver. Run it in its own virtual environment
(upstream ``triton`` and ``triton-xpu`` both install the package ``triton``)::

    python3 -m venv /tmp/triton-env
    /tmp/triton-env/bin/pip install triton numpy
    /tmp/triton-env/bin/python tools/make_ptx_samples.py tests/data/ptx

Writes ``triton_add_sm90.ptx`` and ``triton_add_sm80.ptx``: a vector add (BLOCK 1024,
4 warps). No path of this machine ends up in the files: the kernel's source file is
given to Triton as the repository-relative ``tools/make_ptx_samples.py`` (that is what
the ``.file`` directive and the DWARF ``DW_AT_name``/``DW_AT_comp_dir`` strings hold),
and the output is checked, as text and as the bytes of its ``.b8`` debug sections, for
absolute paths before it is written.

With ``nvcc`` on PATH (CUDA 12.9 or newer, for ``sm_100f``) it also writes
``nvcc_multi_sm100f.ptx`` from the small CUDA file below: several kernels (one of them
not ``.visible``), a ``.func``, an ``.extern .func`` (printf's ``vprintf``) and a
``.global`` string constant, for a family-specific target. Built without debug info, so
no path of this machine is in it either (checked the same way).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Before triton is imported: a fresh cache (a cached kernel would keep the file name it
# was first compiled under) and the FP-fusion default spelled out (silences a warning).
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernbin-ptx-triton-cache-")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


# what the debug info names as the kernel's source: relative, so no machine path leaks in
add_kernel.file_name = "tools/make_ptx_samples.py"

SIGNATURE = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
CONSTEXPRS = {"BLOCK": 1024}
SAMPLES = {"triton_add_sm90": 90, "triton_add_sm80": 80}

_ABS_PATH = re.compile(rb"/(?:tmp|work|root|home|usr|opt|var|private|Users)\b")
_B8_LINE = re.compile(r"^[^\n/]*\.b8\b([^\n/]*)", re.M)   # .b8 data, one value or a list


def strip_paths(ptx: str) -> str:
    """Safety net: cut any absolute ``.file`` path down to its base name."""
    return re.sub(r'(\.file\s+\d+\s+")(/[^"\n]*/)([^"/\n]*")', r"\1\3", ptx)


def check_no_paths(ptx: str) -> None:
    debug_bytes = bytes(int(v) & 0xFF for values in _B8_LINE.findall(ptx)
                        for v in re.findall(r"\b\d+\b", values))
    for blob, where in ((ptx.encode(), "text"), (debug_bytes, ".b8 debug bytes")):
        m = _ABS_PATH.search(blob)
        if m:
            raise SystemExit(f"absolute path left in the PTX {where}: {blob[m.start():m.start() + 60]!r}")


CUDA_SOURCE = r"""
#include <cstdio>
extern "C" __global__ void scale(float *x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}
__device__ __noinline__ float twice(float v) { return 2.0f * v; }
extern "C" __global__ void fill(float *x, float v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = twice(v);
}
template <typename T> __global__ void tadd(T *x, T v) { x[threadIdx.x] += v; }
template __global__ void tadd<int>(int *, int);
static __global__ void hidden(int *x) { if (threadIdx.x == 0) printf("hidden /* not a comment */ %d\n", x[0]); }
void *keep_hidden = (void *)hidden;
"""


def make_nvcc(out_dir: str) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not on PATH: nvcc_multi_sm100f.ptx not remade")
        return
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "multi.cu"), "w") as f:
            f.write(CUDA_SOURCE)
        subprocess.run([nvcc, "--ptx", "-arch=sm_100f", "-o", "multi.ptx", "multi.cu"], cwd=tmp, check=True)
        with open(os.path.join(tmp, "multi.ptx"), encoding="utf-8") as f:
            ptx = strip_paths(f.read())
    check_no_paths(ptx)
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()
    version = next((line.strip() for line in out if "release" in line), "nvcc")
    header = f"// kernbin test sample nvcc_multi_sm100f.ptx: made by tools/make_ptx_samples.py\n// with {version}\n"
    with open(os.path.join(out_dir, "nvcc_multi_sm100f.ptx"), "w", encoding="utf-8", newline="\n") as f:
        f.write(header + ptx)
    kernels = re.findall(r"\.entry\s+(\w+)", ptx)
    print(f"nvcc_multi_sm100f: {len(ptx)} bytes of PTX, kernels {kernels}")


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    make_nvcc(out_dir)
    for name, cc in SAMPLES.items():
        src = ASTSource(fn=add_kernel, signature=SIGNATURE, constexprs=CONSTEXPRS)
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": 4})
        ptx = strip_paths(compiled.asm["ptx"])
        check_no_paths(ptx)
        header = (f"// kernbin test sample {name}.ptx: made by tools/make_ptx_samples.py\n"
                  f"// with triton {triton.__version__} (vector add, BLOCK {CONSTEXPRS['BLOCK']}, 4 warps)\n")
        with open(os.path.join(out_dir, f"{name}.ptx"), "w", encoding="utf-8", newline="\n") as f:
            f.write(header + ptx)
        target = re.search(r"^\s*\.target\s+(\S+)", ptx, re.M).group(1)
        print(f"{name}: {len(ptx)} bytes of PTX, target {target}, kernel {compiled.metadata.name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/ptx")
