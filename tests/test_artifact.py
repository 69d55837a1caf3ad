"""The .knb container: one byte-string test per rule of docs/knb-format.md."""
import hashlib
import json
import struct

import pytest
from hypothesis import given, settings, strategies as st

from kernbin import BuildInfo, DeviceId, InvalidBinary, KernelInfo, NativeBinary, SpirvModule
from kernbin.artifact import KNB_MAGIC, MAX_HEADER
from kernbin.samples import SAMPLES

IR = SpirvModule.from_file(SAMPLES["vadd"].spv)
DEV = DeviceId("opencl", "Vendor", "Dev", "x86-64-v3", "1.0", "OpenCL 3.0")
INFO = BuildInfo(target="opencl:cpu", device=DEV, ir_kind="spirv", ir_sha256=IR.sha256, options="-O2",
                 binary_format="opencl-cpu-elf", kernels=(KernelInfo("vadd", {"private_mem_size": 0}),),
                 tools={"kernbin": "test"}, build_log="ok", build_seconds=0.5)
NB = NativeBinary(binary=b"\x7fELF" + bytes(range(256)) * 4, info=INFO, ir=IR)
DATA = NB.to_bytes()


def _repack(header: dict, payload: bytes, *, version=1, magic=KNB_MAGIC) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<8sII32s", magic, version, len(h), hashlib.sha256(h).digest()) + h + payload


def _split(data=DATA):
    hlen = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[48:48 + hlen]), data[48 + hlen:]


def test_round_trip():
    again = NativeBinary.from_bytes(DATA)
    assert again == NB
    assert again.sha256 == hashlib.sha256(NB.binary).hexdigest()
    assert again.info.kernel("vadd").attributes == {"private_mem_size": 0}
    assert NativeBinary.from_bytes(NB.without_ir().to_bytes()).ir is None


def test_save_is_atomic_and_reloads(tmp_path):
    p = tmp_path / "x.knb"
    NB.save(p)
    assert NativeBinary.from_file(p) == NB
    assert [f.name for f in tmp_path.iterdir()] == ["x.knb"]   # no temp file left behind


def test_too_short():
    with pytest.raises(InvalidBinary, match="too short"):
        NativeBinary.from_bytes(DATA[:47])


def test_bad_magic():
    with pytest.raises(InvalidBinary, match="bad magic"):
        NativeBinary.from_bytes(b"\x89KNX" + DATA[4:])


def test_unknown_version():
    header, payload = _split()
    with pytest.raises(InvalidBinary, match="version 2"):
        NativeBinary.from_bytes(_repack(header, payload, version=2))


def test_header_length_cap():
    data = bytearray(DATA)
    struct.pack_into("<I", data, 12, MAX_HEADER + 1)
    with pytest.raises(InvalidBinary, match="exceeds"):
        NativeBinary.from_bytes(bytes(data))


def test_truncated_header():
    with pytest.raises(InvalidBinary, match="truncated"):
        NativeBinary.from_bytes(DATA[:60])


def test_header_checksum():
    data = bytearray(DATA)
    data[60] ^= 0x01
    with pytest.raises(InvalidBinary, match="header checksum"):
        NativeBinary.from_bytes(bytes(data))


def test_header_not_json():
    h = b"{not json"
    data = struct.pack("<8sII32s", KNB_MAGIC, 1, len(h), hashlib.sha256(h).digest()) + h
    with pytest.raises(InvalidBinary, match="bad header"):
        NativeBinary.from_bytes(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda h: h["sections"].append(dict(h["sections"][0])), "duplicate section"),
    (lambda h: h["sections"][0].update(name="evil"), "unknown section"),
    (lambda h: h.update(sections=[h["sections"][1]]), "no 'native' section"),
    (lambda h: h["sections"][0].update(size=-1), "bad size"),
    (lambda h: h["sections"][0].update(size="12"), "bad size"),
    (lambda h: h["sections"][0].update(sha256="00"), "bad sha256"),
    (lambda h: h.update(sections=[]), "non-empty"),
    (lambda h: h["build"].pop("device"), "missing 'device'"),
    (lambda h: h["build"]["device"].update(name=7), "must be a string"),
    (lambda h: h.update(kernbin_format=9), "version-1"),
])
def test_bad_header_fields(mutate, message):
    header, payload = _split()
    mutate(header)
    with pytest.raises(InvalidBinary, match=message):
        NativeBinary.from_bytes(_repack(header, payload))


def test_trailing_data_is_rejected():
    header, payload = _split()
    with pytest.raises(InvalidBinary, match="trailing data"):
        NativeBinary.from_bytes(_repack(header, payload + b"\0"))


def test_truncated_payload_is_rejected():
    with pytest.raises(InvalidBinary, match="truncated"):
        NativeBinary.from_bytes(DATA[:-1])


def test_corrupt_native_section_keeps_verified_ir_for_fallback():
    header, _ = _split()
    data = bytearray(DATA)
    native_start = len(DATA) - len(IR.data) - len(NB.binary)
    data[native_start + 10] ^= 0xFF
    with pytest.raises(InvalidBinary, match="section\\(s\\) native") as e:
        NativeBinary.from_bytes(bytes(data))
    assert e.value.ir == IR
    assert e.value.build_info == INFO


def test_corrupt_ir_section_gives_no_ir():
    data = bytearray(DATA)
    data[-5] ^= 0xFF
    with pytest.raises(InvalidBinary, match="section\\(s\\) ir") as e:
        NativeBinary.from_bytes(bytes(data))
    assert e.value.ir is None and e.value.build_info == INFO


def test_ir_that_does_not_match_the_recorded_hash():
    other = SpirvModule.from_file(SAMPLES["matmul"].spv)
    bad = NativeBinary(binary=NB.binary, info=INFO, ir=other)
    with pytest.raises(InvalidBinary, match="does not match"):
        NativeBinary.from_bytes(bad.to_bytes())


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(DATA) - 1), st.integers(min_value=1, max_value=255))
def test_every_single_byte_flip_is_detected(pos, xor):
    data = bytearray(DATA)
    data[pos] ^= xor
    with pytest.raises(InvalidBinary):
        NativeBinary.from_bytes(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_invalid(data):
    with pytest.raises(InvalidBinary):
        NativeBinary.from_bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(DATA) - 1))
def test_every_truncation_is_invalid(cut):
    with pytest.raises(InvalidBinary):
        NativeBinary.from_bytes(DATA[:cut])
