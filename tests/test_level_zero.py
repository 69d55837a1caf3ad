"""Level Zero through the real loader (Debian libze1) and the project's CPU test driver."""
import ctypes
import dataclasses
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import kernbin
from kernbin import BuildError, FallbackWarning, RuntimeAPIError
from kernbin.backends import _ze as ze
from kernbin.samples import SAMPLES

from conftest import reload_samples_in_fresh_process, run_cli, run_py

HEADER = "/usr/include/level_zero/ze_api.h"


@pytest.fixture(scope="module")
def natives(l0):
    return {name: kernbin.build(s.spv, l0) for name, s in SAMPLES.items()}


def _run(module, sample, rng=None):
    launch = sample.setup(rng or np.random.default_rng())
    module.kernel(sample.kernel).launch(launch.global_size, launch.local_size, *launch.args)
    return launch


# -- the binding against the real header --------------------------------------------------------

def test_struct_layouts_and_constants_match_ze_api_h(tmp_path):
    if not os.path.exists(HEADER) or shutil.which("gcc") is None:
        pytest.skip("needs gcc and libze-dev (ze_api.h)")
    header = open(HEADER).read()
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <level_zero/ze_api.h>"]
    if "ze_device_ip_version_ext_t" not in header:
        # API 1.6 struct missing from this (older) header: check against the spec's definition
        lines += ["typedef struct { ze_structure_type_t stype; const void *pNext; uint32_t ipVersion; }"
                  " ze_device_ip_version_ext_t;", "#define ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT 0x1000f"]
    lines.append("int main(void) {")
    expected = {}
    for s in ze.STRUCTS:
        name = s.__name__
        lines.append(f'printf("%s %zu\\n", "sizeof {name}", sizeof({name}));')
        expected[f"sizeof {name}"] = ctypes.sizeof(s)
        for field, _ in s._fields_:
            lines.append(f'printf("%s %zu\\n", "offsetof {name}.{field}", offsetof({name}, {field}));')
            expected[f"offsetof {name}.{field}"] = getattr(s, field).offset
    for cname, value in ze.CONSTANTS.items():
        lines.append(f'printf("%s %llu\\n", "{cname}", (unsigned long long)({cname}));')
        expected[cname] = value
    for value, rname in ze.RESULTS.items():
        lines.append(f'printf("%s %llu\\n", "{rname}", (unsigned long long)({rname}));')
        expected[rname] = value
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        got[key] = int(value)
    assert got == expected
    assert len(expected) > 150     # every field of every struct, every constant and result code


# -- native flow -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLES))
def test_build_take_native_reload_run(l0, natives, name):
    native = natives[name]
    assert native.info.binary_format == "ze-native" and native.info.toolchain == l0.toolchain
    assert native.info.requires == l0.requirements_for_own_binaries(native.binary)
    assert native.info.requires.kind == "level-zero-driver"      # the test driver's format is not zebin
    assert native.info.extra["device_uuid"] and native.info.extra["driver_uuid"]
    attrs = native.info.kernel(SAMPLES[name].kernel).attributes
    assert {"spill_bytes", "private_mem_size", "num_args", "max_subgroup_size"} <= attrs.keys()
    module = kernbin.load(native.to_bytes(), l0, fallback=False)
    assert module.source == "native"
    assert _run(module, SAMPLES[name]).correct()


def test_reload_natively_in_a_fresh_process(l0, natives, tmp_path):
    assert reload_samples_in_fresh_process(natives, "level-zero:0", tmp_path) == {n: ["native", True] for n in SAMPLES}


def test_build_log_on_a_bad_build(l0):
    data = bytearray(open(SAMPLES["vadd"].spv, "rb").read())
    with pytest.raises(BuildError) as e:
        kernbin.build(bytes(data), l0, options="-cl-no-such-option")
    assert e.value.code_name == "ZE_RESULT_ERROR_MODULE_BUILD_FAILURE" and e.value.code == 0x70000004
    assert e.value.call == "zeModuleCreate" and "-cl-no-such-option" in e.value.log


def test_driver_update_rebuilds_from_ir(l0, natives, tmp_path):
    path = tmp_path / "softmax.knb"
    natives["softmax"].save(path)
    code = f"""
import warnings, numpy as np, kernbin
from kernbin.samples import SAMPLES
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    m = kernbin.load({str(path)!r}, "level-zero:0")
L = SAMPLES["softmax"].setup(np.random.default_rng())
m.kernel("softmax").launch(L.global_size, L.local_size, *L.args)
print(m.source, L.correct(), m.native.info.toolchain.driver, "|", [str(x.message) for x in w])
"""
    p = run_py(code, env={"KBZE_DRIVER_VERSION": "0x20000"})     # the "new driver"
    assert p.returncode == 0, p.stderr
    out = p.stdout.strip()
    assert out.startswith("ir True 0x20000 |") and "driver_version '0x10000' != '0x20000'" in out
    # and the driver itself refuses the old binary, were the version check skipped
    p = run_py(f"import kernbin\nnb = kernbin.NativeBinary.from_file({str(path)!r})\n"
               f"dev = kernbin.open_device('level-zero:0')\ntry:\n    dev.load_binary(nb.binary)\n"
               f"except kernbin.RuntimeAPIError as e:\n    print(e.code_name)",
               env={"KBZE_DRIVER_VERSION": "0x20000"})
    assert p.stdout.strip() == "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY", p.stderr


