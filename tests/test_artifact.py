"""The .knb file: one byte-string test per rule of docs/knb-format.md (the layout's own rules are
tested in test_container.py; these are the rules .knb adds on top)."""
import dataclasses
import hashlib
import json
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from kernbin import (BuildInfo, BuildOptions, InvalidBinary, KernelInfo, NativeBinary, PtxModule, Requirements,
                     SpirvModule, Toolchain)
from kernbin import container
from kernbin.artifact import KNB_MAGIC, KNB_VERSION
from kernbin.samples import SAMPLES

from conftest import HERE

IR = SpirvModule.from_file(SAMPLES["vadd"].spv)
PTX = PtxModule.from_file(os.path.join(HERE, "data", "ptx", "triton_add_sm90.ptx"))
INFO = BuildInfo(target="opencl:cpu", toolchain=Toolchain("opencl", "Vendor OpenCL 3.0", "1.0", {"kernbin": "t"}),
                 requires=Requirements("opencl-runtime", {"device": "Dev", "driver": "1.0"}), ir_kind="spirv",
                 ir_sha256=IR.sha256, options=BuildOptions.of("-O2"), flags=("-O2",),
                 binary_format="opencl-cpu-elf", kernels=(KernelInfo("vadd", {"private_mem_size": 0}),),
                 build_log="ok", build_seconds=0.5)
NB = NativeBinary(binary=b"\x7fELF" + bytes(range(256)) * 4, info=INFO, ir=IR)
DATA = NB.to_bytes()


def _pack(meta: dict, sections, version=KNB_VERSION) -> bytes:
    return container.pack(KNB_MAGIC, version, meta, sections)


def _rule(data: bytes) -> str:
    """The rule a full check (the embedded IR included) of ``data`` fails."""
    with pytest.raises(InvalidBinary) as e:
        NativeBinary.from_bytes(data).verify()
    return e.value.rule


def test_round_trip():
    again = NativeBinary.from_bytes(DATA)
    assert again == NB
    assert again.sha256 == hashlib.sha256(NB.binary).hexdigest()
    assert again.info.kernel("vadd").attributes == {"private_mem_size": 0}
    assert NativeBinary.from_bytes(NB.without_ir().to_bytes()).ir is None


def test_a_knb_carries_ptx_decoded_by_its_recorded_kind():
    info = dataclasses.replace(INFO, ir_kind="ptx", ir_sha256=PTX.sha256, target="cuda:sm_90a", binary_format="cubin")
    nb = NativeBinary(binary=b"\x7fELF-cubin", info=info, ir=PTX)
    again = NativeBinary.from_bytes(nb.to_bytes())
    assert again.ir == PTX and again.ir.kind == "ptx" and again.ir.target == "sm_90a"
    # a SPIR-V section recorded as PTX is refused, not guessed at
    wrong = NativeBinary(binary=b"x", info=dataclasses.replace(info, ir_sha256=IR.sha256), ir=IR)
    assert _rule(wrong.to_bytes()) == "ir"


def test_save_is_atomic_and_reloads(tmp_path):
    p = tmp_path / "x.knb"
    NB.save(p)
    assert NativeBinary.from_file(p) == NB
    assert [f.name for f in tmp_path.iterdir()] == ["x.knb"]   # no temp file left behind
    with open(p, "rb") as f:
        assert NativeBinary.read_from(f) == NB


def test_files_from_the_previous_format_get_a_clear_error():
    h = json.dumps({"kernbin_format": 1}).encode()
    old = struct.pack("<8sII32s", KNB_MAGIC, 1, len(h), hashlib.sha256(h).digest()) + h
    with pytest.raises(InvalidBinary) as e:
        NativeBinary.from_bytes(old)
    assert e.value.rule == "version" and "rebuild" in e.value.reason


def test_fifo_and_directory_are_refused_without_blocking(tmp_path):
    from kernbin._fs import FileRefused
    fifo = tmp_path / "f.knb"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(FileRefused) as e:
            NativeBinary.from_file(path)
        assert e.value.rule == "not-regular"


@pytest.mark.parametrize("sections", [[("ir", IR.data)], [("native", b"x"), ("evil", b"")],
                                      [("native", b"x"), ("ir", IR.data), ("ir2", b"")]])
def test_section_names(sections):
    assert _rule(_pack({"build": INFO.to_json()}, sections)) == "sections"


