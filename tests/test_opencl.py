"""Build -> reload -> run on the real Intel CPU OpenCL runtime, outputs checked against numpy."""
import dataclasses
import warnings

import numpy as np
import pytest

import kernbin
from kernbin import BuildError, FallbackWarning, IncompatibleBinary, InvalidBinary, LaunchError, NativeBinary
from kernbin.samples import SAMPLES

from conftest import reload_samples_in_fresh_process


@pytest.fixture(scope="module")
def natives():
    dev = kernbin.open_device("opencl:cpu") if _have_cpu() else None
    if dev is None:
        pytest.skip("no OpenCL CPU device with SPIR-V support")
    return {name: kernbin.build(s.spv, dev) for name, s in SAMPLES.items()}


def _have_cpu():
    try:
        kernbin.open_device("opencl:cpu")
        return True
    except kernbin.KernbinError:
        return False


def _run(module, sample, rng):
    launch = sample.setup(rng)
    module.kernel(sample.kernel).launch(launch.global_size, launch.local_size, *launch.args)
    return launch


@pytest.mark.parametrize("name", list(SAMPLES))
def test_build_reload_run(cpu, natives, rng, name):
    sample, native = SAMPLES[name], natives[name]
    assert native.kernel_names == (sample.kernel,)
    attrs = native.info.kernel(sample.kernel).attributes
    assert attrs["max_work_group_size"] >= 1 and attrs["num_args"] >= 3
    assert native.info.requires == cpu.requirements_for_own_binaries(native.binary)
    assert native.info.toolchain == cpu.toolchain and native.info.device_fingerprint == cpu.id.fingerprint
    assert native.info.binary_format == "opencl-cpu-elf"
    module = kernbin.load(NativeBinary.from_bytes(native.to_bytes()), cpu, fallback=False)
    assert module.source == "native" and not module.rebuilt
    # the runtime's properties on the loaded kernel agree with what the build recorded
    # (queried before launch: CL_KERNEL_LOCAL_MEM_SIZE then also counts __local arguments)
    assert module.kernel(sample.kernel).attributes == attrs
    launch = _run(module, sample, rng)
    np.testing.assert_allclose(launch.args[launch.out_index], launch.expected, rtol=launch.rtol,
                               atol=launch.atol)


def test_local_memory_is_reported(cpu, natives):
    assert natives["matmul"].info.kernel("matmul").attributes["local_mem_size"] == 2 * 16 * 16 * 4


def test_reload_from_file_in_a_fresh_process(cpu, natives, tmp_path):
    assert reload_samples_in_fresh_process(natives, "opencl:cpu", tmp_path) == {n: ["native", True] for n in SAMPLES}


def _spy_loads(monkeypatch, device):
    seen = []
    real = type(device).load_native

    def spy(self, native, payload=None):
        seen.append(native.sha256)
        return real(self, native, payload)
    monkeypatch.setattr(type(device), "load_native", spy)
    return seen