def test_binary_the_driver_rejects_falls_back(l0, natives):
    native = natives["matmul"]
    junk = bytes(native.binary[:8]) + bytes(len(native.binary) - 8)       # right magic, wrong everything else
    bad = dataclasses.replace(native, binary=junk)                          # valid .knb checksums, right device
    with pytest.raises(RuntimeAPIError) as e:
        kernbin.load(bad, l0, fallback=False)
    assert e.value.code_name == "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY" and e.value.code == 0x7800000F
    with pytest.warns(FallbackWarning):
        module = kernbin.load(bad, l0)
    assert module.rebuilt and "INVALID_NATIVE_BINARY" in module.fallback_reason
    assert _run(module, SAMPLES["matmul"]).correct()


def test_corrupted_native_file_falls_back(l0, natives):
    data = bytearray(natives["reduce"].to_bytes())
    data[len(data) - len(natives["reduce"].ir.data) - 100] ^= 0x10
    with pytest.warns(FallbackWarning):
        module = kernbin.load(bytes(data), l0)
    assert module.rebuilt and _run(module, SAMPLES["reduce"]).correct()
    with pytest.raises(kernbin.InvalidBinary) as e:
        kernbin.load(bytes(data), l0, fallback=False)
    assert e.value.rule == "section-digest" and e.value.ir is not None


def test_sizes_first_queries_follow_the_spec(l0):
    lib = l0.lib
    loaded = l0.load_ir(kernbin.read_ir(SAMPLES["vadd"].spv))     # keeps the module alive
    module = loaded.handle
    size = ctypes.c_size_t(0)
    assert lib.zeModuleGetNativeBinary(module, ctypes.byref(size), None) == 0 and size.value > 40
    small = ctypes.c_size_t(size.value - 1)
    buf = (ctypes.c_uint8 * size.value)()
    assert lib.zeModuleGetNativeBinary(module, ctypes.byref(small), buf) == ze.ZE_RESULT_ERROR_INVALID_SIZE
    n = ctypes.c_uint32(0)
    assert lib.zeModuleGetKernelNames(module, ctypes.byref(n), None) == 0 and n.value == 1
    assert ze.result_name(lib.zeModuleGetNativeBinary(module, None, None)) == "ZE_RESULT_ERROR_INVALID_NULL_POINTER"


def test_grf_auto_measured_from_spill_mem_size(l0):
    once = kernbin.build(SAMPLES["regheavy"].spv, l0, grf="auto")
    assert once.info.flags == () and len(once.info.register_file["tried"]) == 1
    # the test driver can report spills (KBZE_SPILL_BYTES) unless built with the large register file
    code = ("import kernbin, json\nnb = kernbin.build('kernbin/samples/regheavy.spv', 'level-zero:0', grf='auto')\n"
            "print(json.dumps([nb.info.flags, nb.info.register_file['tried']]))")
    p = run_py(code, env={"KBZE_SPILL_BYTES": "2048"})
    assert p.returncode == 0, p.stderr
    options, tried = json.loads(p.stdout.splitlines()[-1])
    assert options == ["-ze-opt-large-register-file"]
    assert [(t["grf"], t["spill_bytes"]) for t in tried] == [("default", 2048), ("large", 0)] and tried[1]["chosen"]


def test_launch_checks(l0, natives):
    k = kernbin.load(natives["vadd"], l0).kernel("vadd")
    a = np.ones(100, np.float32)
    with pytest.raises(kernbin.LaunchError, match="multiple of the group size"):
        k.launch(100, 16, a, a, a, np.int32(100))
    with pytest.raises(kernbin.LaunchError, match="takes 4 arguments"):
        k.launch(100, None, a)
    c = np.zeros(100, np.float32)
    k.launch(100, None, a, a * 2, c, np.int32(100))            # group size suggested by the driver
    np.testing.assert_array_equal(c, 3 * a)


# -- no driver -------------------------------------------------------------------------------------