@pytest.mark.parametrize("mutate", [
    lambda b: b.pop("toolchain"),
    lambda b: b["toolchain"].update(compiler=7),
    lambda b: b.pop("requires"),
    lambda b: b["requires"].update(kind=None),
    lambda b: b["options"].update(register_file="huge"),
    lambda b: b["options"].update(flags=["a b"]),
    lambda b: b.update(flags="-O2"),
    lambda b: b.update(kernels={}),
    lambda b: b.update(build_seconds="fast"),
    lambda b: b.update(target=["opencl"]),
    lambda b: b["kernels"][0]["attributes"].update(x=[1]),
])
def test_bad_build_info(mutate):
    build = json.loads(json.dumps(INFO.to_json()))
    mutate(build)
    assert _rule(_pack({"build": build}, [("native", NB.binary)])) == "build-info"


def test_missing_build_info():
    assert _rule(_pack({}, [("native", NB.binary)])) == "build-info"


def test_corrupt_native_section_keeps_verified_ir_for_fallback():
    data = bytearray(DATA)
    data[data.index(NB.binary) + 10] ^= 0xFF
    with pytest.raises(InvalidBinary) as e:
        NativeBinary.from_bytes(bytes(data))
    assert e.value.rule == "section-digest" and e.value.ir == IR and e.value.build_info == INFO


def test_corrupt_ir_section_is_refused_when_the_ir_is_used():
    """A native load never reads the IR, so a corrupt IR section costs nothing until the IR is
    used (a fallback, verify(), check): then it raises, and never yields bad IR."""
    data = bytearray(DATA)
    data[data.index(IR.data) + 100] ^= 0xFF
    nb = NativeBinary.from_bytes(bytes(data))
    assert nb.binary == NB.binary and nb.has_ir
    for use in (lambda: nb.ir, nb.verify):
        with pytest.raises(InvalidBinary) as e:
            use()
        assert e.value.rule == "section-digest" and e.value.ir is None and e.value.build_info == INFO


def test_corrupt_native_section_hands_over_the_intact_ir():
    data = bytearray(DATA)
    data[data.index(NB.binary) + 10] ^= 0xFF
    with pytest.raises(InvalidBinary) as e:
        NativeBinary.from_bytes(bytes(data))
    assert e.value.rule == "section-digest" and e.value.ir == IR and e.value.build_info == INFO


def test_the_embedded_ir_is_checked_once_and_pickles_as_itself():
    import pickle
    nb = NativeBinary.from_bytes(DATA)
    assert nb.ir is nb.ir and nb.ir == IR
    fresh = NativeBinary.from_bytes(DATA)
    assert pickle.loads(pickle.dumps(fresh)) == NB


def test_ir_that_does_not_match_the_recorded_hash():
    other = SpirvModule.from_file(SAMPLES["matmul"].spv)
    assert _rule(NativeBinary(binary=NB.binary, info=INFO, ir=other).to_bytes()) == "ir"


def test_invalid_embedded_ir():
    assert _rule(_pack({"build": INFO.to_json()}, [("native", b"x"), ("ir", b"\x03\x02\x23\x07" + b"\0" * 3)])) == "ir"


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(DATA) - 1), st.integers(min_value=1, max_value=255))
def test_every_single_byte_flip_is_detected(pos, xor):
    data = bytearray(DATA)
    data[pos] ^= xor
    with pytest.raises(InvalidBinary):
        NativeBinary.from_bytes(bytes(data)).verify()


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


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=12))
def test_any_json_as_build_info_is_a_clean_error_or_valid(value):
    try:
        NativeBinary.from_bytes(_pack({"build": value}, [("native", b"x")]))
    except InvalidBinary as e:
        assert e.rule == "build-info"


@pytest.mark.parametrize("mutate", [
    lambda b: b.update(build_seconds=10 ** 400),
    lambda b: b.update(build_seconds=-1),
    lambda b: b["requires"].update(members=None),
    lambda b: b["requires"].update(members=[1, 2]),
    lambda b: b["requires"].update(members="abc"),
])
def test_hostile_numbers_and_shapes_are_build_info_errors(mutate):
    build = json.loads(json.dumps(INFO.to_json()))
    mutate(build)
    assert _rule(_pack({"build": build}, [("native", NB.binary)])) == "build-info"


def test_build_info_read_from_a_file_is_shared_but_immutable():
    a, b = NativeBinary.from_bytes(DATA), NativeBinary.from_bytes(DATA)
    for mutate in (lambda i: i.requires.values.__setitem__("device", "x"),
                   lambda i: i.kernels[0].attributes.update(x=1),
                   lambda i: i.toolchain.versions.pop("kernbin"),
                   lambda i: i.extra.setdefault("x", 1)):
        with pytest.raises(TypeError):
            mutate(a.info)
    assert b.info == INFO and json.loads(json.dumps(b.info.to_json())) == INFO.to_json()
