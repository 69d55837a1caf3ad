"""DeviceId (what a device is), Toolchain ("built by") and Requirements ("runs on")."""
import dataclasses

import pytest

from kernbin import BuildOptions, DeviceId, OptionsError, Requirements, Toolchain

BASE = DeviceId("opencl", "Intel(R) Corporation", "Some CPU", "x86-64-v3", "2026.1", "OpenCL 3.0",
                {"platform": "Intel(R) OpenCL"})


def test_device_fingerprint_covers_every_field():
    for f in ("backend", "vendor", "name", "arch", "driver_version", "compiler_version"):
        other = dataclasses.replace(BASE, **{f: getattr(BASE, f) + "-other"})
        assert other.fingerprint != BASE.fingerprint
    assert dataclasses.replace(BASE, facts={"ip_version": "12.60.7"}).fingerprint != BASE.fingerprint
    assert len(BASE.fingerprint) == 16


def test_toolchain_key_ignores_recorded_versions_but_not_compiler_or_driver():
    t = Toolchain("ocloc", "IGC 1.0.1", "22.43", {"kernbin": "0.1.0"})
    assert t.key() == dataclasses.replace(t, versions={"kernbin": "9.9"}).key()
    assert t.key() != dataclasses.replace(t, compiler="IGC 1.0.2").key()
    assert t.key() != dataclasses.replace(t, driver="23.0").key()
    assert Toolchain.from_json(t.to_json()) == t
    with pytest.raises(ValueError):
        Toolchain.from_json({"backend": "x", "compiler": 3, "driver": ""})


def test_requirements_round_trip_and_refuse_non_data():
    r = Requirements("intel-gpu", {"ip_version": "12.60.7", "ze_info_version": "1.20", "device": "pvc"})
    assert Requirements.from_json(r.to_json()) == r
    assert "12.60.7" in r.describe()
    for bad in ({"kind": 3}, {"values": {}}, {"kind": "x", "v": 1.5}, {"kind": "x", "v": {1: 2}}):
        with pytest.raises(ValueError):
            Requirements.from_json(bad)


def test_build_options_parse_once_and_key_stably():
    o = BuildOptions.of("-cl-mad-enable  -DX=1", grf="auto", spill_threshold=64)
    assert o.flags == ("-cl-mad-enable", "-DX=1") and o.text == "-cl-mad-enable -DX=1"
    assert BuildOptions.of(["-cl-mad-enable", "-DX=1"], grf="auto", spill_threshold=64) == o
    assert BuildOptions.from_json(o.to_json()) == o
    assert o.key() != BuildOptions.of("-cl-mad-enable -DX=1").key()
    assert o.key() != BuildOptions.of("-cl-mad-enable -DX=1", grf="auto", spill_threshold=65).key()
    # the threshold only matters for auto; flags are length-prefixed (no ambiguity by concatenation)
    assert BuildOptions.of(grf="large", spill_threshold=1).key() == BuildOptions.of(grf="large").key()
    assert BuildOptions(("-a", "b")).key() != BuildOptions(("-a b",) if False else ("-ab",)).key()


@pytest.mark.parametrize("kw,field", [({"flags": "-a"}, "flags"), ({"flags": ("a b",)}, "flags"),
                                      ({"flags": ("",)}, "flags"), ({"register_file": "huge"}, "register_file"),
                                      ({"spill_threshold": -1}, "spill_threshold"),
                                      ({"spill_threshold": True}, "spill_threshold"),
                                      ({"flags": ("\udcff",)}, "flags")])
def test_build_options_validate(kw, field):
    with pytest.raises(OptionsError) as e:
        BuildOptions(**kw)
    assert e.value.field == field
