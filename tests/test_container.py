"""The generic container (kernbin/container.py, docs/container-format.md): round trips, one tiny
byte-string test per rule (checked by ``rule`` attribute, never by message), and property tests
that any damage to a valid container only ever raises ContainerError."""

import io
import json
import mmap
import struct

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernbin import container as C
from kernbin.container import PREFIX_SIZE, Container, ContainerError, pack
from kernbin.errors import InvalidBinary

MAGIC = b"\x89TST\r\n\x1a\n"
V = 3


def parse(data, **kw):
    kw.setdefault("magic", MAGIC)
    kw.setdefault("versions", (V,))
    return Container.parse(data, **kw)


def read(data, **kw):
    kw.setdefault("magic", MAGIC)
    kw.setdefault("versions", (V,))
    return Container.read(io.BytesIO(data), len(data), **kw)


def forge(header, payload=b"", *, magic=MAGIC, version=V, pad=b""):
    """A container around arbitrary header bytes (or a dict, dumped as JSON) with a *correct*
    header digest, so that the rule under test is the one that fires."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<8sII32s", magic, version, len(h), blake3(h).digest()) + h + pad + payload


def doc(sections=(), *, align=1, meta=None, digest="blake3"):
    return {"align": align, "digest": digest, "meta": meta if meta is not None else {}, "sections": list(sections)}


def entry(name, offset, data, **over):
    e = {"name": name, "offset": offset, "size": len(data), "digest": blake3(data).hexdigest()}
    e.update(over)
    return e


def rule_of(data, **kw):
    """The rule a parse + full verify of ``data`` breaks (None if it is valid); the in-memory
    reader and the file reader must agree on it."""
    try:
        parse(data, **kw).verify_all()
        got = None
    except ContainerError as e:
        got = e.rule
    try:
        c = read(data, **kw)
        other = "section-digest" if c.bad else None
    except ContainerError as e:
        other = e.rule
    assert got == other, (got, other)
    return got


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("align", [1, 64])
@pytest.mark.parametrize("sections", [
    [],
    [("native", b"\x7fELF" + bytes(100))],
    [("native", b"a" * 1000), ("ir", b""), ("blob.0", b"x"), ("k:v+1-2_3", bytes(range(256)) * 3), ("z", b"")],
    [("empty", b"")],
], ids=["none", "one", "many", "empty"])
def test_round_trip(sections, align):
    meta = {"kernbin_format": 2, "build": {"target": "opencl:cpu", "é": "ü", "n": [1, 2.5, None, True]}}
    blob = pack(MAGIC, V, meta, sections, align=align)
    for c in (parse(blob), parse(bytearray(blob)), parse(memoryview(blob)), read(blob)):
        assert c.version == V and c.meta == meta and c.align == align and c.bad == ()
        assert c.names == tuple(n for n, _ in sections)
        for name, data in sections:
            assert name in c and c.size(name) == len(data) and c.section(name) == data
            assert c.section(name) is c.section(name)          # verified once, then cached
        c.verify_all()
    if align > 1:
        hlen = struct.unpack_from("<8sII32s", blob)[2]
        start = -(-(PREFIX_SIZE + hlen) // align) * align
        for e in json.loads(blob[PREFIX_SIZE:PREFIX_SIZE + hlen])["sections"]:
            assert (start + e["offset"]) % align == 0
    assert pack(MAGIC, V, meta, sections, align=align) == blob  # deterministic


def test_round_trip_through_mmap(tmp_path):
    p = tmp_path / "x.bin"
    sections = [("a", b"1" * 5000), ("b", b"2" * 7)]
    p.write_bytes(pack(MAGIC, V, {"k": 1}, sections, align=4096))
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        c = parse(m)
        assert c.section("b") == b"2" * 7 and c.section("a") == b"1" * 5000
        del c
    with open(p, "rb", buffering=0) as f:                    # size from fstat
        c = Container.read(f, magic=MAGIC, versions=(V,))
        assert c.section("a") == b"1" * 5000


def test_each_container_gets_its_own_meta():
    blob = pack(MAGIC, V, {"a": [1]}, [])
    c1 = parse(blob)
    c1.meta["a"].append(2)
    c2 = parse(blob)                              # the parse of the same header is cached...
    assert c2.meta == {"a": [1]}                  # ...but never shared
    assert c1.header_digest == c2.header_digest == blob[16:48]


def test_header_cache_never_vouches_for_other_bytes():
    blob = pack(MAGIC, V, {"k": "v"}, [("a", b"x")])
    parse(blob)                                   # now cached under its digest
    hlen = struct.unpack_from("<8sII32s", blob)[2]
    for at in (PREFIX_SIZE + 1, PREFIX_SIZE + hlen - 2, 16, 47):   # header bytes; stored digest
        bad = bytearray(blob)
        bad[at] ^= 4
        assert rule_of(bytes(bad)) == "header-digest"
    assert rule_of(blob + b"\0") == "trailing-data" and rule_of(blob[:-1]) == "truncated"
    assert rule_of(blob) is None


def test_missing_section_is_a_key_error():
    with pytest.raises(KeyError):
        parse(pack(MAGIC, V, {}, [("a", b"")])).section("b")


def test_error_is_an_invalid_binary_with_attributes():
    with pytest.raises(InvalidBinary) as ei:
        parse(b"nope" * 20)
    assert isinstance(ei.value, ContainerError) and ei.value.rule == "magic" and ei.value.section is None
    assert set(C.RULES) >= {ei.value.rule}


# -- one byte-string test per rule ----------------------------------------------------------------
def test_bad_magic():
    assert rule_of(b"\x89KNB\r\n\x1a\n" + bytes(100)) == "magic"
    assert rule_of(b"GIF8") == "magic"                       # short, and not a prefix of the magic


def test_too_short_for_the_prefix():
    assert rule_of(b"") == "truncated"
    assert rule_of(MAGIC[:5]) == "truncated"
    assert rule_of(MAGIC + bytes(10)) == "truncated"


def test_unknown_version():
    assert rule_of(forge(doc(), version=V + 1)) == "version"
    assert parse(forge(doc(), version=V + 1), versions=(V, V + 1)).version == V + 1


def test_header_too_big():
    big = forge(doc(meta={"x": "y" * 100}))
    assert rule_of(big, max_header=50) == "header-size"
    assert parse(big, max_header=len(big)).meta == {"x": "y" * 100}
    claims = struct.pack("<8sII32s", MAGIC, V, (1 << 20) + 1, bytes(32))
    assert rule_of(claims) == "header-size"                  # refused before reading any of it
    with pytest.raises(ContainerError) as ei:
        pack(MAGIC, V, {"x": "y" * 100}, [], max_header=50)
    assert ei.value.rule == "header-size"


def test_header_past_end_of_file():
    assert rule_of(forge(doc())[:-1]) == "truncated"


def test_header_digest_mismatch():
    blob = bytearray(forge(doc()))
    blob[PREFIX_SIZE + 2] ^= 1
    assert rule_of(bytes(blob)) == "header-digest"
    blob = bytearray(forge(doc()))
    blob[20] ^= 0x80                                          # the stored digest itself
    assert rule_of(bytes(blob)) == "header-digest"


@pytest.mark.parametrize("header", [
    b"[]", b'"x"', b"null", b"1", b"",                                          # not an object
    b"{", b"{}x", b'{"a":1,}', b"{'a':1}",                                       # not JSON
    b"[" * 100_000, b'{"a":' * 100_000,                                          # deeply nested
    b'{"s":"\\ud800"}', b'{"s":"\\udc00x"}',                                     # lone surrogates
    b'{"s":"\xff"}', b'{"s":"\xed\xa0\x80"}', b"\xef\xbb\xbf{}",                # bad UTF-8, BOM
    '{"a":1}'.encode("utf-16"), b'{"a":"\x01"}',                                 # UTF-16, raw control char
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e999}', b'{"a":' + b"9" * 5000 + b"}",   # numbers
    json.dumps(doc(digest="sha256")).encode(),                                   # unknown digest
    json.dumps({**doc(), "extra": 1}).encode(),                                  # unknown key
    json.dumps({"align": 1, "digest": "blake3", "sections": []}).encode(),       # missing key
    json.dumps(doc(meta=[])).encode(),                                           # meta not an object
])
def test_header_json(header):
    assert rule_of(forge(header)) == "header-json"


def test_escaped_surrogate_pairs_and_non_ascii_are_fine():
    h = b'{"align":1,"digest":"blake3","meta":{"s":"\\ud83d\\ude00\\u00e9\xc3\xa9"},"sections":[]}'
    assert parse(forge(h)).meta == {"s": "\U0001F600\u00e9\u00e9"}


@pytest.mark.parametrize("sections, align", [
    ("notalist", 1),
    ([["a", 0, 0, "00" * 32]], 1),                                              # entry not an object
    ([{"name": "a", "offset": 0, "size": 0}], 1),                               # missing digest
    ([entry("a", 0, b"", extra=1)], 1),                                         # unknown key
    ([entry("a", 0, b"x", size=True)], 1),                                      # bool as size
    ([entry("a", False, b"")], 1),                                              # bool as offset
    ([entry("a", 0, b"x", size=1.0)], 1),                                       # float as size
    ([entry("a", 0, b"x", size="1")], 1),                                       # string as size
    ([entry("a", -1, b"")], 1),                                                 # negative offset
    ([entry("a", 0, b"", digest="AB" * 32)], 1),                                # uppercase hex
    ([entry("a", 0, b"", digest="ab" * 31)], 1),                                # short digest
    ([entry("a", 0, b"", digest=None)], 1),
    ([], 3), ([], 0), ([], True), ([], 1 << 17), ([], "1"), ([], 1.0),          # bad align
])
def test_section_table(sections, align):
    h = doc(align=1)
    h["sections"], h["align"] = sections, align
    assert rule_of(forge(h, b"x")) == "section-table"


@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "é", "x" * 129, "a\x00", 7, None])
def test_illegal_section_name(name):
    with pytest.raises(ContainerError) as ei:
        parse(forge(doc([entry(name, 0, b"")])))
    assert ei.value.rule == "section-name"
    with pytest.raises(ContainerError) as ei:
        pack(MAGIC, V, {}, [(name, b"")])
    assert ei.value.rule == "section-name"


def test_duplicate_section_name():
    assert rule_of(forge(doc([entry("a", 0, b"x"), entry("a", 1, b"y")]), b"xy")) == "section-name"
    with pytest.raises(ContainerError) as ei:
        pack(MAGIC, V, {}, [("a", b"x"), ("a", b"y")])
    assert (ei.value.rule, ei.value.section) == ("section-name", "a")


def test_longest_legal_name():
    name = "aZ0._:+-" * 16
    assert parse(pack(MAGIC, V, {}, [(name, b"!")])).section(name) == b"!"


def test_section_beyond_end_of_file():
    with pytest.raises(ContainerError) as ei:
        parse(forge(doc([entry("a", 0, b"xyz")]), b"xy"))
    assert (ei.value.rule, ei.value.section) == ("truncated", "a")
    assert rule_of(forge(doc([entry("a", 0, b"xy"), entry("b", 2, b"z" * 10)]), b"xyz")) == "truncated"


def test_overlapping_sections():
    assert rule_of(forge(doc([entry("a", 0, b"xy"), entry("b", 1, b"yz")]), b"xyz")) == "section-bounds"


def test_sections_out_of_order():
    with pytest.raises(ContainerError) as ei:
        parse(forge(doc([entry("b", 1, b"y"), entry("a", 0, b"x")]), b"xy"))
    assert (ei.value.rule, ei.value.section) == ("section-bounds", "b")


def test_hole_between_sections():
    assert rule_of(forge(doc([entry("a", 0, b"x"), entry("b", 2, b"y")]), b"x\0y")) == "section-bounds"


def test_misaligned_section():
    h = doc([entry("a", 0, b"x"), entry("b", 8, b"y")], align=16)
    pad = bytes(-(PREFIX_SIZE + len(json.dumps(h, separators=(",", ":")))) % 16)
    assert rule_of(forge(h, b"x" + bytes(7) + b"y", pad=pad)) == "section-bounds"


def test_alignment_padding_must_be_zero():
    blob = next(b for k in range(64)                            # one with padding after the header
                if (PREFIX_SIZE + struct.unpack_from("<8sII32s", b := pack(
                    MAGIC, V, {"p": "x" * k}, [("a", b"x"), ("b", b"y")], align=64))[2]) % 64)
    assert rule_of(blob) is None
    b_at = len(blob) - 1
    for at in (b_at - 1, b_at - 63 + 1):                       # between the sections
        bad = bytearray(blob)
        bad[at] = 1
        assert rule_of(bytes(bad)) == "padding"
    hlen = struct.unpack_from("<8sII32s", blob)[2]
    bad = bytearray(blob)
    bad[PREFIX_SIZE + hlen] = 0x20                              # after the header (JSON whitespace!)
    assert rule_of(bytes(bad)) == "padding"
    empty = bytearray(pack(MAGIC, V, {}, [], align=64))
    assert len(empty) % 64 == 0 and len(empty) > PREFIX_SIZE + struct.unpack_from("<8sII32s", empty)[2]
    empty[-1] = 1
    assert rule_of(bytes(empty)) == "padding"


def test_trailing_data():
    assert rule_of(pack(MAGIC, V, {}, [("a", b"x")]) + b"\0") == "trailing-data"
    assert rule_of(pack(MAGIC, V, {}, []) + b"PK\x03\x04") == "trailing-data"   # no polyglot files
    assert rule_of(forge(doc([entry("a", 0, b"x")]), b"xy")) == "trailing-data"


def test_section_digest_is_checked_lazily_and_only_for_that_section():
    blob = bytearray(pack(MAGIC, V, {"m": 1}, [("good", b"g" * 50), ("bad", b"b" * 50)]))
    blob[-1] ^= 1
    c = parse(bytes(blob))                    # parses: sections are not touched yet
    assert c.bad == () and c.meta == {"m": 1}
    assert c.section("good") == b"g" * 50
    for _ in range(2):
        with pytest.raises(ContainerError) as ei:
            c.section("bad")
        assert (ei.value.rule, ei.value.section) == ("section-digest", "bad")
    assert c.bad == ("bad",)
    with pytest.raises(ContainerError) as ei:
        c.verify_all()
    assert (ei.value.rule, ei.value.section) == ("section-digest", "bad")


def test_file_reader_reports_bad_sections_and_keeps_the_good_ones():
    blob = bytearray(pack(MAGIC, V, {}, [("native", b"n" * 50), ("ir", b"i" * 50)]))
    blob[-60] ^= 1                            # inside "native"
    c = read(bytes(blob))
    assert c.bad == ("native",) and c.section("ir") == b"i" * 50
    with pytest.raises(ContainerError) as ei:
        c.section("native")
    assert (ei.value.rule, ei.value.section) == ("section-digest", "native")


def test_file_reader_short_reads_and_a_file_that_shrank():
    blob = pack(MAGIC, V, {}, [("a", b"x" * 1000)])

    class Dribble(io.RawIOBase):              # returns at most 7 bytes per read
        def __init__(self, data):
            self.f = io.BytesIO(data)

        def readable(self):
            return True

        def read(self, n=-1):
            return self.f.read(min(n, 7) if n >= 0 else 7)

    c = Container.read(Dribble(blob), len(blob), magic=MAGIC, versions=(V,))
    assert c.section("a") == b"x" * 1000
    with pytest.raises(ContainerError) as ei:  # fstat said more than the file holds now
        Container.read(io.BytesIO(blob[:-10]), len(blob), magic=MAGIC, versions=(V,))
    assert ei.value.rule == "truncated"


def test_pack_refuses_what_a_reader_would_refuse():
    for meta in ([1], {"x": float("nan")}, {"x": object()}, {"s": "\ud800"}, {1: 1, "a": 2}):
        with pytest.raises(ContainerError) as ei:
            pack(MAGIC, V, meta, [])
        assert ei.value.rule == "header-json"
    for kw, rule in (({"align": 3}, "section-table"), ({"align": 0}, "section-table")):
        with pytest.raises(ContainerError) as ei:
            pack(MAGIC, V, {}, [], **kw)
        assert ei.value.rule == rule
    with pytest.raises(ContainerError) as ei:
        pack(b"short", V, {}, [])
    assert ei.value.rule == "magic"


# -- properties: damage only ever raises ContainerError ---------------------------------------------
_SAMPLES = [pack(MAGIC, V, {"kernbin_format": 2, "build": {"t": "x", "k": [{"n": "k", "a": {"p": 0}}]}},
                 [("native", bytes(range(200))), ("ir", b"\x03\x02\x23\x07" * 20)], align=a) for a in (1, 16)]
_SAMPLES.append(pack(MAGIC, V, {}, [("e", b""), ("f", b"z")], align=8))
_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.sampled_from(_SAMPLES), st.data())
def test_every_byte_flip_is_detected(blob, data):
    pos = data.draw(st.integers(0, len(blob) - 1))
    xor = data.draw(st.integers(1, 255))
    bad = bytearray(blob)
    bad[pos] ^= xor
    assert rule_of(bytes(bad)) in C.RULES          # never None: every byte of the file matters


@_FAST
@given(st.sampled_from(_SAMPLES), st.data())
def test_every_truncation_is_detected(blob, data):
    cut = data.draw(st.integers(0, len(blob) - 1))
    assert rule_of(blob[:cut]) == "truncated"


@_FAST
@given(st.sampled_from(_SAMPLES), st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_detected(blob, extra):
    assert rule_of(blob + extra) == "trailing-data"


@_FAST
@given(st.sampled_from(_SAMPLES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(-40, 40))
def test_random_damage_only_raises_container_error(blob, flips, resize):
    bad = bytearray(blob)
    for pos, value in flips:
        bad[pos % len(bad)] = value
    bad = bad[:len(bad) + resize] if resize < 0 else bad + bytes(resize)
    rule_of(bytes(bad))                         # any exception but ContainerError fails the test


@_FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_container_error(junk):
    assert rule_of(junk) in C.RULES
    assert rule_of(MAGIC + junk) in C.RULES


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "offset", "size", "digest", "align", "meta", "sections", "x"]), kids, max_size=5),
    max_leaves=20)


@_FAST
@given(st.one_of(_json, st.fixed_dictionaries({"align": _json, "digest": st.just("blake3"), "meta": _json,
                                                "sections": st.lists(_json, max_size=3)})),
       st.binary(max_size=40))
def test_any_header_with_a_good_digest_only_raises_container_error(header, payload):
    rule_of(forge(json.dumps(header).encode(), payload))


@_FAST
@given(st.binary(max_size=200))
def test_any_header_bytes_with_a_good_digest_only_raise_container_error(header):
    assert rule_of(forge(header)) in C.RULES


def test_a_repeated_key_is_its_last_value():
    """JSON leaves repeated keys open; the decoder (msgspec) takes the last one. Only kernbin reads
    these headers, and the header digest covers the exact bytes, so there is no second reading."""
    h = b'{"align":7,"align":1,"digest":"blake3","meta":{},"sections":[]}'
    c = parse(forge(h))
    assert c.align == 1 and c.names == ()
