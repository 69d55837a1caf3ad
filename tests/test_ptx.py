"""PTX modules (kernbin.ir.ptx): real compiler output parses, every rule has its defect
test (checked by attributes: offset, never message text), and mutated PTX only ever
parses or raises InvalidIR. The samples in tests/data/ptx come from tools/make_ptx_samples.py."""

import dataclasses
import hashlib
import os
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kernbin
import kernbin.ir.ptx as ptx_mod
from kernbin import InvalidIR
from kernbin._fs import FileRefused
from kernbin.ir import MAX_IR_BYTES, read_ir
from kernbin.ir.ptx import MAX_PTX_BYTES, SNIFF_BYTES, PtxModule, looks_like_ptx
from kernbin.samples import SAMPLES

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ptx")
SM90 = os.path.join(DATA, "triton_add_sm90.ptx")
SM80 = os.path.join(DATA, "triton_add_sm80.ptx")
NVCC = os.path.join(DATA, "nvcc_multi_sm100f.ptx")

# file, target, sm, arch suffix, kernels
REAL = [
    (SM90, "sm_90a", 90, "a", ("add_kernel",)),
    (SM80, "sm_80", 80, "", ("add_kernel",)),
    (NVCC, "sm_100f", 100, "f", ("scale", "fill", "_Z4taddIiEvPT_S0_", "_Z6hiddenPi")),
]

HEAD = b".version 8.0\n.target sm_80\n.address_size 64\n"
KERNEL = b".visible .entry k(\n\t.param .u64 k_param_0\n)\n{\n\tret;\n}\n"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def invalid(data):
    with pytest.raises(InvalidIR) as e:
        PtxModule.from_bytes(data)
    return e.value


# ---------------------------------------------------------------- real compiler output

@pytest.mark.parametrize("path,target,sm,suffix,kernels", REAL, ids=lambda v: os.path.basename(str(v)))
def test_real_ptx_parses(path, target, sm, suffix, kernels):
    m = PtxModule.from_file(path)
    assert m.kind == "ptx"
    assert m.target == target and m.sm == sm and m.arch_suffix == suffix
    assert m.target_options == ()
    assert m.address_size == 64
    assert (7, 0) <= m.version <= (9, 99)
    assert m.entry_points == kernels and m.kernels == kernels
    assert m.data == read(path)
    assert m == PtxModule.from_bytes(read(path))


def test_version_is_the_files_version_directive():
    for path, *_ in REAL:
        major, minor = re.search(rb"^\.version (\d+)\.(\d+)$", read(path), re.M).groups()
        assert PtxModule.from_file(path).version == (int(major), int(minor))


def test_sha256_is_stable_and_content_based():
    data = read(SM90)
    m = PtxModule.from_bytes(data)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.sha256 == PtxModule.from_bytes(bytearray(data)).sha256 == PtxModule.from_file(SM90).sha256
    assert m.sha256 != PtxModule.from_file(SM80).sha256
    # data is kept exactly: a trailing NUL terminator parses the same but hashes differently
    with_nul = PtxModule.from_bytes(data + b"\0")
    assert with_nul.data == data + b"\0" and with_nul.sha256 != m.sha256
    assert with_nul.entry_points == m.entry_points


def test_module_is_frozen_and_repr_leaves_out_the_bytes():
    m = PtxModule.from_file(SM80)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.target = "sm_90"
    assert "ret;" not in repr(m) and "sm_80" in repr(m)


def test_samples_carry_no_machine_paths():
    for name in os.listdir(DATA):
        data = read(os.path.join(DATA, name))
        for path in (b"/tmp", b"/work", b"/root", b"/home"):
            assert path not in data, (name, path)


# ---------------------------------------------------------------- kernbin.ir integration

def test_read_ir_sniffs_ptx():
    data = read(SM90)
    m = read_ir(data)
    assert isinstance(m, PtxModule) and m.kind == "ptx" and m.kernels == ("add_kernel",)
    assert isinstance(read_ir(data, kind="ptx"), PtxModule)
    assert read_ir(SM80, kind="ptx").target == "sm_80"
    assert read_ir(NVCC).kernels == REAL[2][4]
    assert read_ir(m) is m and read_ir(m, kind="ptx") is m
    assert isinstance(m, kernbin.ir.IR)
    assert kernbin.PtxModule is PtxModule is kernbin.ir.PtxModule


