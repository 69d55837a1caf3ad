import dataclasses

from kernbin import DeviceId
from kernbin.device import COMPAT_FIELDS

BASE = DeviceId("opencl", "Intel(R) Corporation", "Some CPU", "x86-64-v3", "2026.1", "OpenCL 3.0")


def test_identical_devices_are_compatible():
    ok, reason = BASE.compatible_with(DeviceId(**BASE.to_json()))
    assert ok and reason == ""


def test_each_field_of_the_rule_is_enforced():
    for f in COMPAT_FIELDS:
        other = dataclasses.replace(BASE, **{f: getattr(BASE, f) + "-other"})
        ok, reason = BASE.compatible_with(other)
        assert not ok
        assert f in reason
        assert BASE.fingerprint != other.fingerprint


def test_json_round_trip_and_stable_fingerprint():
    again = DeviceId.from_json(BASE.to_json())
    assert again == BASE
    assert again.fingerprint == BASE.fingerprint
    assert len(BASE.fingerprint) == 16
