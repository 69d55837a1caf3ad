"""Native means native (issue #20): a load kernbin calls native is not a JIT compile in the driver.

- ocloc builds carry no IR (no ``.spv`` section, no ``generic_ir`` fat member): read with kernbin's
  own parsers;
- a Level Zero native load that the driver recompiles from IR (the CPU test driver's
  ``KBZE_RECOMPILE_FROM_IR``, which writes NEO's ``-Wrecompiled-from-ir`` warning into the build
  log) is a driver JIT: ``module.driver_jit``, a FallbackWarning, ``check`` verdict ``driver-jit``,
  and a :class:`DriverJitError` in strict mode;
- an old zebin that still carries its IR is flagged by the gate (``rule="embedded-ir"``); in strict
  mode a device that cannot show a recompile (no build log read) refuses it before the driver sees
  it, and Level Zero judges by its build log;
- a CUDA fatbin whose chosen member is PTX gets the same verdict, at the gate.
"""
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pytest

import kernbin
from kernbin import FallbackWarning, _jit
from kernbin.backends.base import Fit
from kernbin.device import Requirements
from kernbin.errors import DriverJitError, OptionsError
from kernbin.formats import cubin as cufmt
from kernbin.formats import zebin as zefmt
from kernbin.samples import SAMPLES

from conftest import run_cli

VADD = SAMPLES["vadd"].spv
PVC_IP = "12.60.7"
IMPERSONATE_PVC = {"KBZE_DEVICE_IP": hex((12 << 22) | (60 << 14) | 7), "KBZE_DEVICE_NAME": "Intel(R) Data Center GPU Max 1550"}


@pytest.fixture(autouse=True)
def _fresh_policy(monkeypatch):
    """Each test sees its own warnings and no strict mode from the environment."""
    monkeypatch.delenv(_jit.STRICT_ENV, raising=False)
    monkeypatch.delenv("KBZE_RECOMPILE_FROM_IR", raising=False)
    _jit._warned.clear()


@pytest.fixture(scope="module")
def oc():
    try:
        from kernbin.backends.ocloc import get_ocloc
        return get_ocloc()
    except kernbin.RuntimeNotFound as e:
        pytest.skip(f"ocloc not installed: {e}")


@pytest.fixture(scope="module")
def l0_native(l0):
    return kernbin.build(VADD, l0)


# -- ocloc builds carry no IR ---------------------------------------------------------------------

