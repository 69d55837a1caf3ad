"""The CUDA twins of the samples (kernbin/samples/<name>.cu and their committed PTX), no GPU:
the PTX parses with the sample's kernel for sm_80, each .cu takes the .cl kernel's
parameters less its __local buffers, the PTX entry takes the arguments Launch.cuda_args()
gives, that launch is the OpenCL launch in CUDA terms, and the committed PTX is what
tools/make_cuda_samples.sh makes (where the nvcc it was made with is on PATH)."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import kernbin
from kernbin.backends._launch import LaunchConfig, LocalMemory
from kernbin.ir import read_ir
from kernbin.ir.ptx import PtxModule
from kernbin.samples import CUDA_BLOCK_CAPS, HERE, SAMPLES, Launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "make_cuda_samples.sh")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_ptx_parses_with_the_sample_kernel_for_sm80(name):
    sample = SAMPLES[name]
    assert sample.ptx == os.path.join(HERE, f"{name}.ptx")
    m = read_ir(sample.ptx)
    assert isinstance(m, PtxModule)
    assert m.kernels == (sample.kernel,)
    assert m.target == "sm_80" and m.target_options == ()
    assert m.address_size == 64


@pytest.mark.parametrize("name", list(SAMPLES))
def test_ptx_holds_no_machine_path(name):
    text = open(SAMPLES[name].ptx, "rb").read()
    assert not re.search(rb"/(?:tmp|work|root|home|usr|opt|var|Users)\b", text)


def _signature(path: str, kernel: str) -> list[str]:
    """The parameters of ``kernel`` in a .cl or .cu file, whitespace-normalised."""
    src = re.sub(r"//[^\n]*", "", open(path).read())
    m = re.search(r"\b" + re.escape(kernel) + r"\s*\(([^)]*)\)\s*\{", src)
    assert m, f"{kernel} not found in {path}"
    return [" ".join(p.split()) for p in m.group(1).split(",")]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_cu_takes_the_cl_parameters_less_local_buffers(name):
    sample = SAMPLES[name]
    cl = _signature(os.path.join(HERE, f"{name}.cl"), sample.kernel)
    cu = _signature(os.path.join(HERE, f"{name}.cu"), sample.kernel)
    want = [p.replace("__global ", "") for p in cl if not p.startswith("__local ")]
    assert cu == want
    src = open(os.path.join(HERE, f"{name}.cu")).read()
    assert re.search(r'extern "C" __global__ void ' + re.escape(sample.kernel) + r"\(", src)


def _ptx_params(ptx: bytes, kernel: str) -> list[str]:
    m = re.search(rb"\.entry\s+" + re.escape(kernel.encode()) + rb"\s*\(([^)]*)\)", ptx)
    assert m
    return [t.decode() for t in re.findall(rb"\.param\s+\.(\w+)", m.group(1))]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_cuda_args_is_the_opencl_launch_in_cuda_terms(rng, name):
    sample = SAMPLES[name]
    launch = sample.setup(rng)
    before = list(launch.args)
    config, args = launch.cuda_args()
    assert isinstance(config, LaunchConfig) and config.stream is None
    assert config.global_size == tuple(launch.global_size)
    if launch.local_size is not None:
        assert config.block == tuple(launch.local_size)
    assert np.prod(config.block) <= 1024
    assert config.shared_mem_bytes == sum(a.nbytes for a in launch.args if isinstance(a, LocalMemory))
    assert not any(isinstance(a, LocalMemory) for a in args)
    # the same objects, in order: the kernel writes into the arrays correct() reads
    assert [id(a) for a in args] == [id(a) for a in before if not isinstance(a, LocalMemory)]
    assert args[launch.out_index] is launch.args[launch.out_index]
    assert [id(a) for a in launch.args] == [id(a) for a in before]     # the OpenCL launch is untouched
    # and the PTX entry takes exactly these: a pointer per array, a 32-bit word per int32
    kinds = ["u64" if isinstance(a, np.ndarray) else {np.dtype(np.int32): "u32"}[a.dtype] for a in args]
    assert _ptx_params(open(sample.ptx, "rb").read(), sample.kernel) == kinds


def test_shared_memory_is_what_the_opencl_local_buffers_were(rng):
    _, args = SAMPLES["vadd"].setup(rng).cuda_args()
    assert len(args) == 4
    assert SAMPLES["softmax"].setup(rng).cuda_args()[0].shared_mem_bytes == 64 * 4
    assert SAMPLES["reduce"].setup(rng).cuda_args()[0].shared_mem_bytes == 128 * 4
    assert SAMPLES["matmul"].setup(rng).cuda_args()[0].shared_mem_bytes == 0  # static __shared__ tiles


def test_block_chosen_where_opencl_leaves_it_to_the_runtime(rng):
    assert SAMPLES["vadd"].setup(rng).cuda_args()[0] == LaunchConfig((256,), (256,))
    assert SAMPLES["regheavy"].setup(rng).cuda_args()[0] == LaunchConfig((1, 1), (4, 4))

    def block(global_size):
        return Launch(global_size, None, [], 0, np.zeros(0)).cuda_args()[0].block

    assert CUDA_BLOCK_CAPS == {1: (256,), 2: (16, 16), 3: (8, 8, 4)}
    assert block((1000,)) == (250,)
    assert block((7,)) == (7,)
    assert block((257,)) == (1,)                    # a prime above the cap: blocks of one
    assert block((96, 128)) == (16, 16)
    assert block((48, 12)) == (16, 12)
    assert block((64, 64, 64)) == (8, 8, 4)


def test_cuda_args_keeps_launch_errors():
    with pytest.raises(kernbin.LaunchError):
        Launch((100,), (64,), [], 0, np.zeros(0)).cuda_args()


def _nvcc_release() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"^Cuda compilation tools, .*$", out, re.M).group(0).strip()


def test_committed_ptx_is_what_the_script_makes(tmp_path):
    made_with = re.search(r"^# nvcc: (.*)$", open(SCRIPT).read(), re.M).group(1).strip()
    have = _nvcc_release()
    if have is None:
        pytest.skip("nvcc is not on PATH: cannot remake the sample PTX")
    if have != made_with:
        pytest.skip(f"the sample PTX was made with {made_with!r}, nvcc on PATH is {have!r}: "
                    "another nvcc writes other PTX")
    subprocess.run(["bash", SCRIPT, str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    cu = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".cu"))
    assert cu == sorted(SAMPLES)
    assert sorted(f[:-4] for f in os.listdir(tmp_path)) == cu
    for name in cu:
        made = (tmp_path / f"{name}.ptx").read_bytes()
        assert made == open(os.path.join(HERE, f"{name}.ptx"), "rb").read(), \
            f"{name}.ptx is stale: run tools/make_cuda_samples.sh"