def test_read_ir_kind_mismatch_is_invalid_ir():
    with pytest.raises(InvalidIR):
        read_ir(read(SM90), kind="spirv")
    with pytest.raises(InvalidIR):
        read_ir(read(SAMPLES["vadd"].spv), kind="ptx")
    with pytest.raises(InvalidIR):
        read_ir(PtxModule.from_file(SM90), kind="spirv")


def test_looks_like_ptx():
    for path, *_ in REAL:
        assert looks_like_ptx(read(path))       # begin with // comment lines
    assert looks_like_ptx(HEAD)
    assert looks_like_ptx(b"  \r\n/* licence\n * text */\n// more\n\t.version 7.8\n")
    assert looks_like_ptx(memoryview(HEAD))
    assert looks_like_ptx(HEAD + b"\0")
    assert not looks_like_ptx(b"")
    assert not looks_like_ptx(read(SAMPLES["vadd"].spv))
    assert not looks_like_ptx(b".target sm_80\n.version 8.0\n")
    assert not looks_like_ptx(b".versions 8.0\n")
    assert not looks_like_ptx(b"/* unterminated\n.version 8.0\n")
    assert not looks_like_ptx(b"// no newline .version 8.0")
    assert not looks_like_ptx(b"\xef\xbb\xbf" + HEAD)               # no BOM
    assert not looks_like_ptx(HEAD + b"\0junk")
    assert not looks_like_ptx(b"x" + HEAD)


def test_looks_like_ptx_reads_only_the_first_kilobytes():
    long_comment = b"// " + b"x" * SNIFF_BYTES + b"\n"
    assert not looks_like_ptx(long_comment + HEAD)
    # ...while the full parser does accept it
    assert PtxModule.from_bytes(long_comment + HEAD).version == (8, 0)
    assert looks_like_ptx(HEAD + b"\xff" * (1 << 20))              # what follows is not looked at


# ---------------------------------------------------------------- from_file

def test_from_file_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(FileRefused) as e:
        PtxModule.from_file(tmp_path)
    assert e.value.rule == "not-regular"
    fifo = tmp_path / "fifo.ptx"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused) as e:
        PtxModule.from_file(fifo)
    assert e.value.rule == "not-regular"


def test_from_file_refuses_a_file_over_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.ptx"
    path.write_bytes(HEAD + b"// " + b"x" * 100 + b"\n")
    monkeypatch.setattr(ptx_mod, "MAX_PTX_BYTES", 64)
    with pytest.raises(FileRefused) as e:
        PtxModule.from_file(path)
    assert e.value.rule == "too-large"


# ---------------------------------------------------------------- the rules, one defect each

def test_too_large(monkeypatch):
    assert MAX_PTX_BYTES == MAX_IR_BYTES == 256 << 20
    monkeypatch.setattr(ptx_mod, "MAX_PTX_BYTES", len(HEAD) + 10)
    assert PtxModule.from_bytes(HEAD + b"\n" * 10).version == (8, 0)
    e = invalid(HEAD + b"\n" * 11)
    assert e.offset == len(HEAD) + 10


def test_missing_version():
    e = invalid(b"// comment\n.target sm_80\n.address_size 64\n" + KERNEL)
    assert e.offset == 11
    assert invalid(b"").offset == 0
    assert invalid(b"  \n// only a comment\n").offset == 21
    assert invalid(b"hello world\n").offset == 0


def test_target_before_version():
    e = invalid(b"// c\n.target sm_80\n.version 8.0\n" + KERNEL)
    assert e.offset == 5


def test_version_must_come_first():
    e = invalid(b".visible .entry k() { ret; }\n" + HEAD)
    assert e.offset == 0


def test_target_must_immediately_follow_version():
    e = invalid(b".version 8.0\n.address_size 64\n.target sm_80\n")
    assert e.offset == 13
    e = invalid(b".version 8.0\n" + KERNEL)
    assert e.offset == 13
    assert invalid(b".version 8.0\n").offset == 13


