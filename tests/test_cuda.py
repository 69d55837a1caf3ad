"""CUDA backend. Offline parts (nvJitLink, nvFatbin, the runs-on rule) run on any machine; the
GPU parts run where `cuda:0` opens and skip elsewhere, saying why."""
import dataclasses
import json
import os
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kernbin
from kernbin.device import Requirements
from kernbin.formats import cubin as cufmt
from kernbin.samples import SAMPLES

from conftest import HERE, run_cli

PTX80 = os.path.join(HERE, "data", "ptx", "triton_add_sm80.ptx")
PTX90A = os.path.join(HERE, "data", "ptx", "triton_add_sm90.ptx")      # .version 9.4, .target sm_90a


def _offline():
    try:
        from cuda.bindings import nvjitlink  # noqa: F401
    except ImportError as e:
        pytest.skip(f"cuda-bindings / nvJitLink not installed: {e}")


def _needs_isa(path):
    """Skip unless this nvJitLink compiles the PTX ISA version of ``path``."""
    _offline()
    from cuda.bindings import nvjitlink
    major, minor = nvjitlink.version()
    if kernbin.read_ir(path).version > cufmt.driver_ptx_isa(major * 1000 + minor * 10):
        pytest.skip(f"nvJitLink {major}.{minor} predates the PTX ISA of {os.path.basename(path)}")


@pytest.fixture(scope="module")
def gpu():
    try:
        return kernbin.open_device("cuda:0")
    except kernbin.KernbinError as e:
        pytest.skip(f"no CUDA GPU here ({e})")


# -- offline: no GPU needed ------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_90", "sm_90a"])
def test_offline_cubin_records_sm_registers_and_spills(arch):
    _offline()
    nb = kernbin.build(PTX80, f"cuda:{arch}")
    sm, variant = cufmt.parse_arch(arch)
    assert nb.info.binary_format == "cubin" and cufmt.is_cubin(nb.binary) and cufmt.cubin_sm(nb.binary) == sm
    assert nb.info.requires == Requirements("cuda", {"code": "cubin", "sm": sm, "variant": variant})
    assert nb.info.toolchain.compiler.startswith("nvJitLink ")
    k = nb.info.kernel("add_kernel").attributes
    assert k["registers"] > 0 and k.get("spill_stores", 0) == 0 and "stack_frame" in k
    assert cufmt.cubin_kernels(nb.binary) == ("add_kernel",)
    assert nb.ir.kind == "ptx" and kernbin.NativeBinary.from_bytes(nb.to_bytes()) == nb


def test_register_heavy_sample_reports_its_spills():
    _offline()
    nb = kernbin.build(SAMPLES["regheavy"].ptx, "cuda:sm_80")
    k = nb.info.kernel("regheavy").attributes
    assert k["registers"] >= 200
    if "spill_stores" in k:            # ptxas -v through nvJitLink (13.x); older logs give the stack only
        assert k["spill_stores"] > 0 and k["spill_bytes"] == k["spill_stores"]
    else:
        assert k["stack_frame"] > 0


def test_fatbin_of_two_architectures_and_ptx():
    _offline()
    nb = kernbin.build(PTX80, "cuda:sm_80,sm_90,ptx")
    assert nb.info.binary_format == "fatbin" and cufmt.is_fatbin(nb.binary)
    members = cufmt.fatbin_members(nb.binary)
    assert [(m["kind"], m["sm"]) for m in members] == [("cubin", 80), ("cubin", 90), ("ptx", 80)]
    req = nb.info.requires
    assert req.kind == "cuda-fat" and [m["code"] for m in req.get("members")] == ["cubin", "cubin", "ptx"]
    assert req.get("members")[2]["ptx_isa"] == "%d.%d" % nb.ir.version
    # the gate's choice per device: the newest fitting cubin, else the PTX (JIT), else nothing
    assert cufmt.cuda_can_run(req, 90, (9, 0))[3] == "cubin sm_90"
    assert cufmt.cuda_can_run(req, 86, (9, 0))[3] == "cubin sm_80"
    assert cufmt.cuda_can_run(req, 100, (9, 0))[3].startswith("ptx sm_80")
    ok, rule, _, _ = cufmt.cuda_can_run(req, 75, (9, 0))
    assert not ok and rule == "sm"


