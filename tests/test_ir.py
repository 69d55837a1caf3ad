import struct

import pytest
from hypothesis import given, settings, strategies as st

from kernbin import InvalidIR, SpirvModule
from kernbin.samples import SAMPLES

VADD = open(SAMPLES["vadd"].spv, "rb").read()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_samples_parse_with_their_entry_points(name):
    m = SpirvModule.from_file(SAMPLES[name].spv)
    assert m.entry_points == (SAMPLES[name].kernel,)
    assert (1, 0) <= m.version <= (1, 4)   # what llvm-spirv-15 emits for OpenCL C
    assert len(m.sha256) == 64


def test_hash_is_stable_and_content_based():
    assert SpirvModule.from_bytes(VADD).sha256 == SpirvModule.from_bytes(bytes(VADD)).sha256
    other = SpirvModule.from_file(SAMPLES["matmul"].spv)
    assert other.sha256 != SpirvModule.from_bytes(VADD).sha256


def test_big_endian_module_reads_the_same():
    words = struct.unpack(f"<{len(VADD) // 4}I", VADD)
    swapped = struct.pack(f">{len(words)}I", *words)
    m = SpirvModule.from_bytes(swapped)
    assert m.entry_points == ("vadd",)


# InvalidIR has no rule id: its attributes are ``offset`` and ``reason``. Each test below
# asserts the exact offset; "wrong magic" and "too short" both sit at offset 0, so only
# there a loose text check is kept to tell the two apart.

def test_wrong_magic():
    with pytest.raises(InvalidIR, match="magic") as e:   # text: offset 0 is shared with "too short"
        SpirvModule.from_bytes(b"\x00\x01\x02\x03" + VADD[4:])
    assert e.value.offset == 0


def test_too_short():
    with pytest.raises(InvalidIR, match="too short") as e:   # text: offset 0 is shared with "magic"
        SpirvModule.from_bytes(VADD[:12])
    assert e.value.offset == 0


def test_not_word_aligned():
    assert len(VADD) % 4 == 0
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(VADD[:-3])
    assert e.value.offset == len(VADD) - 4          # the start of the partial last word


def test_truncated_inside_an_instruction_names_the_offset():
    # find the offset of the last instruction, cut it in half
    words = struct.unpack(f"<{len(VADD) // 4}I", VADD)
    i, starts = 5, []
    while i < len(words):
        starts.append(i)
        i += words[i] >> 16
    last_big = next(s for s in reversed(starts) if (words[s] >> 16) >= 2)
    cut = (last_big + 1) * 4
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(VADD[:cut])
    assert e.value.offset == last_big * 4


def test_zero_word_count():
    data = bytearray(VADD)
    struct.pack_into("<I", data, 20, 0x00000011)   # first instruction: word count 0
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(bytes(data))
    assert e.value.offset == 20


def test_bad_version_and_schema():
    data = bytearray(VADD)
    struct.pack_into("<I", data, 4, 0x00020000)
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(bytes(data))
    assert e.value.offset == 4                      # the version word
    data = bytearray(VADD)
    struct.pack_into("<I", data, 12, 0)
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(bytes(data))
    assert e.value.offset == 12                     # the id bound
    data = bytearray(VADD)
    struct.pack_into("<I", data, 16, 7)
    with pytest.raises(InvalidIR) as e:
        SpirvModule.from_bytes(bytes(data))
    assert e.value.offset == 16                     # the schema word


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_give_invalid_ir(data):
    with pytest.raises(InvalidIR):
        SpirvModule.from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(VADD) - 1))
def test_every_truncation_is_invalid_or_a_clean_prefix(cut):
    try:
        m = SpirvModule.from_bytes(VADD[:cut])
    except InvalidIR as e:
        assert e.offset is None or 0 <= e.offset <= cut
    else:   # a cut exactly at an instruction boundary is a well-formed (shorter) module
        assert cut % 4 == 0 and cut >= 20 and set(m.entry_points) <= {"vadd"}


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=20, max_value=len(VADD) - 1), st.integers(min_value=0, max_value=255))
def test_corrupted_bytes_never_crash(pos, value):
    data = bytearray(VADD)
    data[pos] = value
    try:
        SpirvModule.from_bytes(bytes(data))
    except InvalidIR:
        pass