@pytest.mark.parametrize("version", [b"10.0", b"0.5", b"8", b"8.x", b"8.0.1", b"x.0", b"8.1000", b"9" * 5000 + b".0"])
def test_bad_version(version):
    e = invalid(b".version " + version + b"\n.target sm_80\n")
    assert e.offset in (8, 9)


@pytest.mark.parametrize("target", [b"sm_9x", b"compute_80", b"sm_80b", b"sm_08", b"sm_8", b"sm_1000", b"gfx90a",
                                    b"SM_80", b"sm_80a_"])
def test_bad_target(target):
    e = invalid(b".version 8.0\n.target " + target + b"\n")
    assert e.offset == 21


def test_target_without_architecture():
    assert invalid(b".version 8.0\n.target\n.address_size 64\n").offset == 20
    assert invalid(b".version 8.0\n.target , debug\n").offset == 20


def test_target_options():
    m = PtxModule.from_bytes(b".version 6.0\n.target sm_70, texmode_independent ,debug\n")
    assert m.target == "sm_70" and m.target_options == ("texmode_independent", "debug")
    assert m.sm == 70 and m.arch_suffix == ""
    assert m.address_size == 64                                     # default when absent
    assert invalid(b".version 8.0\n.target sm_80, sm_90\n").offset == 28
    assert invalid(b".version 8.0\n.target sm_80, debug, \n").offset == 34


def test_address_size():
    assert PtxModule.from_bytes(b".version 8.0\n.target sm_80\n.address_size 32\n").address_size == 32
    assert invalid(b".version 8.0\n.target sm_80\n.address_size 48\n").offset == 40
    assert invalid(b".version 8.0\n.target sm_80\n.address_size\n").offset == 40
    # only immediately after .target, and only once
    e = invalid(b".version 8.0\n.target sm_80\n" + KERNEL + b".address_size 64\n")
    assert e.offset == 27 + len(KERNEL)
    e = invalid(HEAD + b".address_size 64\n")
    assert e.offset == len(HEAD)


def test_version_and_target_only_once():
    assert invalid(HEAD + KERNEL + b".version 8.0\n").offset == len(HEAD) + len(KERNEL)
    assert invalid(HEAD + b".target sm_90\n").offset == len(HEAD)


def test_nul_inside():
    data = HEAD + KERNEL
    e = invalid(data[:30] + b"\0" + data[30:])
    assert e.offset == 30
    e = invalid(data + b"\0\0// after the terminator\n")
    assert e.offset == len(data)
    # trailing NUL terminators are fine (PTX handed to a driver is a C string)
    assert PtxModule.from_bytes(data + b"\0").kernels == ("k",)
    assert PtxModule.from_bytes(data + b"\0\0\0").kernels == ("k",)


def test_not_utf8():
    data = HEAD + b"// caf\xe9\n" + KERNEL
    e = invalid(data)
    assert e.offset == len(HEAD) + 6
    assert invalid(b"\xff" + HEAD).offset == 0
    # UTF-8 in a comment is fine
    assert PtxModule.from_bytes(HEAD + "// café ✓\n".encode() + KERNEL).kernels == ("k",)


def test_unterminated_block_comment():
    e = invalid(HEAD + KERNEL + b"/* never closed\n.entry j() { ret; }\n")
    assert e.offset == len(HEAD) + len(KERNEL)
    assert invalid(b"/*/ .version 8.0\n").offset == 0


def test_comments_and_strings_hide_directives():
    data = (b"/* header .version 1.0 */ .version 8.0 // .target sm_10\n.target /* x */ sm_80 // hi\n"
            b"/* .entry fake1() { }\n */\n// .entry fake2() { }\n"
            b'.file 1 "a//b/*c.entry fake3 \\" */"\n'
            + KERNEL)
    m = PtxModule.from_bytes(data)
    assert m.version == (8, 0) and m.target == "sm_80" and m.kernels == ("k",)


def test_unterminated_string():
    e = invalid(HEAD + b'.file 1 "no end\n' + KERNEL)
    assert e.offset == len(HEAD) + 8
    assert invalid(HEAD + b'.file 1 "ends in a backslash\\').offset == len(HEAD) + 8


def test_duplicate_entry():
    e = invalid(HEAD + KERNEL + b".entry j() { ret; }\n" + KERNEL)
    assert e.offset == len(HEAD) + len(KERNEL) + 20 + KERNEL.index(b"k(")