def test_fatbin_without_ptx():
    _offline()
    nb = kernbin.build(PTX80, "cuda:sm_80,sm_90")
    assert [m["kind"] for m in cufmt.fatbin_members(nb.binary)] == ["cubin", "cubin"]
    assert not cufmt.cuda_can_run(nb.info.requires, 100, (9, 9))[0]


@pytest.mark.parametrize("req, sm, isa, ok, rule", [
    ({"code": "cubin", "sm": 80, "variant": ""}, 80, (9, 0), True, ""),
    ({"code": "cubin", "sm": 80, "variant": ""}, 86, (9, 0), True, ""),
    ({"code": "cubin", "sm": 86, "variant": ""}, 80, (9, 0), False, "sm"),       # same major, older minor
    ({"code": "cubin", "sm": 80, "variant": ""}, 90, (9, 0), False, "sm"),       # another major
    ({"code": "cubin", "sm": 90, "variant": "a"}, 90, (9, 0), True, ""),
    ({"code": "cubin", "sm": 90, "variant": "a"}, 100, (9, 0), False, "sm"),     # a: exactly that arch
    ({"code": "cubin", "sm": 100, "variant": "f"}, 103, (9, 0), True, ""),      # f: the family
    ({"code": "cubin", "sm": 100, "variant": "f"}, 120, (9, 0), False, "sm"),
    ({"code": "ptx", "sm": 80, "variant": "", "ptx_isa": "8.8"}, 90, (9, 0), True, ""),
    ({"code": "ptx", "sm": 80, "variant": "", "ptx_isa": "9.4"}, 90, (9, 0), False, "ptx-isa"),
    ({"code": "ptx", "sm": 90, "variant": "", "ptx_isa": "8.0"}, 80, (9, 0), False, "sm"),
    ({"code": "ptx", "sm": 90, "variant": "a", "ptx_isa": "8.0"}, 100, (9, 0), False, "sm"),
    ({"code": "cubin", "sm": "90", "variant": ""}, 90, (9, 0), False, "requirements"),
])
def test_nvidia_runs_on_rule(req, sm, isa, ok, rule):
    got = cufmt.cuda_can_run(Requirements("cuda", req), sm, isa)
    assert (got[0], got[1]) == (ok, rule)


def test_driver_ptx_isa_table():
    assert cufmt.driver_ptx_isa(13000) == (9, 0)
    assert cufmt.driver_ptx_isa(12090) == (8, 8)
    assert cufmt.driver_ptx_isa(12040) == (8, 4)
    assert cufmt.driver_ptx_isa(11080) == (7, 8)
    assert cufmt.driver_ptx_isa(13020) >= (9, 2)


def test_bad_ptx_is_a_build_error_with_the_log():
    _offline()
    data = open(PTX80, "rb").read().replace(b"add.s64", b"add.bogus64", 1)
    assert data != open(PTX80, "rb").read()
    with pytest.raises(kernbin.BuildError) as e:
        kernbin.build(data, "cuda:sm_90")
    assert e.value.backend == "cuda" and e.value.call == "nvJitLinkComplete"
    assert e.value.code_name == "ERROR_PTX_COMPILE" and "ptxas" in e.value.log


def test_arch_specific_ptx_cannot_target_another_arch():
    _needs_isa(PTX90A)
    with pytest.raises(kernbin.BuildError) as e:
        kernbin.build(PTX90A, "cuda:sm_90")
    assert "sm_90a" in e.value.log
    assert kernbin.build(PTX90A, "cuda:sm_90a").info.requires.get("variant") == "a"


