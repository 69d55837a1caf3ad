"""The runs-on rules ("what a device must be"), kept apart from the toolchain ("who built it").

Intel GPU rules run through the real Level Zero loader with the project's CPU test driver
impersonating a device identity (KBZE_DEVICE_IP / KBZE_DEVICE_NAME): it reports a PVC's IP
version but cannot run Intel GPU code, so a zebin that passes kernbin's gate is then refused
by the driver -- which is exactly the split `kernbin check` reports as "gate" vs "driver".
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import kernbin
from kernbin.device import Requirements, ip_version_text
from kernbin.formats import zebin as zefmt
from kernbin.samples import SAMPLES

from conftest import ZE_DRIVER, ZE_DRIVER_ERROR, run_cli

PVC_IP, ACM_IP = "12.60.7", "12.55.8"


def _ip_int(text: str) -> int:
    a, b, c = (int(x) for x in text.split("."))
    return (a << 22) | (b << 14) | c


IMPERSONATE_PVC = {"KBZE_DEVICE_IP": hex(_ip_int(PVC_IP)), "KBZE_DEVICE_NAME": "Intel(R) Data Center GPU Max 1550"}


@pytest.fixture(scope="module")
def zebins(tmp_path_factory):
    try:
        from kernbin.backends.ocloc import get_ocloc
        get_ocloc()
    except kernbin.RuntimeNotFound as e:
        pytest.skip(f"ocloc not installed: {e}")
    d = tmp_path_factory.mktemp("zebins")
    out = {}
    for target in ("ocloc:pvc", "ocloc:acm-g10", "ocloc:pvc,acm-g10"):
        nb = kernbin.build(SAMPLES["vadd"].spv, target)
        path = d / (target.replace(":", "-").replace(",", "+") + ".knb")
        nb.save(path)
        out[target] = (nb, str(path))
    return out


@pytest.fixture(scope="module")
def driver():
    if not ZE_DRIVER:
        pytest.skip(f"Level Zero CPU test driver not built: {ZE_DRIVER_ERROR}")
    return ZE_DRIVER


def test_ip_version_spelling_matches_ocloc():
    assert ip_version_text(0x030F0007) == PVC_IP
    assert ip_version_text(_ip_int(ACM_IP)) == ACM_IP


def test_ocloc_records_runs_on_and_built_by_apart(zebins):
    pvc = zebins["ocloc:pvc"][0].info
    assert pvc.requires.kind == "intel-gpu" and pvc.requires.get("ip_version") == PVC_IP
    assert pvc.requires.get("ze_info_version")
    assert pvc.toolchain.backend == "ocloc" and pvc.toolchain.compiler.startswith("IGC ")
    fat = zebins["ocloc:pvc,acm-g10"][0].info
    assert fat.binary_format == "zebin-fat" and fat.requires.kind == "intel-gpu-fat"
    assert sorted(m["ip_version"] for m in fat.requires.get("members")) == [ACM_IP, PVC_IP]


def test_the_rule_itself(zebins):
    req = zebins["ocloc:pvc"][0].info.requires
    version = req.get("ze_info_version")
    ok, rule, _, _ = zefmt.intel_gpu_can_run(req, PVC_IP, version)
    assert ok
    ok, rule, reason, _ = zefmt.intel_gpu_can_run(req, ACM_IP, version)
    assert not ok and rule == "ip-version" and PVC_IP in reason
    ok, rule, _, _ = zefmt.intel_gpu_can_run(req, "", None)
    assert not ok and rule == "ip-version"
    fat = zebins["ocloc:pvc,acm-g10"][0].info.requires
    assert zefmt.intel_gpu_can_run(fat, ACM_IP, None)[3] == f"64.{ACM_IP}"
    assert zefmt.intel_gpu_can_run(fat, PVC_IP, None)[3] == f"64.{PVC_IP}"
    ok, rule, _, member = zefmt.intel_gpu_can_run(fat, "12.10.0", None)
    assert not ok and rule == "ip-version" and member is None


def _bump_ze_info_minor(zebin: bytes) -> tuple[bytes, str, str]:
    """The same zebin with its .ze_info version's minor raised by one (same length, real bytes)."""
    old = zefmt.parse_zebin(zebin).ze_info_version
    major, minor = old.split(".")
    new = f"{major}.{int(minor) + 1}"
    assert len(new) == len(old), "test needs a same-length bump"
    import re
    m = re.search(rb"\nversion:\s*'" + re.escape(old.encode()) + b"'", zebin)
    assert m, "the .ze_info version line"
    needle = m.group(0)
    assert zebin.count(needle) == 1
    return zebin.replace(needle, needle.replace(old.encode(), new.encode())), old, new


