"""ocloc backend: real zebin for pvc / acm-g10 / tgllp from the samples and Triton's SPIR-V."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

import kernbin
from kernbin import BuildError, RuntimeNotFound, TargetError
from kernbin.samples import SAMPLES

from conftest import HERE, run_cli, run_py, spirv_igc_refuses

DEVICES = ("pvc", "acm-g10", "tgllp")
TRITON = {n: os.path.join(HERE, "data", "triton", f"{n}.spv") for n in ("triton_add", "triton_matmul")}
IRS = {**{n: s.spv for n, s in SAMPLES.items()}, **TRITON}


def _ocloc():
    try:
        from kernbin.backends.ocloc import get_ocloc
        return get_ocloc()
    except RuntimeNotFound as e:
        pytest.skip(f"ocloc not installed: {e}")


@pytest.fixture(scope="module")
def oc():
    return _ocloc()


def _ocloc_cli_report(spv: str, device: str, tmp_path, options=""):
    """What the ocloc command itself says: its log's spill lines and the zebin's .ze_info."""
    exe = shutil.which("ocloc")
    if exe is None:
        pytest.skip("the ocloc command is not on PATH")
    args = [exe, "compile", "-file", spv, "-spirv_input", "-device", device, "--format", "zebin",
            "-output", "out", "-output_no_suffix", "-out_dir", str(tmp_path)]
    if options:
        args += ["-options", options]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    from elftools.elf.elffile import ELFFile
    with open(tmp_path / "out", "rb") as f:
        ze = yaml.safe_load(ELFFile(f).get_section_by_name(".ze_info").data())
    spills = {k: (int(simd), int(regs), int(sp)) for k, simd, regs, sp in re.findall(
        r"kernel\s+(\S+)\s+compiled SIMD(\d+) allocated (\d+) regs and spilled around (\d+)", p.stdout + p.stderr)}
    return ze, spills


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(IRS))
def test_builds_and_inspect_matches_ocloc(oc, tmp_path, name, device):
    out = tmp_path / "k.knb"
    p = run_cli("build", IRS[name], "-t", f"ocloc:{device}", "-o", str(out), "--no-cache", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert info["binary_format"] == "zebin" and info["requires"]["device"] == device
    assert info["requires"]["kind"] == "intel-gpu" and info["requires"]["ip_version"] == oc.ip_version(device)
    assert info["toolchain"]["backend"] == "ocloc" and info["toolchain"]["compiler"] == f"IGC {oc.igc_version()}"
    ze, spills = _ocloc_cli_report(IRS[name], device, tmp_path)
    by_name = {k["name"]: k for k in info["kernels"]}
    assert set(by_name) == {k["name"] for k in ze["kernels"]}
    for k in ze["kernels"]:
        mine, env = by_name[k["name"]], k["execution_env"]
        assert mine["grf_count"] == env["grf_count"] and mine["simd_size"] == env["simd_size"]
        assert mine["slm_size"] == env.get("slm_size", 0) and mine["barrier_count"] == env.get("barrier_count", 0)
        scratch = sum(b["size"] for b in k.get("per_thread_memory_buffers") or [] if b["type"] == "scratch")
        assert mine["scratch_size"] == scratch
        if k["name"] in spills:
            simd, regs, spilled = spills[k["name"]]
            assert (mine["simd_size"], mine["grf_count"], mine["spill_bytes"]) == (simd, regs, spilled)
        else:
            assert mine["spill_bytes"] == 0


def test_grf_auto_rebuilds_the_triton_matmul_on_pvc_with_the_large_register_file(oc):
    default = kernbin.build(TRITON["triton_matmul"], "ocloc:pvc")
    auto = kernbin.build(TRITON["triton_matmul"], "ocloc:pvc", grf="auto")
    base_spill = default.info.kernels[0].attributes["spill_bytes"]
    assert base_spill > 0
    assert auto.info.flags == ("-cl-intel-256-GRF-per-thread",)
    assert auto.info.kernels[0].attributes["grf_count"] == 256
    assert auto.info.kernels[0].attributes["spill_bytes"] < base_spill
    tried = auto.info.register_file["tried"]
    assert [t["grf"] for t in tried] == ["default", "large"] and tried[1]["chosen"]
    assert tried[0]["spill_bytes"] == base_spill
    assert auto.info.options == kernbin.BuildOptions(register_file="auto")


def test_grf_auto_builds_a_non_spilling_kernel_once(oc):
    auto = kernbin.build(TRITON["triton_add"], "ocloc:pvc", grf="auto")
    assert auto.info.flags == ()
    assert len(auto.info.register_file["tried"]) == 1


def test_grf_auto_keeps_default_when_large_does_not_help(oc):
    # tgllp has no large register file: the retry spills the same, so the default build wins
    auto = kernbin.build(TRITON["triton_matmul"], "ocloc:tgllp", grf="auto")
    tried = auto.info.register_file["tried"]
    assert len(tried) == 2 and tried[0]["chosen"] and tried[0]["spill_bytes"] == tried[1]["spill_bytes"]
    assert auto.info.flags == ()


def test_grf_threshold_and_explicit_modes(oc):
    high = kernbin.build(TRITON["triton_matmul"], "ocloc:pvc", grf="auto", spill_threshold=10_000)
    assert len(high.info.register_file["tried"]) == 1 and high.info.flags == ()
    small = kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc", grf="small")
    assert small.info.flags == ("-cl-intel-128-GRF-per-thread",)
    for doubled in ("-cl-intel-256-GRF-per-thread", "-ze-opt-large-register-file", "-ze-exp-register-file-size=128"):
        with pytest.raises(kernbin.OptionsError) as e:
            kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc", doubled, grf="large")
        assert e.value.field == "flags"
    with pytest.raises(kernbin.OptionsError) as e:
        kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc", grf="huge")
    assert e.value.field == "register_file"


def test_grf_on_the_cpu_runtime_is_refused(cpu):
    with pytest.raises(kernbin.OptionsError) as e:
        kernbin.build(SAMPLES["vadd"].spv, cpu, grf="auto")
    assert e.value.field == "register_file"


def test_auto_policy_is_part_of_the_cache_key(oc, tmp_path):
    from kernbin.cache import Cache, LocalStore
    cache = Cache(LocalStore(str(tmp_path)))
    plain, hit1 = kernbin.get_or_build_ex(TRITON["triton_matmul"], "ocloc:pvc", cache=cache)
    auto, hit2 = kernbin.get_or_build_ex(TRITON["triton_matmul"], "ocloc:pvc", grf="auto", cache=cache)
    again, hit3 = kernbin.get_or_build_ex(TRITON["triton_matmul"], "ocloc:pvc", grf="auto", cache=cache)
    assert (hit1, hit2, hit3) == (False, False, True)
    assert plain.info.flags == () and again.info.flags == ("-cl-intel-256-GRF-per-thread",)
    assert again.sha256 == auto.sha256


def test_bad_spirv_shows_ocloc_log(oc):
    bad = spirv_igc_refuses()
    with pytest.raises(BuildError) as e:
        kernbin.build(bad, "ocloc:pvc")
    assert e.value.backend == "ocloc" and e.value.code == -11 and e.value.code_name == "CL_BUILD_PROGRAM_FAILURE"
    assert "does not support the following opcode" in e.value.log


def test_unknown_device_lists_the_accepted_ones(oc):
    with pytest.raises(TargetError) as e:
        kernbin.build(SAMPLES["vadd"].spv, "ocloc:no-such-gpu")
    msg = str(e.value)
    assert "no-such-gpu" in msg and "pvc" in msg and "acm-g10" in msg and "tgllp" in msg


def test_ocloc_missing_gives_a_clear_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"KERNBIN_OCLOC_LIB": str(tmp_path / "libocloc-missing.so"), "PATH": str(empty)}
    code = ("import kernbin\ntry:\n    kernbin.build('kernbin/samples/vadd.spv', 'ocloc:pvc')\n"
            "except kernbin.RuntimeNotFound as e:\n    print('RNF', e)")
    p = run_py(code, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("RNF") and "intel-opencl-icd" in p.stdout
    devices = run_py("import kernbin, json; print(json.dumps([d.target for d in kernbin.list_devices(['ocloc'])]))",
                     env=env)
    assert json.loads(devices.stdout) == []


def test_subprocess_and_in_process_give_the_same_binary(oc):
    if oc.mode != "inprocess" or shutil.which("ocloc") is None:
        pytest.skip("needs both libocloc.so and the ocloc command")
    code = ("import kernbin, sys\nnb = kernbin.build('kernbin/samples/matmul.spv', 'ocloc:acm-g10')\n"
            "print(nb.info.toolchain.versions['ocloc_mode'], nb.sha256)")
    sub = run_py(code, env={"KERNBIN_OCLOC": "subprocess"})
    assert sub.returncode == 0, sub.stderr
    mode, sha = sub.stdout.split()
    assert mode == "subprocess"
    assert kernbin.build(SAMPLES["matmul"].spv, "ocloc:acm-g10").sha256 == sha


def test_parallel_build_for_three_devices(oc, tmp_path):
    p = run_cli("build", TRITON["triton_matmul"], *sum((["-t", f"ocloc:{d}"] for d in DEVICES), []),
                "-o", str(tmp_path / "out"), "--grf", "auto", "--no-cache", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["target"] for r in rows] == [f"ocloc:{d}" for d in DEVICES]
    for r in rows:
        assert os.path.exists(r["output"]) and r["output"].endswith(f"triton_matmul.ocloc-{r['target'][6:]}.knb")
    by = {r["target"]: r for r in rows}
    assert by["ocloc:pvc"]["flags"] == ["-cl-intel-256-GRF-per-thread"]
    assert by["ocloc:tgllp"]["flags"] == []


def test_offline_target_cannot_load(oc):
    nb = kernbin.build(SAMPLES["vadd"].spv, "ocloc:pvc")
    with pytest.raises(kernbin.IncompatibleBinary) as e:
        kernbin.load(nb, "ocloc:pvc", fallback=False)
    assert e.value.rule == "offline"
    with pytest.raises(kernbin.OfflineTarget) as e:
        kernbin.open_device("ocloc:pvc").load_native(nb)
    assert e.value.target == "ocloc:pvc"
    res = kernbin.check(nb, "ocloc:pvc")
    assert res["ok"] is False and res["verdict"] == "gate" and res["rule"] == "offline"
