"""zebin and ocloc fat-archive parsing: real binaries, then malformed and truncated ones."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kernbin import InvalidBinary, RuntimeNotFound
from kernbin.formats.zebin import parse_zebin, read_ar, select_from_fat
from kernbin.samples import SAMPLES


def _compile(spv, device_arg):
    try:
        from kernbin.backends.ocloc import get_ocloc
        oc = get_ocloc()
    except RuntimeNotFound as e:
        pytest.skip(f"ocloc not installed: {e}")
    rc, outs, log = oc.invoke(["compile", "-file", "k.spv", "-spirv_input", "-device", device_arg, "--format", "zebin",
                               "-output", "k", "-output_no_suffix"], {"k.spv": open(spv, "rb").read()})
    assert rc == 0, log
    return outs["k"]


@pytest.fixture(scope="module")
def zebin():
    return _compile(SAMPLES["softmax"].spv, "pvc")


@pytest.fixture(scope="module")
def fat():
    return _compile(SAMPLES["vadd"].spv, "tgllp,acm-g10,pvc")


def test_parse_real_zebin(zebin):
    z = parse_zebin(zebin)
    assert [k.name for k in z.kernels] == ["softmax"]
    k = z.kernels[0]
    assert k.simd_size in (8, 16, 32) and k.grf_count in (128, 256) and k.barrier_count >= 1 and k.code_size > 0
    assert z.has_ir and z.notes["zebin_version"].count(".") == 1
    assert z.notes["product_family"] > 0


def test_fat_binary_members_and_selection(fat):
    members = read_ar(fat)
    assert {"64.12.0.0", "64.12.55.8", "64.12.60.7", "generic_ir"} <= set(members)
    name, blob = select_from_fat(fat, "12.55.8")
    assert name == "64.12.55.8" and parse_zebin(blob).kernels[0].name == "vadd"
    assert select_from_fat(fat, "12.60.7")[1] == members["64.12.60.7"]
    with pytest.raises(InvalidBinary) as e:
        select_from_fat(fat, "12.70.4")
    assert e.value.rule == "fat-no-member"


def test_wrong_machine_and_type(zebin):
    data = bytearray(zebin)
    struct.pack_into("<H", data, 18, 62)
    with pytest.raises(InvalidBinary) as e:
        parse_zebin(bytes(data))
    assert e.value.rule == "machine"
    data = bytearray(zebin)
    struct.pack_into("<H", data, 16, 0x1234)
    with pytest.raises(InvalidBinary) as e:
        parse_zebin(bytes(data))
    assert e.value.rule == "elf-type"
    with pytest.raises(InvalidBinary) as e:
        parse_zebin(b"\0" * 100)
    assert e.value.rule == "not-elf"
    data = bytearray(zebin)
    data[4] = 1                                   # ELFCLASS32
    with pytest.raises(InvalidBinary) as e:
        parse_zebin(bytes(data))
    assert e.value.rule == "elf-class"


def test_garbage_ze_info(zebin):
    data = bytearray(zebin)
    start = data.find(b"version:")
    assert start > 0
    data[start:start + 40] = b"{[" * 20          # same length, no longer YAML
    with pytest.raises(InvalidBinary) as e:
        parse_zebin(bytes(data))
    assert e.value.rule == "ze-info-yaml"


def test_ar_rules():
    def rule(data):
        with pytest.raises(InvalidBinary) as e:
            read_ar(data)
        return e.value.rule

    assert rule(b"!<arsch>\n") == "ar-magic"
    member = b"name/           0           0     0     644     10        `\n0123456789"
    assert read_ar(b"!<arch>\n" + member) == {"name": b"0123456789"}
    assert rule(b"!<arch>\n" + member[:-1]) == "ar-bounds"              # member body cut short
    assert rule(b"!<arch>\n" + member[:59]) == "ar-bounds"              # header cut short
    assert rule(b"!<arch>\n" + member[:58] + b"xx" + member[60:]) == "ar-header"
    assert rule(b"!<arch>\n" + member[:48] + b"ten       " + member[58:]) == "ar-size"
    assert rule(b"!<arch>\n" + b"/7   " + member[5:]) == "ar-long-name"   # no // table before it
    assert rule(b"!<arch>\n" + member + member) == "ar-duplicate"


_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_truncated_zebin(zebin, cut):
    cut %= len(zebin)
    try:
        parse_zebin(zebin[:cut])
    except InvalidBinary:
        pass


@_settings
@given(pos=st.integers(min_value=0, max_value=10**9), value=st.integers(min_value=0, max_value=255))
def test_mutated_zebin(zebin, pos, value):
    data = bytearray(zebin)
    data[pos % len(data)] = value
    try:
        parse_zebin(bytes(data))
    except InvalidBinary:
        pass


@_settings
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_truncated_fat(fat, cut):
    cut %= len(fat)
    try:
        name, blob = select_from_fat(fat[:cut], "12.60.7")
        parse_zebin(blob)
    except InvalidBinary:
        pass


@_settings
@given(pos=st.integers(min_value=0, max_value=10**9), value=st.integers(min_value=0, max_value=255))
def test_mutated_fat(fat, pos, value):
    data = bytearray(fat)
    data[pos % len(data)] = value
    try:
        for blob in read_ar(bytes(data)).values():
            if blob[:4] == b"\x7fELF":
                parse_zebin(blob)
    except InvalidBinary:
        pass
