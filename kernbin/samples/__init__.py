"""Sample kernels shipped with kernbin: OpenCL C sources, their committed SPIR-V
(made by ``tools/make_samples.sh``), the same kernels as CUDA C with their committed PTX
for compute_80 (made by ``tools/make_cuda_samples.sh``), and for each a launch on fresh
random inputs with its numpy reference. Used by the tests and by ``kernbin bench``.

The CUDA kernels have the OpenCL kernels' names (``extern "C"``), algorithms and parameters,
except that an OpenCL ``__local`` buffer parameter is dynamic shared memory in CUDA: a
:class:`Launch` is written in OpenCL terms, and :meth:`Launch.cuda_args` turns it into a
CUDA launch (grid, block, dynamic shared-memory bytes, and the arguments without the
``LocalMemory`` entries).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


import numpy as np

__all__ = ["Sample", "Launch", "SAMPLES", "spv_path", "ptx_path", "probe_spirv", "CUDA_BLOCK_CAPS"]

HERE = os.path.dirname(os.path.abspath(__file__))

#: Where a :class:`Launch` leaves the work-group size to the OpenCL runtime
#: (``local_size=None``), :meth:`Launch.cuda_args` picks the CUDA block per dimension as the
#: largest divisor of the global size not above these caps: 256 threads in 1-D, 16 x 16 in
#: 2-D, 8 x 8 x 4 in 3-D (never more than 1024 threads, the CUDA limit). Today: vadd's
#: 65536 work-items run as 256 blocks of 256; regheavy's (4, 4) as one block of (4, 4).
CUDA_BLOCK_CAPS = {1: (256,), 2: (16, 16), 3: (8, 8, 4)}


@dataclass
class Launch:
    global_size: tuple
    local_size: tuple | None
    args: list
    out_index: int           # which argument holds the result
    expected: np.ndarray
    rtol: float = 1e-4
    atol: float = 1e-5

    def correct(self, result: np.ndarray | None = None) -> bool:
        got = self.args[self.out_index] if result is None else result
        return bool(np.allclose(got, self.expected, rtol=self.rtol, atol=self.atol))

    def cuda_args(self) -> tuple:
        """This launch in CUDA terms: ``(config, args)``.

        ``config`` is a :class:`kernbin.LaunchConfig` whose grid x block is ``global_size``:
        the block is ``local_size``, or where that is None, the largest divisor of the
        global size per dimension within :data:`CUDA_BLOCK_CAPS`. ``args`` are this launch's
        arguments, the same objects (so :meth:`correct` sees what the kernel wrote), less
        the ``LocalMemory`` entries, whose sizes add up to ``config.shared_mem_bytes``
        (the CUDA kernels take those buffers as dynamic shared memory). The samples put
        their local buffers last, so ``out_index`` holds for these arguments too.
        """
        from ..backends._launch import LaunchConfig, LocalMemory
        local = self.local_size
        if local is None:
            caps = CUDA_BLOCK_CAPS[len(self.global_size)]
            local = tuple(max(d for d in range(1, min(g, cap) + 1) if g % d == 0)
                          for g, cap in zip(self.global_size, caps))
        shared = sum(a.nbytes for a in self.args if isinstance(a, LocalMemory))
        args = [a for a in self.args if not isinstance(a, LocalMemory)]
        return LaunchConfig.nd(self.global_size, local, shared_mem_bytes=shared), args


@dataclass(frozen=True)
class Sample:
    name: str
    kernel: str
    description: str
    setup: Callable[[np.random.Generator], Launch]

    @property
    def spv(self) -> str:
        return spv_path(self.name)

    @property
    def ptx(self) -> str:
        """The PTX (compute_80) of the CUDA C twin of this sample, ``<name>.ptx``."""
        return ptx_path(self.name)


def spv_path(name: str) -> str:
    return os.path.join(HERE, f"{name}.spv")


def ptx_path(name: str) -> str:
    return os.path.join(HERE, f"{name}.ptx")


def probe_spirv() -> bytes:
    """A tiny valid SPIR-V module (the vector add) for probing what a runtime makes of it."""
    with open(spv_path("vadd"), "rb") as f:
        return f.read()


def _f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _vadd(rng):
    n = 1 << 16
    a, b = _f32(rng, n), _f32(rng, n)
    return Launch((n,), None, [a, b, np.zeros(n, np.float32), np.int32(n)], 2, a + b)


def _matmul(rng):
    m, n, k = 128, 96, 160
    a, b = _f32(rng, m, k), _f32(rng, k, n)
    return Launch((n, m), (16, 16), [a, b, np.zeros((m, n), np.float32), np.int32(m), np.int32(n),
                                     np.int32(k)], 2, a @ b, atol=1e-4)


def _softmax(rng):
    from ..backends.base import LocalMemory
    rows, n, ls = 64, 1000, 64
    x = _f32(rng, rows, n) * 3
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return Launch((rows * ls,), (ls,), [x, np.zeros_like(x), np.int32(n), LocalMemory(ls * 4)], 1,
                  e / e.sum(axis=1, keepdims=True), atol=1e-6)


def _reduce(rng):
    from ..backends.base import LocalMemory
    n, groups, ls = 1 << 18, 64, 128
    g = groups * ls
    x = _f32(rng, n)
    expected = x.reshape(-1, g).sum(axis=0, dtype=np.float64).reshape(groups, ls).sum(axis=1)
    return Launch((g,), (ls,), [x, np.zeros(groups, np.float32), np.int32(n), LocalMemory(ls * 4)], 1,
                  expected.astype(np.float32), rtol=1e-4, atol=1e-3)


def _regheavy(rng):
    blocks, k, r = 4, 64, 16
    n = blocks * r
    a, b = _f32(rng, n, k), _f32(rng, k, n)
    return Launch((blocks, blocks), None, [a, b, np.zeros((n, n), np.float32), np.int32(k)], 2, a @ b,
                  atol=1e-4)


SAMPLES: dict[str, Sample] = {s.name: s for s in (
    Sample("vadd", "vadd", "element-wise add of 65536 floats", _vadd),
    Sample("matmul", "matmul", "128x160 @ 160x96 matmul, 16x16 tiles in local memory", _matmul),
    Sample("softmax", "softmax", "row softmax, 64 rows x 1000, local-memory tree reductions", _softmax),
    Sample("reduce", "reduce_sum", "sum of 262144 floats into 64 partial sums, local memory + barriers",
           _reduce),
    Sample("regheavy", "regheavy", "16x16 register-blocked matmul per work-item (register-heavy)",
           _regheavy),
)}