def test_flipped_bytes_never_reach_the_runtime_and_fallback_runs(cpu, natives, rng, monkeypatch):
    native = natives["softmax"]
    data = bytearray(native.to_bytes())
    native_start = len(data) - len(native.ir.data) - len(native.binary)
    data[native_start + len(native.binary) // 2] ^= 0x40
    seen = _spy_loads(monkeypatch, cpu)
    with pytest.warns(FallbackWarning):
        module = kernbin.load(bytes(data), cpu)
    assert module.rebuilt and module.fallback_reason
    # the only bytes the runtime saw are the freshly built ones
    assert seen == [module.native.sha256]
    launch = _run(module, SAMPLES["softmax"], rng)
    assert launch.correct()
    with pytest.raises(InvalidBinary) as e:
        kernbin.load(bytes(data), cpu, fallback=False)
    assert e.value.rule == "section-digest"


def test_corrupt_header_falls_back_to_ir_given_by_the_caller(cpu, natives, rng):
    native = natives["reduce"]
    data = bytearray(native.to_bytes())
    data[100] ^= 0x01                  # inside the JSON header: the header hash fails
    with pytest.raises(InvalidBinary) as e:
        kernbin.load(bytes(data), cpu, fallback=False)
    assert e.value.rule == "header-digest"
    with pytest.raises(InvalidBinary):  # nothing to fall back to
        kernbin.load(bytes(data), cpu)
    with pytest.warns(FallbackWarning):
        module = kernbin.load(bytes(data), cpu, ir=SAMPLES["reduce"].spv)
    assert module.rebuilt and _run(module, SAMPLES["reduce"], rng).correct()


def test_foreign_device_is_rebuilt_with_a_warning(cpu, natives, rng, monkeypatch):
    native = natives["matmul"]
    req = native.info.requires
    foreign_req = dataclasses.replace(req, values={**req.values, "device": "Some Other CPU", "driver": "1999.1"})
    foreign = dataclasses.replace(native, info=dataclasses.replace(native.info, requires=foreign_req,
                                                                   flags=("-cl-mad-enable",)))
    with pytest.raises(IncompatibleBinary) as e:
        kernbin.load(foreign, cpu, fallback=False)
    assert e.value.rule == "runtime" and "Some Other CPU" in e.value.reason
    assert e.value.requires == foreign_req and e.value.device == cpu.id
    seen = _spy_loads(monkeypatch, cpu)
    with pytest.warns(FallbackWarning):
        module = kernbin.load(foreign.to_bytes(), cpu)
    assert module.rebuilt and "Some Other CPU" in module.fallback_reason
    assert seen == [module.native.sha256]          # the foreign binary never reached the runtime
    assert module.native.info.requires == req      # the new binary is for this device ...
    assert module.native.info.flags == ("-cl-mad-enable",)   # ... built with the recorded flags
    assert _run(module, SAMPLES["matmul"], rng).correct()
    # the returned binary is good to store: it now loads natively
    assert kernbin.load(module.native.to_bytes(), cpu, fallback=False).source == "native"


def test_fallback_warns_once_per_reason(cpu, natives):
    native = natives["vadd"]
    req = native.info.requires
    foreign = dataclasses.replace(native, info=dataclasses.replace(
        native.info, requires=dataclasses.replace(req, values={**req.values, "driver": "once-only"})))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert kernbin.load(foreign, cpu).rebuilt
    assert len([w for w in caught if issubclass(w.category, FallbackWarning)]) == 1


def test_binary_the_runtime_rejects_falls_back(cpu, natives, rng):
    native = natives["vadd"]
    junk = bytearray(native.binary)
    junk[64:] = np.random.default_rng(7).integers(0, 256, len(junk) - 64, dtype=np.uint8).tobytes()
    bad = dataclasses.replace(native, binary=bytes(junk))   # valid checksum, right device, garbage code
    with pytest.raises(kernbin.RuntimeAPIError) as e:
        kernbin.load(bad, cpu, fallback=False)
    assert e.value.code_name == "CL_INVALID_BINARY" and e.value.code == -42
    with pytest.warns(FallbackWarning):
        module = kernbin.load(bad, cpu)
    assert "CL_INVALID_BINARY" in module.fallback_reason
    assert _run(module, SAMPLES["vadd"], rng).correct()


def test_non_elf_bytes_are_stopped_before_the_runtime(cpu, natives):
    bad = dataclasses.replace(natives["vadd"], binary=b"MZ" + b"\0" * 200)
    with pytest.raises(InvalidBinary) as e:
        kernbin.load(bad, cpu, fallback=False)
    assert e.value.rule == "device-binary"


def test_mismatched_ir_is_refused(cpu, natives):
    with pytest.raises(kernbin.KernbinError, match="does not match"):
        kernbin.load(natives["vadd"].without_ir(), cpu, ir=SAMPLES["matmul"].spv)


def test_build_error_carries_code_and_log(cpu):
    with pytest.raises(BuildError) as e:
        kernbin.build(SAMPLES["vadd"].spv, cpu, options="-cl-no-such-option")
    err = e.value
    assert err.code_name == "CL_INVALID_BUILD_OPTIONS" and err.code == -43
    assert err.call == "clBuildProgram" and err.backend == "opencl"
    assert "-cl-no-such-option" in err.log
    assert "-cl-no-such-option" in str(err)


def test_unsupported_spirv_version_is_refused_before_the_runtime(cpu):
    data = bytearray(open(SAMPLES["vadd"].spv, "rb").read())
    data[4:8] = (0x00010600).to_bytes(4, "little")      # claim SPIR-V 1.6
    with pytest.raises(BuildError) as e:
        kernbin.build(bytes(data), cpu)
    # refused by kernbin before the runtime: no runtime result code, and the call it guards
    assert e.value.call == "clCreateProgramWithIL" and e.value.backend == "opencl"
    assert e.value.code is None and e.value.code_name is None


def test_launch_argument_errors(cpu, natives):
    k = kernbin.load(natives["vadd"], cpu).kernel("vadd")
    a = np.zeros(16, np.float32)
    with pytest.raises(LaunchError, match="takes 4 arguments"):
        k.launch(16, None, a, a)
    with pytest.raises(LaunchError, match="numpy scalars"):
        k.launch(16, None, a, a, a, 16)
    with pytest.raises(LaunchError, match="C-contiguous"):
        k.launch(8, None, a[::2], a[::2], a[::2], np.int32(8))
    with pytest.raises(kernbin.KernelNotFound) as e:
        kernbin.load(natives["vadd"], cpu).kernel("nope")
    assert e.value.name == "nope" and e.value.available == ("vadd",)


def test_read_only_arrays_are_not_copied_back(cpu, natives, rng):
    k = kernbin.load(natives["vadd"], cpu).kernel("vadd")
    a, b = rng.standard_normal(64, dtype=np.float32), rng.standard_normal(64, dtype=np.float32)
    a.setflags(write=False)
    c = np.zeros(64, np.float32)
    k.launch(64, None, a, b, c, np.int32(64))
    np.testing.assert_allclose(c, a + b, rtol=1e-6)


@pytest.mark.parametrize("spec", ["opencl", "metal:0", "opencl:", "opencl:fpga", "level-zero:x", "ocloc:pv c",
                                  "x" * 300 + ":0"])
def test_target_errors(spec):
    with pytest.raises(kernbin.TargetError) as e:
        kernbin.open_device(spec)
    assert e.value.target == spec


def test_targets_are_canonicalised_once():
    assert str(kernbin.parse_target(" OpenCL:CPU ")) == "opencl:cpu"
    assert str(kernbin.parse_target("level_zero:00")) == "level-zero:0"
    assert str(kernbin.parse_target("ocloc:PVC,acm-g10")) == "ocloc:pvc,acm-g10"