def test_a_newer_zebin_version_than_the_runtime_decodes_is_refused(zebins):
    nb = zebins["ocloc:pvc"][0]
    newer, old, new = _bump_ze_info_minor(nb.binary)
    assert zefmt.parse_zebin(newer).ze_info_version == new
    req = zefmt.requirements(newer, "pvc", PVC_IP)
    ok, rule, reason, _ = zefmt.intel_gpu_can_run(req, PVC_IP, old)      # a runtime that decodes `old`
    assert not ok and rule == "zebin-version" and new in reason
    assert zefmt.intel_gpu_can_run(req, PVC_IP, new)[0]                 # one that decodes `new`
    major = int(old.split(".")[0])
    assert not zefmt.intel_gpu_can_run(req, PVC_IP, f"{major + 1}.0")[0]   # another major: never


_CHECK = """
import json, sys, warnings, numpy as np, kernbin
from kernbin.samples import SAMPLES
res = kernbin.check(sys.argv[1], "level-zero:0")
dev = kernbin.open_device("level-zero:0")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    m = kernbin.load(sys.argv[1], dev)
L = SAMPLES["vadd"].setup(np.random.default_rng())
m.kernel("vadd").launch(L.global_size, L.local_size, *L.args)
print(json.dumps({"check": res, "ip": dev.id.facts["ip_version"], "name": dev.id.name, "source": m.source,
                  "reason": m.fallback_reason, "correct": L.correct()}))
"""


