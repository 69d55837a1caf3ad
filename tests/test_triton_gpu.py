"""kernbin.triton on an NVIDIA GPU: Triton kernels compiled ahead of time for the live device's SM,
loaded with ``kernbin.triton.load(bundle)`` and launched on PyTorch tensors, against PyTorch on fresh
random inputs; argument checks; the fallback to PTX; a launch in a process where Triton cannot be
imported. Skips (saying why) without a GPU, PyTorch with CUDA, or Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need_gpu():
    try:
        import torch
    except ImportError:
        pytest.skip("PyTorch is not installed (the GPU test compares against PyTorch)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    pytest.importorskip("triton", reason="Triton is not installed (needed to compile the kernels)")
    import kernbin
    try:
        dev = kernbin.open_device("cuda:0")
    except kernbin.KernbinError as e:
        pytest.skip(f"kernbin cannot open cuda:0: {e}")
    return torch, dev


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    torch, dev = _need_gpu()
    from kernbin.samples import triton_kernels as tk
    from kernbin.triton import KernelSpec, compile_bundle
    out = str(tmp_path_factory.mktemp("triton-gpu") / "live.kbin")
    specs = [KernelSpec(fn, sig, consts, warps, name=name) for name, (fn, sig, consts, warps) in tk.SPECS.items()]
    compile_bundle(out, specs, [f"cuda:sm_{dev.sm}"], jobs=1)
    return out, dev


def _cdiv(a, b):
    return (a + b - 1) // b


def test_three_kernels_match_pytorch(gpu_bundle):
    import torch

    import kernbin.triton as kt
    path, dev = gpu_bundle
    ks = kt.load(path)
    g = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    # vector add
    n = 98_432
    x, y = torch.rand(n, device="cuda", generator=g), torch.rand(n, device="cuda", generator=g)
    out = torch.empty_like(x)
    ks["add"][(_cdiv(n, 1024),)](x, y, out, n)
    torch.cuda.synchronize()
    assert torch.equal(out, x + y)
    assert ks["add"].choice["bundle_kernel"].startswith("add.sm_") and ks["add"].choice["source"] == "native"
    # row softmax: 1000 columns of rows 1024 apart, a grid from a callable as in Triton
    rows, cols = 333, 1000
    a = torch.randn(rows, 1024, device="cuda", generator=g)
    s = torch.zeros_like(a)
    ks.softmax(lambda meta: (rows,), s, a, 1024, cols)
    torch.cuda.synchronize()
    assert torch.allclose(s[:, :cols], torch.softmax(a[:, :cols], dim=1), atol=1e-6, rtol=1e-5)
    # tl.dot matmul (fp16 in, fp32 accumulate, fp16 out); column strides fixed at 1 may be left out
    M, N, K = 256, 192, 320
    A = torch.randn(M, K, device="cuda", dtype=torch.float16, generator=g)
    B = torch.randn(K, N, device="cuda", dtype=torch.float16, generator=g)
    C = torch.empty(M, N, device="cuda", dtype=torch.float16)
    ks["matmul"][(M // 64, N // 64)](A, B, C, M, N, K, A.stride(0), 1, B.stride(0), 1, C.stride(0), 1)
    torch.cuda.synchronize()
    ref = (A.float() @ B.float()).half()
    assert torch.allclose(C.float(), ref.float(), atol=0.1, rtol=0.02)
    C.zero_()
    ks["matmul"][(M // 64, N // 64)](A, B, C, M, N, K, sam=A.stride(0), sbk=B.stride(0), scm=C.stride(0))
    torch.cuda.synchronize()
    assert torch.allclose(C.float(), ref.float(), atol=0.1, rtol=0.02)


def test_launch_on_the_current_stream(gpu_bundle):
    import torch

    import kernbin.triton as kt
    path, _ = gpu_bundle
    add = kt.load(path)["add"]
    n = 1 << 20
    x, y = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    out = torch.zeros_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        add[(n // 1024,)](x, y, out, n)
        expect = x + y
    s.synchronize()
    assert torch.equal(out, expect)
    out2 = torch.zeros_like(x)
    add((n // 1024,), x, y, out2, n, stream=s.cuda_stream)
    s.synchronize()
    assert torch.equal(out2, expect)


def test_launch_arguments_are_checked(gpu_bundle):
    import torch

    import kernbin.triton as kt
    path, _ = gpu_bundle
    add = kt.load(path)["add"]
    n = 4096
    x, y, out = (torch.rand(n + 4, device="cuda") for _ in range(3))
    cases = [("divisibility", "x_ptr", (x[1:], y, out, n), {}),            # 4 bytes off: Triton assumed 16
             ("dtype", "y_ptr", (x, y.half(), out, n), {}),
             ("device", "out_ptr", (x, y, out.cpu(), n), {}),
             ("constexpr", "BLOCK", (x, y, out, n), {"BLOCK": 512}),
             ("range", "n", (x, y, out, 1 << 40), {}),
             ("arity", "n", (x, y, out), {})]
    for rule, arg, args, kw in cases:
        with pytest.raises(kt.SpecializationMismatch) as e:
            add[(4,)](*args, **kw)
        assert (e.value.rule, e.value.arg) == (rule, arg)
    torch.cuda.synchronize()


def test_no_cubin_fits_rebuilds_portable_ptx(tmp_path):
    torch, dev = _need_gpu()
    import kernbin
    import kernbin.triton as kt
    from kernbin.samples import triton_kernels as tk
    other = 80 if dev.sm // 10 != 8 else 90                 # a cubin this GPU cannot run
    fn, sig, consts, warps = tk.SPECS["add"]
    path = str(tmp_path / "other.kbin")
    kt.compile_bundle(path, [kt.KernelSpec(fn, sig, consts, warps, name="add")], [f"cuda:sm_{other}"], jobs=1)
    ks = kt.load(path)
    n = 10_000
    x, y = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    if other == 90:                                         # sm_90a PTX is for sm_90 only: nothing to rebuild
        with pytest.raises(kernbin.IncompatibleBinary):
            ks["add"][(_cdiv(n, 1024),)](x, y, out, n)
        return
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ks["add"][(_cdiv(n, 1024),)](x, y, out, n)
    torch.cuda.synchronize()
    assert torch.equal(out, x + y)
    assert ks["add"].choice["source"] == "ir"
    assert any(issubclass(x.category, kernbin.FallbackWarning) for x in w)


_NO_TRITON = textwrap.dedent("""
    import sys, json
    sys.modules["triton"] = None
    import torch
    import kernbin.triton as kt
    n = 50_000
    x, y = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    kt.load(sys.argv[1])["add"][((n + 1023) // 1024,)](x, y, out, n)
    torch.cuda.synchronize()
    print(json.dumps({"ok": bool(torch.equal(out, x + y)),
                      "triton": [m for m in sys.modules if m.startswith("triton") and sys.modules[m] is not None]}))
""")


def test_launch_in_a_process_without_triton(gpu_bundle):
    path, _ = gpu_bundle
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _NO_TRITON, path], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"ok": True, "triton": []}


def test_loaded_function_parameters_checked_against_metadata(gpu_bundle, tmp_path):
    """The live function's parameter layout against the launch metadata: ``cuFuncGetParamInfo``
    (CUDA 12.4+) gives the honest metadata's sizes, nothing past the last; a bundle whose metadata
    dropped the kernel's own parameters (it still parses) is refused before any launch."""
    import dataclasses

    import kernbin.triton as kt
    from kernbin.bundle import read_all, write_bundle
    from kernbin.triton import launcher
    path, dev = gpu_bundle
    add = kt.load(path)["add"].ready()
    want = [p.size for p in add.meta.params]
    assert want == [8, 8, 8, 4, 8, 8]
    sizes = launcher._driver_param_sizes(dev.cu, add._function, len(want))
    if dev.driver_version >= 12040:
        assert sizes == want                       # the driver answers, and says no 7th parameter
    kernels = read_all(path)
    name = next(n for n in kernels if n.startswith("add."))
    nb = kernels[name]["natives"][0]
    meta = json.loads(nb.info.extra["triton"])
    meta["args"] = [a for a in meta["args"] if a.get("specialised")]
    meta["params"] = [p for p in meta["params"] if p.get("appended")]
    info = dataclasses.replace(nb.info, extra={**nb.info.extra, "triton": json.dumps(meta)})
    forged = str(tmp_path / "forged.kbin")
    write_bundle(forged, {name: {"ir": kernels[name]["ir"], "natives": [dataclasses.replace(nb, info=info)]}})
    k = kt.load(forged)["add"]
    assert [p.name for p in k.meta.params] == ["global_scratch", "profile_scratch"]      # it parses
    with pytest.raises(kt.TritonMetaError) as e:
        k[(1,)]()
    assert ("the driver" if sizes is not None else "the cubin") in str(e.value)
    assert k._function is None