def test_no_driver_is_clean(tmp_path):
    env = {"ZE_ENABLE_ALT_DRIVERS": ""}
    p = run_cli("devices", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert [d for d in json.loads(p.stdout) if d["backend"] == "level-zero"] == []
    p = run_cli("build", SAMPLES["vadd"].spv, "-t", "level-zero:0", "-o", str(tmp_path / "x.knb"), env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "level-zero:0" in p.stderr and "ZE_ENABLE_ALT_DRIVERS" in p.stderr
    # a driver path that does not load: zeInit fails and nothing else is called (no crash)
    p = run_cli("build", SAMPLES["vadd"].spv, "-t", "level-zero:0", "-o", str(tmp_path / "x.knb"),
                env={"ZE_ENABLE_ALT_DRIVERS": str(tmp_path / "no-such-driver.so")})
    assert p.returncode == 1 and "zeInit failed: ZE_RESULT_ERROR_UNINITIALIZED" in p.stderr


def test_bench_through_the_loader(l0):
    p = run_cli("bench", "--target", "level-zero:0", "--repeat", "1", "--kernels", "vadd", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["target"] == "level-zero:0" and rep["kernels"][0]["correct"] is True
    assert rep["kernels"][0]["ir_s"] > rep["kernels"][0]["native_s"] > 0


def test_host_and_shared_memory_copies_and_a_launch_on_shared_pointers(l0, natives):
    lib, n = l0.lib, 4096
    rng = np.random.default_rng()
    a, b = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    hdesc = ze.ze_host_mem_alloc_desc_t(stype=ze.ZE_STRUCTURE_TYPE_HOST_MEM_ALLOC_DESC)
    ddesc = ze.ze_device_mem_alloc_desc_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC)
    host, shared = [ctypes.c_void_p() for _ in range(3)], [ctypes.c_void_p() for _ in range(3)]
    try:
        for h, s in zip(host, shared):
            assert lib.zeMemAllocHost(l0.context, ctypes.byref(hdesc), n * 4, 64, ctypes.byref(h)) == 0
            assert lib.zeMemAllocShared(l0.context, ctypes.byref(ddesc), ctypes.byref(hdesc), n * 4, 64, l0.device,
                                        ctypes.byref(s)) == 0
        ctypes.memmove(host[0], a.ctypes.data, n * 4)
        ctypes.memmove(host[1], b.ctypes.data, n * 4)
        for i in range(2):      # host -> shared through the immediate command list
            assert lib.zeCommandListAppendMemoryCopy(l0.cmdlist, shared[i], host[i], n * 4, None, 0, None) == 0
        module = kernbin.load(natives["vadd"], l0, fallback=False)
        k = module.kernel("vadd")
        for i, value in enumerate([shared[0], shared[1], shared[2]]):
            ptr = ctypes.c_void_p(value.value)
            assert lib.zeKernelSetArgumentValue(k.handle, i, 8, ctypes.byref(ptr)) == 0
        count = ctypes.c_int32(n)
        assert lib.zeKernelSetArgumentValue(k.handle, 3, 4, ctypes.byref(count)) == 0
        assert lib.zeKernelSetGroupSize(k.handle, 64, 1, 1) == 0
        groups = ze.ze_group_count_t(n // 64, 1, 1)
        assert lib.zeCommandListAppendLaunchKernel(l0.cmdlist, k.handle, ctypes.byref(groups), None, 0, None) == 0
        out = np.empty(n, np.float32)
        ctypes.memmove(out.ctypes.data, shared[2], n * 4)        # shared memory is host-readable
        np.testing.assert_allclose(out, a + b, rtol=1e-6)
        assert lib.zeMemFree(l0.context, ctypes.c_void_p(12345)) != 0   # not an allocation: an error, no crash
    finally:
        for p in host + shared:
            if p.value:
                lib.zeMemFree(l0.context, p)


def test_launch_config_and_device_pointers_through_the_public_launcher(l0, natives):
    """LaunchConfig(grid, block) and DevicePointer arguments (memory the caller owns) mixed with a
    host array that kernbin copies in and out."""
    lib, n = l0.lib, 4096
    rng = np.random.default_rng()
    a, b = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    hdesc = ze.ze_host_mem_alloc_desc_t(stype=ze.ZE_STRUCTURE_TYPE_HOST_MEM_ALLOC_DESC)
    ddesc = ze.ze_device_mem_alloc_desc_t(stype=ze.ZE_STRUCTURE_TYPE_DEVICE_MEM_ALLOC_DESC)
    shared = [ctypes.c_void_p() for _ in range(2)]
    try:
        for s in shared:
            assert lib.zeMemAllocShared(l0.context, ctypes.byref(ddesc), ctypes.byref(hdesc), n * 4, 64, l0.device,
                                        ctypes.byref(s)) == 0
        ctypes.memmove(shared[0], a.ctypes.data, n * 4)
        k = kernbin.load(natives["vadd"], l0, fallback=False).kernel("vadd")
        cfg = kernbin.LaunchConfig(grid=n // 64, block=64)
        assert cfg.global_size == (n,)
        k.launch(cfg, kernbin.DevicePointer(shared[0].value), b, kernbin.DevicePointer(shared[1].value), np.int32(n))
        out = np.empty(n, np.float32)
        ctypes.memmove(out.ctypes.data, shared[1], n * 4)
        np.testing.assert_allclose(out, a + b, rtol=1e-6)
        with pytest.raises(kernbin.LaunchError):
            k.launch(kernbin.LaunchConfig(grid=1, block=64, shared_mem_bytes=256), a, b, out, np.int32(64))
    finally:
        for p in shared:
            if p.value:
                lib.zeMemFree(l0.context, p)


@pytest.mark.parametrize("bad", [dict(grid=(1, 2), block=(4,)), dict(grid=0, block=1), dict(grid=1, block=1,
                                                                                                 shared_mem_bytes=-1)])
def test_launch_config_validates(bad):
    with pytest.raises(kernbin.LaunchError):
        kernbin.LaunchConfig(**bad)