def test_cuda_targets_and_ir_kind_checks():
    _offline()
    for bad in ("cuda:sm_9", "cuda:sm_90b", "cuda:ptx", "cuda:sm_90,sm_90"):
        with pytest.raises(kernbin.TargetError) as e:
            kernbin.open_device(bad)
        assert e.value.target == bad
    with pytest.raises(kernbin.BuildError):
        kernbin.build(SAMPLES["vadd"].spv, "cuda:sm_90")        # SPIR-V is not the CUDA backend's IR
    with pytest.raises(kernbin.IncompatibleBinary) as e:
        kernbin.load(kernbin.build(PTX80, "cuda:sm_90"), "cuda:sm_90", fallback=False)
    assert e.value.rule == "offline"


def test_cli_build_inspect_and_fatbin(tmp_path):
    _offline()
    out = tmp_path / "add.knb"
    p = run_cli("build", PTX80, "-t", "cuda:sm_90", "-o", str(out), "--no-cache", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["runs_on"] == {"kind": "cuda", "code": "cubin", "sm": 90, "variant": ""}
    info = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert info["binary_format"] == "cubin" and info["kernels"][0]["registers"] > 0
    assert "stack_frame" in info["kernels"][0]
    text = run_cli("inspect", str(out)).stdout
    assert "regs" in text and "NVIDIA sm_90" in text
    fat = tmp_path / "fat.knb"
    p = run_cli("build", PTX80, "-t", "cuda:sm_80,sm_90", "-o", str(fat), "--no-cache")
    assert p.returncode == 0, p.stderr
    assert json.loads(run_cli("inspect", str(fat), "--json").stdout)["requires"]["kind"] == "cuda-fat"


def test_no_gpu_gives_a_clear_error_not_a_crash():
    try:
        kernbin.open_device("cuda:0")
    except kernbin.RuntimeNotFound as e:
        assert "cuda:0" in str(e)
    except kernbin.TargetError:
        pass
    else:
        pytest.skip("a CUDA GPU is present")


def _nb():
    _offline()
    return kernbin.build(PTX80, "cuda:sm_80,sm_90,ptx")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fatbin_and_cubin_readers_only_raise_invalid_binary(data):
    fat = _FAT
    b = bytearray(fat if data.draw(st.booleans()) else _CUBIN)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(b)))
    for blob in (bytes(b), bytes(b[:cut])):
        for fn in (cufmt.fatbin_members, cufmt.cubin_kernels, cufmt.cubin_sm):
            try:
                fn(blob)
            except kernbin.InvalidBinary:
                pass


try:
    _FAT_NB = kernbin.build(PTX80, "cuda:sm_80,sm_90,ptx")
    _FAT, _CUBIN = _FAT_NB.binary, kernbin.build(PTX80, "cuda:sm_90").binary
except kernbin.KernbinError:       # no nvJitLink: the property test skips through _offline() users
    _FAT = _CUBIN = struct.pack("<IHHQ", cufmt.FATBIN_MAGIC, 1, 16, 0)


# -- on a GPU -------------------------------------------------------------------------------

def _run(module, sample, rng=None):
    launch = sample.setup(rng or np.random.default_rng())
    config, args = launch.cuda_args()
    module.kernel(sample.kernel).launch(config, *args)
    return launch


@pytest.mark.parametrize("name", list(SAMPLES))
def test_gpu_samples_build_reload_run(gpu, name):
    s = SAMPLES[name]
    native = kernbin.build(s.ptx, gpu)            # the driver's own linker
    assert native.info.toolchain.compiler.startswith("CUDA driver JIT")
    assert native.info.requires.get("sm") == gpu.sm
    attrs = native.info.kernel(s.kernel).attributes
    assert attrs["registers"] > 0 and attrs["max_threads_per_block"] > 0
    module = kernbin.load(native.to_bytes(), gpu, fallback=False)
    assert module.source == "native"
    assert _run(module, s).correct()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_gpu_offline_cubin_and_fatbin_load_natively(gpu, name):
    s = SAMPLES[name]
    for target in (f"cuda:sm_{gpu.sm}", f"cuda:sm_80,sm_{gpu.sm},ptx"):
        nb = kernbin.build(s.ptx, target)
        module = kernbin.load(nb, gpu, fallback=False)
        assert module.source == "native" and _run(module, s).correct(), target
        assert kernbin.check(nb, gpu)["verdict"] == "native"