def test_declared_then_defined_entry_is_one_kernel():
    data = HEAD + b".entry k(.param .u64 k_param_0);\n.entry j() { ret; }\n" + KERNEL
    assert PtxModule.from_bytes(data).kernels == ("k", "j")


def test_entry_needs_a_name_and_a_body_or_semicolon():
    assert invalid(HEAD + b".entry (){ ret; }\n").offset == len(HEAD) + 6
    assert invalid(HEAD + b".entry 9k(){ ret; }\n").offset == len(HEAD) + 6
    assert invalid(HEAD + b".entry k(.param .u64 p)\n").offset == len(HEAD)
    assert invalid(HEAD + b".entry k(\n.entry j() { ret; }\n").offset == len(HEAD)


def test_entry_names_are_ptx_identifiers():
    data = HEAD + b".entry $k() { ret; }\n.weak .entry %k2() { ret; }\n.entry _Z1fv(){ret;}\n.entry\tx$1() {ret;}\n"
    assert PtxModule.from_bytes(data).kernels == ("$k", "%k2", "_Z1fv", "x$1")


def test_crlf_and_one_line_modules():
    assert PtxModule.from_bytes((HEAD + KERNEL).replace(b"\n", b"\r\n")).kernels == ("k",)
    assert PtxModule.from_bytes(b".version 7.0 .target sm_75 .address_size 64 .entry k() { ret; }").kernels == ("k",)


def test_errors_are_invalid_ir_not_type_errors_for_bytes_like():
    assert PtxModule.from_bytes(memoryview(HEAD)).data == HEAD
    assert PtxModule.from_bytes(bytearray(HEAD)).data == HEAD


def test_parsing_is_linear_on_hostile_input():
    n = 1 << 20
    hostile = [
        HEAD + b"/*" * n,                                 # comment openers, unterminated at the end
        HEAD + b'"' + b"\\x" * n,                         # one long unterminated string of escapes
        HEAD + b".entry a " * (n // 8),                   # entries without bodies
        HEAD + b"".join(b".entry k%d(){ret;}\n" % i for i in range(n // 16)),
        b".version " + b"9" * n,
        b".version 8.0\n.target sm_80" + b", debug" * (n // 8),
        b" " * n + HEAD + b"." * n,
    ]
    for data in hostile:
        t = time.perf_counter()
        try:
            PtxModule.from_bytes(data)
        except InvalidIR:
            pass
        assert time.perf_counter() - t < 10, data[:40]


# ---------------------------------------------------------------- property: never anything but InvalidIR

REAL_DATA = [read(path) for path, *_ in REAL]
TOKENS = [b"/*", b"*/", b"//", b'"', b"\\", b"\n", b"\0", b"\xff", b"\xc3", b".entry", b".version", b".target",
          b".address_size", b"{", b"}", b";", b"(", b",", b" ", b"sm_90a", b"9.9", b"$", b"%"]


def _check(data):
    try:
        m = PtxModule.from_bytes(data)
    except InvalidIR as e:
        assert e.offset is None or 0 <= e.offset <= len(data)
        return
    assert m.data == bytes(data) and len(m.sha256) == 64
    assert len(set(m.entry_points)) == len(m.entry_points)
    assert 1 <= m.version[0] <= 9 and m.address_size in (32, 64) and m.sm >= 10
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_$]*|[_$%][A-Za-z0-9_$]+", k) for k in m.entry_points)


@st.composite
def mutated_ptx(draw):
    data = bytearray(draw(st.sampled_from(REAL_DATA)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "token"]))
        i = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[i:]
        elif op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "token":
            data[i:i] = draw(st.sampled_from(TOKENS))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_ptx())
def test_mutated_ptx_parses_or_raises_invalid_ir(data):
    _check(data)
    looks_like_ptx(data)                                            # never raises
    try:
        read_ir(data)
    except InvalidIR:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=40))
def test_token_soup_parses_or_raises_invalid_ir(parts):
    data = b"".join(parts)
    _check(data)
    _check(HEAD + data)
    looks_like_ptx(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(REAL_DATA[2])))
def test_every_truncation_of_real_ptx(cut):
    _check(REAL_DATA[2][:cut])