def _through_loader(path: str, env: dict) -> dict:
    e = dict(os.environ)
    e.update(env)
    p = subprocess.run([sys.executable, "-c", _CHECK, path], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_ocloc_zebin_passes_the_gate_on_an_impersonated_pvc_and_reaches_the_driver(driver, zebins):
    out = _through_loader(zebins["ocloc:pvc"][1], IMPERSONATE_PVC)
    assert out["ip"] == PVC_IP and out["name"] == IMPERSONATE_PVC["KBZE_DEVICE_NAME"]
    # kernbin let it through; the (CPU) driver cannot run Intel GPU code and says so
    assert out["check"]["verdict"] == "driver" and out["check"]["rule"] == "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY"
    assert not out["check"]["ok"]
    # load() then falls back to the embedded SPIR-V, and the kernel runs correctly
    assert out["source"] == "ir" and "INVALID_NATIVE_BINARY" in out["reason"] and out["correct"]


def test_a_zebin_for_another_ip_is_refused_by_the_gate(driver, zebins):
    out = _through_loader(zebins["ocloc:acm-g10"][1], IMPERSONATE_PVC)
    assert out["check"]["verdict"] == "gate" and out["check"]["rule"] == "ip-version"
    assert ACM_IP in out["check"]["reason"] and PVC_IP in out["check"]["reason"]
    assert out["source"] == "ir" and out["correct"]


def test_fat_archive_member_is_chosen_for_the_live_device(driver, zebins):
    path = zebins["ocloc:pvc,acm-g10"][1]
    out = _through_loader(path, IMPERSONATE_PVC)
    assert out["check"]["member"] == f"64.{PVC_IP}" and out["check"]["verdict"] == "driver"
    acm = {"KBZE_DEVICE_IP": hex(_ip_int(ACM_IP)), "KBZE_DEVICE_NAME": "Intel(R) Arc(TM) A770 Graphics"}
    out = _through_loader(path, acm)
    assert out["check"]["member"] == f"64.{ACM_IP}" and out["check"]["verdict"] == "driver"
    out = _through_loader(path, {})          # the driver's own identity: no member fits
    assert out["check"]["verdict"] == "gate" and out["check"]["member"] is None


def test_check_json_verdicts_from_the_cli(driver, zebins, tmp_path):
    p = run_cli("check", zebins["ocloc:acm-g10"][1], "-t", "level-zero:0", "--json", env=IMPERSONATE_PVC)
    assert p.returncode == 2
    res = json.loads(p.stdout)
    assert res["verdict"] == "gate" and res["reason"]
    own = tmp_path / "own.knb"
    assert run_cli("build", SAMPLES["vadd"].spv, "-t", "level-zero:0", "-o", str(own), "--no-cache").returncode == 0
    p = run_cli("check", str(own), "-t", "level-zero:0", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["verdict"] == "native"


def test_a_driver_update_alone_does_not_invalidate_a_zebin(zebins):
    """The toolchain is not part of the gate: the same zebin with another compiler/driver recorded
    passes the rule exactly as before (on CUDA the same holds for a cubin)."""
    nb = zebins["ocloc:pvc"][0]
    other = dataclasses.replace(nb.info.toolchain, compiler="IGC 99.0", driver="99.0")
    info = dataclasses.replace(nb.info, toolchain=other)
    assert zefmt.intel_gpu_can_run(info.requires, PVC_IP, None)[0]
    assert info.requires == nb.info.requires


def test_level_zero_refuses_a_doubled_register_file_flag(driver):
    for flags in ("-ze-exp-register-file-size=128", "-ze-opt-large-register-file", "-cl-intel-256-GRF-per-thread"):
        with pytest.raises(kernbin.OptionsError) as e:
            kernbin.build(SAMPLES["vadd"].spv, "level-zero:0", flags, grf="large")
        assert e.value.field == "flags"


def test_requirements_json_round_trip_is_bounded():
    req = Requirements("intel-gpu", {"ip_version": PVC_IP, "members": [{"a": [1, 2]}]})
    assert Requirements.from_json(json.loads(json.dumps(req.to_json()))) == req
    deep = {"kind": "x", "v": [[[[[[[[[[[1]]]]]]]]]]]}
    with pytest.raises(ValueError):
        Requirements.from_json(deep)


def test_a_driver_crash_is_a_verdict_not_a_dead_process(driver, tmp_path):
    """The bytes are intact (digests pass) and meet every requirement, and the driver still dies on
    them: `kernbin check` loads in a child process and reports it (test driver: KBZE_CRASH_ON_NATIVE)."""
    own = tmp_path / "own.knb"
    assert run_cli("build", SAMPLES["vadd"].spv, "-t", "level-zero:0", "-o", str(own), "--no-cache").returncode == 0
    p = run_cli("check", str(own), "-t", "level-zero:0", "--json", env={"KBZE_CRASH_ON_NATIVE": "1"})
    assert p.returncode == 2, p.stderr
    res = json.loads(p.stdout)
    assert res["verdict"] == "driver" and res["rule"] == "crash" and "SIGABRT" in res["reason"]
    p = run_cli("check", str(own), "-t", "level-zero:0", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["verdict"] == "native"


def test_load_isolate_probes_once_and_turns_a_crash_into_a_fallback(driver, tmp_path):
    """load(..., isolate=True): the driver crashes on the bytes in a child, the parent rebuilds from
    the IR and remembers the verdict (a second process does not probe again)."""
    own = tmp_path / "own.knb"
    assert run_cli("build", SAMPLES["vadd"].spv, "-t", "level-zero:0", "-o", str(own), "--no-cache").returncode == 0
    code = f"""
import json, warnings, os, numpy as np, kernbin
from kernbin import api
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    m = kernbin.load({str(own)!r}, "level-zero:0", isolate=True)
L = __import__("kernbin.samples", fromlist=["SAMPLES"]).SAMPLES["vadd"].setup(np.random.default_rng())
m.kernel("vadd").launch(L.global_size, L.local_size, *L.args)
print(json.dumps({{"source": m.source, "reason": m.fallback_reason, "correct": L.correct(),
                   "records": len(os.listdir(os.path.join(os.environ["KERNBIN_CACHE_DIR"], "probes")))}}))
"""
    env = {"KBZE_CRASH_ON_NATIVE": "1", "KERNBIN_CACHE_DIR": str(tmp_path / "c")}
    e = dict(os.environ, **env)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["source"] == "ir" and "crash" in out["reason"] and out["correct"] and out["records"] == 1
    # without the crash knob the remembered verdict still stands: no new probe, the same decision
    e.pop("KBZE_CRASH_ON_NATIVE")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["source"] == "ir" and out["records"] == 1