def test_ocloc_zebin_has_no_spv_section_and_keeps_the_ir_in_the_knb(oc, tmp_path):
    nb = kernbin.build(VADD, "ocloc:pvc")
    z = zefmt.parse_zebin(nb.binary)
    assert ".spv" not in z.sections and not z.has_ir
    assert nb.info.extra["ir_embedded_in_binary"] is False
    assert nb.ir is not None and nb.ir.sha256 == nb.info.ir_sha256      # kernbin's own fallback keeps it
    nb.save(tmp_path / "k.knb")
    p = run_cli("inspect", str(tmp_path / "k.knb"), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["container"]["ir_embedded"] is False and ".spv" not in out["container"]["sections"]
    assert out["extra"]["ir_embedded_in_binary"] is False and out["ir"]["embedded"] is True


def test_ocloc_fat_archive_has_no_generic_ir_member(oc):
    nb = kernbin.build(VADD, "ocloc:pvc,acm-g10")
    members = zefmt.read_ar(nb.binary)
    assert zefmt.GENERIC_IR not in members
    zebins = [b for b in members.values() if zefmt.is_zebin(b)]
    assert len(zebins) == 2 and not any(zefmt.parse_zebin(b).has_ir for b in zebins)
    assert nb.info.extra["generic_ir_member"] is False and nb.info.extra["ir_embedded_in_binary"] is False


# -- old zebins that still carry their IR ---------------------------------------------------------

def _zebin_with_ir(oc) -> bytes:
    """What ocloc made for kernbin before -exclude_ir: the same build, with the .spv section."""
    rc, outs, log = oc.invoke(["compile", "-file", "k.spv", "-spirv_input", "-device", "pvc", "--format", "zebin",
                               "-output", "k", "-output_no_suffix"], {"k.spv": open(VADD, "rb").read()})
    assert rc == 0, log
    assert zefmt.parse_zebin(outs["k"]).has_ir
    return outs["k"]


_OLD = """
import json, sys, kernbin
from kernbin.errors import DriverJitError
dev = kernbin.open_device("level-zero:0")
out = {}
for name in ("old", "new"):
    nb = kernbin.read_native(sys.argv[1] + "/" + name + ".knb")
    fit = dev.backend.can_run(nb.info, dev)
    out[name] = {"fit": [fit.ok, fit.rule], "check": kernbin.check(nb, dev, isolate=False),
                 "strict_check": kernbin.check(nb, dev, isolate=False, strict=True)}
    try:
        kernbin.load(nb, dev, fallback=False, strict=True)
    except DriverJitError as e:
        out[name]["strict_load"] = ["DriverJitError", e.rule]
    except kernbin.KernbinError as e:
        out[name]["strict_load"] = [type(e).__name__, getattr(e, "code_name", None)]
print(json.dumps(out))
"""


def test_a_zebin_carrying_ir_is_flagged_by_the_gate(oc, l0, tmp_path):
    new = kernbin.build(VADD, "ocloc:pvc")
    old = dataclasses.replace(new, binary=_zebin_with_ir(oc),
                              info=dataclasses.replace(new.info, extra={**new.info.extra, "ir_embedded_in_binary": True}))
    old.save(tmp_path / "old.knb")
    new.save(tmp_path / "new.knb")
    env = dict(os.environ, **IMPERSONATE_PVC)
    p = subprocess.run([sys.executable, "-c", _OLD, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    # the gate lets both through (same machine code); the old one is flagged as a possible driver JIT
    assert out["old"]["fit"] == [True, "embedded-ir"] and out["new"]["fit"] == [True, ""]
    # this CPU driver cannot run GPU code: both reach it and it refuses them; Level Zero reads the
    # build log after a native load, so strict mode lets the old one reach the driver too
    for name in ("old", "new"):
        for check in ("check", "strict_check"):
            assert out[name][check]["verdict"] == "driver"
        assert out[name]["strict_load"] == ["RuntimeAPIError", "ZE_RESULT_ERROR_INVALID_NATIVE_BINARY"]


def test_strict_mode_refuses_ir_carrying_bytes_where_no_build_log_shows_a_recompile(cpu, l0):
    """The policy for the gate's embedded-ir verdict: the OpenCL device reads no build log after a
    native load, the Level Zero one does."""
    from kernbin.backends import _intel
    fit = Fit(True, _intel.EMBEDDED_IR, "embedded-ir")
    assert not cpu.reports_recompile and l0.reports_recompile
    with pytest.raises(DriverJitError) as e:
        _jit.refuse_possible_jit(cpu, fit, strict=True)
    assert e.value.rule == "embedded-ir"
    _jit.refuse_possible_jit(cpu, fit, strict=False)
    _jit.refuse_possible_jit(l0, fit, strict=True)
    loaded = {"ok": True, "verdict": "native", "reason": "", "rule": "", "kernels": [{"name": "vadd"}]}
    res = _jit.check_verdict(cpu, dict(loaded), fit, strict=True)
    assert (res["ok"], res["verdict"], res["rule"]) == (False, "driver-jit", "embedded-ir")
    res = _jit.check_verdict(cpu, dict(loaded), fit, strict=False)
    assert (res["ok"], res["verdict"], res["rule"]) == (True, "native", "embedded-ir")
    res = _jit.check_verdict(l0, dict(loaded, driver_jit=None), fit, strict=True)
    assert (res["ok"], res["verdict"], res["rule"]) == (True, "native", "embedded-ir")
    res = _jit.check_verdict(l0, dict(loaded, driver_jit="recompiled"), fit, strict=True)
    assert (res["ok"], res["verdict"], res["rule"]) == (False, "driver-jit", "driver-jit")


# -- a Level Zero native load the driver recompiles from IR --------------------------------------

def test_level_zero_native_load_reads_the_build_log(l0, l0_native):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        m = kernbin.load(l0_native, l0, fallback=False, strict=True)
    assert m.source == "native" and m.driver_jit is None and m.build_log
    res = kernbin.check(l0_native, l0)
    assert res["ok"] and res["verdict"] == "native" and res["rule"] == ""


def test_a_recompile_in_the_driver_is_a_driver_jit(l0, l0_native, monkeypatch):
    monkeypatch.setenv("KBZE_RECOMPILE_FROM_IR", "1")
    with pytest.warns(FallbackWarning):
        m = kernbin.load(l0_native, l0, fallback=False)
    assert m.source == "native" and m.driver_jit
    from kernbin.backends import _intel
    assert _intel.recompiled_from_ir(m.build_log)
    for isolate in (False, True):            # the child process inherits the knob
        res = kernbin.check(l0_native, l0, isolate=isolate)
        assert (res["ok"], res["verdict"], res["rule"]) == (False, "driver-jit", "driver-jit")
        assert res["reason"] == m.driver_jit


def test_strict_mode_refuses_a_driver_jit(l0, l0_native, monkeypatch):
    monkeypatch.setenv("KBZE_RECOMPILE_FROM_IR", "1")
    with pytest.raises(DriverJitError) as e:
        kernbin.load(l0_native, l0, strict=True)
    assert e.value.rule == "driver-jit" and e.value.target == "level-zero:0"
    assert isinstance(e.value, kernbin.KernbinError)
    monkeypatch.setenv(_jit.STRICT_ENV, "1")
    with pytest.raises(DriverJitError) as e:
        kernbin.load(l0_native, l0)
    assert e.value.rule == "driver-jit"
    with pytest.warns(FallbackWarning):
        assert kernbin.load(l0_native, l0, strict=False, fallback=False).driver_jit   # the argument wins
    res = kernbin.check(l0_native, l0)
    assert (res["ok"], res["verdict"]) == (False, "driver-jit")


def test_a_recorded_flag_cannot_hide_the_recompile_warning(l0, monkeypatch):
    nb = kernbin.build(VADD, l0, "-Wno-recompiled-from-ir")
    assert "-Wno-recompiled-from-ir" in nb.info.flags
    monkeypatch.setenv("KBZE_RECOMPILE_FROM_IR", "1")
    with pytest.warns(FallbackWarning):
        m = kernbin.load(nb, l0, fallback=False)
    assert m.driver_jit


def test_cli_check_json_says_driver_jit(l0_native, tmp_path):
    path = tmp_path / "k.knb"
    l0_native.save(path)
    p = run_cli("check", str(path), "-t", "level-zero:0", "--json", env={"KBZE_RECOMPILE_FROM_IR": "1"})
    res = json.loads(p.stdout)
    assert res["verdict"] == "driver-jit" and res["rule"] == "driver-jit" and not res["ok"]
    assert p.returncode != 0
    p = run_cli("check", str(path), "-t", "level-zero:0", "--json")
    assert json.loads(p.stdout)["verdict"] == "native" and p.returncode == 0


# -- CUDA: a fatbin whose chosen member is PTX -----------------------------------------------------

FAT = Requirements("cuda-fat", {"members": [{"code": "cubin", "sm": 80, "variant": ""},
                                            {"code": "ptx", "sm": 80, "variant": "", "ptx_isa": "8.0"}]})


def test_cuda_ptx_member_is_a_driver_jit_at_the_gate():
    ok, rule, reason, member = cufmt.cuda_can_run(FAT, 90, (9, 0))       # no sm_9x cubin: the PTX is used
    assert ok and rule == "driver-jit" and reason and member.startswith("ptx")
    ok, rule, _, member = cufmt.cuda_can_run(FAT, 86, (9, 0))            # the sm_80 cubin runs: no JIT
    assert ok and rule == "" and member == "cubin sm_80"
    fit = Fit(*(lambda r: (r[0], r[2], r[1], r[3]))(cufmt.cuda_can_run(FAT, 90, (9, 0))))
    assert _jit.jit_of_fit(fit) == reason
    assert _jit.jit_of_fit(Fit(True, "", "", "cubin sm_80")) is None


def test_cuda_ptx_member_verdict_warning_and_strict_error(cpu):
    """The policy on a real loaded module (the CPU runtime's) with the gate's real CUDA verdict."""
    ok, rule, reason, member = cufmt.cuda_can_run(FAT, 90, (9, 0))
    fit = Fit(ok, reason, rule, member)
    res = _jit.check_verdict(cpu, {"ok": True, "verdict": "native", "reason": "", "rule": "", "kernels": []}, fit)
    assert (res["ok"], res["verdict"], res["rule"]) == (False, "driver-jit", "driver-jit")
    module = kernbin.load(kernbin.build(VADD, cpu), cpu)
    with pytest.warns(FallbackWarning):
        assert _jit.report_driver_jit(module, fit) is module
    assert module.driver_jit == reason
    module.driver_jit = None
    with pytest.raises(DriverJitError) as e:
        _jit.report_driver_jit(module, fit, strict=True)
    assert e.value.rule == "driver-jit"
    clean = kernbin.load(kernbin.build(VADD, cpu), cpu, strict=True)       # a cubin-like native load: nothing
    assert clean.driver_jit is None


def test_cuda_offline_fatbin_with_ptx_chooses_the_jit_member_on_a_newer_gpu():
    try:
        from cuda.bindings import nvjitlink  # noqa: F401
    except ImportError as e:
        pytest.skip(f"cuda-bindings / nvJitLink not installed: {e}")
    ptx = os.path.join(os.path.dirname(__file__), "data", "ptx", "triton_add_sm80.ptx")
    nb = kernbin.build(ptx, "cuda:sm_80,ptx")
    ok, rule, _, member = cufmt.cuda_can_run(nb.info.requires, 90, (9, 0))
    assert ok and rule == "driver-jit" and member.startswith("ptx")


def test_strict_env_values():
    assert _jit.strict_mode(True) and not _jit.strict_mode(False)
    os.environ[_jit.STRICT_ENV] = "yes"
    try:
        assert _jit.strict_mode(None)
        os.environ[_jit.STRICT_ENV] = "maybe"
        with pytest.raises(OptionsError) as e:
            _jit.strict_mode(None)
        assert e.value.field == "strict"
    finally:
        del os.environ[_jit.STRICT_ENV]
    assert not _jit.strict_mode(None)