def test_gpu_cubin_for_another_sm_is_refused_by_the_gate_and_rebuilt(gpu):
    other = 80 if gpu.sm // 10 != 8 else 90
    nb = kernbin.build(SAMPLES["softmax"].ptx, f"cuda:sm_{other}")
    res = kernbin.check(nb, gpu)
    assert res["verdict"] == "gate" and res["rule"] == "sm"
    with pytest.warns(kernbin.FallbackWarning):
        module = kernbin.load(nb, gpu)
    assert module.rebuilt and f"sm_{other}" in module.fallback_reason
    assert module.native.info.requires.get("sm") == gpu.sm and _run(module, SAMPLES["softmax"]).correct()


def test_gpu_driver_refusal_is_a_driver_verdict(gpu):
    """A checksum-valid cubin the gate accepts but the driver refuses (its code is garbage)."""
    nb = kernbin.build(SAMPLES["vadd"].ptx, gpu)
    junk = bytearray(nb.binary)
    shoff = struct.unpack_from("<Q", junk, 40)[0]
    junk[64:shoff] = bytes(len(junk[64:shoff]))           # keep the ELF and section headers, zero the rest
    bad = dataclasses.replace(nb, binary=bytes(junk))
    res = kernbin.check(bad, gpu)
    assert res["verdict"] in ("driver", "native"), res      # the driver decides; never a crash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = kernbin.load(bad, gpu)
    if res["verdict"] == "driver":
        assert module.rebuilt and _run(module, SAMPLES["vadd"]).correct()


def test_gpu_triton_ptx_with_torch_tensors(gpu):
    torch = pytest.importorskip("torch")
    nb = kernbin.build(PTX80, gpu)
    module = kernbin.load(nb, gpu, fallback=False)
    n = 98432
    x, y = torch.rand(n, device="cuda"), torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    scratch = kernbin.DevicePointer(0)
    # Triton's add: (x, y, out, n, global_scratch, profile_scratch); BLOCK 1024, 4 warps
    module.kernel("add_kernel").launch(kernbin.LaunchConfig(grid=(n + 1023) // 1024, block=128),
                                       x, y, out, np.int32(n), scratch, scratch)
    torch.cuda.synchronize()
    assert torch.allclose(out, x + y)


def test_gpu_ptx_newer_than_the_driver_still_runs_as_a_cubin(gpu):
    _needs_isa(PTX90A)
    ptx = kernbin.read_ir(PTX90A)
    isa = tuple(int(x) for x in gpu.id.facts["ptx_isa"].split("."))
    if gpu.sm != 90 or ptx.version <= isa:
        pytest.skip("needs an sm_90 device whose driver predates this PTX's ISA")
    nb = kernbin.build(ptx, "cuda:sm_90a,ptx")            # offline: cubin + the (too new) PTX
    res = kernbin.check(nb, gpu)
    assert res["verdict"] == "native" and res["member"] == "cubin sm_90a"
    ptx_only = dataclasses.replace(nb.info.requires, values={"members": [nb.info.requires.get("members")[1]]})
    assert not cufmt.cuda_can_run(ptx_only, gpu.sm, isa)[0]


def test_gpu_bundle_picks_the_cubin_for_this_gpu(gpu, tmp_path):
    path = tmp_path / "g.kbin"
    kernbin.create_bundle(path, [SAMPLES["softmax"].ptx], ["cuda:sm_80", f"cuda:sm_{gpu.sm}"])
    with kernbin.open_bundle(path) as b:
        m = b.load("softmax", gpu)
        assert m.source == "native" and m.bundle_choice["entry"] == f"cuda:sm_{gpu.sm}"
        assert _run(m, SAMPLES["softmax"]).correct()
