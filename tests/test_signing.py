"""Signatures on containers (kernbin/signing.py, docs/signing.md): real Ed25519 keys, real
containers from ``pack`` and a real ``.knb``. Every attack is an honest re-pack (all digests
re-computed), so only the signature can catch it; errors are checked by ``rule``, never by message."""

import json
import os
import stat
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernbin import signing
from kernbin.container import Container, ContainerError, pack
from kernbin.errors import InvalidBinary, KernbinError
from kernbin.signing import KeyFileError, SignatureError

MAGIC = b"\x89TST\r\n\x1a\n"
V = 3
META = {"kind": "test", "n": 2, "nested": {"a": [1, 2.5, "x"]}}
SECTIONS = [("native", b"\x7fELF" + bytes(range(200))), ("ir", b"\x03\x02\x23\x07" * 50), ("empty", b"")]


def parse(data, magic=MAGIC, versions=(V,)):
    return Container.parse(data, magic=magic, versions=versions)


def sections_of(c):
    return [(n, c.section(n)) for n in c.names]


def repack(data, *, magic=MAGIC, version=None, meta=None, sections=None, align=None, versions=(V,), source=MAGIC):
    """An attacker's honest re-pack of a signed container (read with magic ``source``): same parts
    unless overridden, every digest re-computed (the signature section is carried over unchanged)."""
    c = parse(data, source, versions)
    return pack(magic, c.version if version is None else version, c.meta if meta is None else meta,
                sections_of(c) if sections is None else sections, align=c.align if align is None else align)


def verify(data, keys, magic=MAGIC, versions=(V,)):
    return signing.verify(parse(data, magic, versions), keys, magic=magic)


def rule_of(data, keys, **kw):
    with pytest.raises(SignatureError) as e:
        verify(data, keys, **kw)
    return e.value.rule


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def plain():
    return pack(MAGIC, V, META, SECTIONS, align=64)


@pytest.fixture(scope="module")
def signed(plain, key):
    return signing.sign(plain, key, magic=MAGIC, versions=(V,))


@pytest.fixture(scope="module")
def knb():
    """A real .knb built for the OpenCL CPU device; skips (with the reason) without one."""
    import kernbin
    from kernbin.artifact import KNB_MAGIC, KNB_VERSION
    try:
        data = kernbin.build("kernbin/samples/vadd.spv", "opencl:cpu").to_bytes()
    except KernbinError as e:
        pytest.skip(f"cannot build a .knb on the OpenCL CPU device: {e}")
    return data, KNB_MAGIC, (KNB_VERSION,)


# -- round trips ----------------------------------------------------------------------------------
def test_round_trip_keeps_everything_and_appends_signature(plain, signed, key):
    a, b = parse(plain), parse(signed)
    assert b.names == a.names + ("signature",)
    assert (b.version, b.align, b.meta, b.meta_raw) == (a.version, a.align, a.meta, a.meta_raw)
    assert sections_of(b)[:-1] == sections_of(a)
    assert signing.verify(b, [key.public_key()], magic=MAGIC) == signing.key_id(key.public_key())
    assert signing.signature_of(b) == {"alg": "ed25519", "key": signing.public_key_text(key.public_key()).split()[1],
                                       "key_id": signing.key_id(key.public_key())}
    assert signing.signature_of(a) is None
    assert set(json.loads(b.section("signature"))) == {"alg", "key", "sig"}


def test_round_trip_real_knb(knb, key, other):
    data, magic, versions = knb
    signed = signing.sign(data, key, magic=magic, versions=versions)
    c = Container.parse(signed, magic=magic, versions=versions)
    assert c.names == ("native", "ir", "signature")
    assert signing.verify(c, [other.public_key(), key.public_key()], magic=magic) == signing.key_id(key.public_key())
    assert sections_of(c)[:2] == sections_of(Container.parse(data, magic=magic, versions=versions))
    # a .knb signature does not pass for another format's magic
    assert rule_of(repack(signed, magic=MAGIC, versions=versions, source=magic), [key.public_key()],
                   magic=MAGIC, versions=versions) == "bad-signature"
    # and tampering with the real native code, honestly re-packed, is caught
    native = bytearray(c.section("native"))
    native[-1] ^= 1
    forged = pack(magic, c.version, c.meta, [("native", bytes(native)), ("ir", c.section("ir")),
                                             ("signature", c.section("signature"))], align=c.align)
    assert rule_of(forged, [key.public_key()], magic=magic, versions=versions) == "bad-signature"


def test_resign_replaces_old_signature_in_place_of_order(signed, key, other):
    again = signing.sign(signed, other, magic=MAGIC, versions=(V,))
    c = parse(again)
    assert c.names == tuple(n for n, _ in SECTIONS) + ("signature",)
    assert signing.verify(c, [other.public_key()], magic=MAGIC) == signing.key_id(other.public_key())
    e = pytest.raises(SignatureError, signing.verify, c, [key.public_key()], magic=MAGIC).value
    assert (e.rule, e.key_id) == ("untrusted-key", signing.key_id(other.public_key()))
    # a signature section anywhere (here first) is replaced, the others keep their order
    first = pack(MAGIC, V, META, [("signature", b"old")] + SECTIONS, align=16)
    c = parse(signing.sign(first, key, magic=MAGIC, versions=(V,)))
    assert c.names == tuple(n for n, _ in SECTIONS) + ("signature",) and c.align == 16


def test_sign_is_deterministic(plain, key):
    assert signing.sign(plain, key, magic=MAGIC, versions=(V,)) == signing.sign(plain, key, magic=MAGIC, versions=(V,))


def test_sign_refuses_corrupted_container(key):
    data = bytearray(pack(MAGIC, V, META, SECTIONS))        # align 1: "ir" ends where the file ends
    data[-1] ^= 1                                           # its digest is not updated
    with pytest.raises(ContainerError) as e:
        signing.sign(bytes(data), key, magic=MAGIC, versions=(V,))
    assert (e.value.rule, e.value.section) == ("section-digest", "ir")
    with pytest.raises(ContainerError) as e:
        signing.sign(bytes(data), key, magic=b"\x89XXX\r\n\x1a\n", versions=(V,))
    assert e.value.rule == "magic"


def test_sign_header_cap(key):
    """No cap by default (a bundle manifest may exceed the container's 1 MiB default); a caller's
    cap is enforced on the signed header, which is longer than the unsigned one."""
    big = pack(MAGIC, V, {"blob": "x" * (2 << 20)}, SECTIONS, max_header=4 << 20)
    c = Container.parse(signing.sign(big, key, magic=MAGIC, versions=(V,)), magic=MAGIC, versions=(V,),
                        max_header=4 << 20)
    assert signing.verify(c, [key.public_key()], magic=MAGIC) == signing.key_id(key.public_key())
    small = pack(MAGIC, V, META, SECTIONS)
    cap = struct.unpack_from("<I", small, 12)[0]           # the unsigned header fits exactly
    with pytest.raises(ContainerError) as e:
        signing.sign(small, key, magic=MAGIC, versions=(V,), max_header=cap)
    assert e.value.rule == "header-size"


# -- what the signature binds ----------------------------------------------------------------------
@pytest.mark.parametrize("meta", [{**META, "n": 3}, {**META, "extra": True}, {"kind": "test"}, {}])
def test_meta_tampering(signed, key, meta):
    assert rule_of(repack(signed, meta=meta), [key.public_key()]) == "bad-signature"


@pytest.mark.parametrize("name", [n for n, _ in SECTIONS])
@pytest.mark.parametrize("change", ["flip", "append", "truncate"])
def test_section_tampering_with_honest_repack(signed, key, name, change):
    secs = sections_of(parse(signed))
    new = []
    for n, b in secs:
        if n == name:
            b = {"flip": (bytes([b[0] ^ 1]) + b[1:]) if b else b"\1", "append": b + b"\0",
                 "truncate": b[:-1] if b else b"x"}[change]
        new.append((n, b))
    assert rule_of(repack(signed, sections=new), [key.public_key()]) == "bad-signature"


def test_structure_tampering(signed, key):
    pub = [key.public_key()]
    secs = sections_of(parse(signed))
    native, ir, empty, sig = secs
    assert rule_of(repack(signed, sections=[ir, native, empty, sig]), pub) == "bad-signature"         # swap
    assert rule_of(repack(signed, sections=[("ir", native[1]), ("native", ir[1]), empty, sig]), pub) == "bad-signature"
    assert rule_of(repack(signed, sections=[native, empty, sig]), pub) == "bad-signature"              # drop one
    assert rule_of(repack(signed, sections=[native, ir, empty, ("more", b""), sig]), pub) == "bad-signature"
    assert rule_of(repack(signed, sections=[("native2", native[1]), ir, empty, sig]), pub) == "bad-signature"
    assert rule_of(repack(signed, version=V + 1, versions=(V, V + 1)), pub, versions=(V, V + 1)) == "bad-signature"
    other_magic = b"\x89OTH\r\n\x1a\n"
    assert rule_of(repack(signed, magic=other_magic), pub, magic=other_magic) == "bad-signature"


def test_what_the_signature_does_not_bind(signed, key):
    """Alignment only moves zero padding, and the signature's own place carries no meaning."""
    pub = [key.public_key()]
    assert verify(repack(signed, align=1), pub) == signing.key_id(key.public_key())
    native, ir, empty, sig = sections_of(parse(signed))
    assert verify(repack(signed, sections=[sig, native, ir, empty]), pub) == signing.key_id(key.public_key())


def test_unsigned(plain, signed, key):
    assert rule_of(plain, [key.public_key()]) == "unsigned"
    dropped = repack(signed, sections=[s for s in sections_of(parse(signed)) if s[0] != "signature"])
    e = pytest.raises(SignatureError, verify, dropped, [key.public_key()]).value
    assert (e.rule, e.key_id) == ("unsigned", None)
    assert isinstance(e, InvalidBinary)


def test_untrusted_key(signed, key, other):
    for keys in ([other.public_key()], []):
        e = pytest.raises(SignatureError, verify, signed, keys).value
        assert (e.rule, e.key_id) == ("untrusted-key", signing.key_id(key.public_key()))
    # a forger re-signs with their own key: still untrusted
    forged = signing.sign(repack(signed, meta={"evil": 1}), other, magic=MAGIC, versions=(V,))
    assert rule_of(forged, [key.public_key()]) == "untrusted-key"


def test_signature_by_trusted_key_over_other_contents(signed, key):
    """A valid signature lifted from one container onto another (both by the trusted key)."""
    sig = parse(signed).section("signature")
    other = pack(MAGIC, V, {"other": True}, [("native", b"x"), ("signature", sig)])
    e = pytest.raises(SignatureError, verify, other, [key.public_key()]).value
    assert (e.rule, e.key_id) == ("bad-signature", signing.key_id(key.public_key()))


def _with_signature(blob: bytes) -> bytes:
    return pack(MAGIC, V, META, SECTIONS + [("signature", blob)])


def _good(key, plain):
    return json.loads(parse(signing.sign(plain, key, magic=MAGIC, versions=(V,))).section("signature"))


@pytest.mark.parametrize("mutate", [
    lambda d: b"not json",
    lambda d: b"",
    lambda d: b"\xff\xfe{}",
    lambda d: json.dumps([d["alg"], d["key"], d["sig"]]).encode(),
    lambda d: json.dumps({**d, "extra": 1}).encode(),
    lambda d: json.dumps({"alg": d["alg"], "key": d["key"]}).encode(),
    lambda d: json.dumps({**d, "alg": "rsa"}).encode(),
    lambda d: json.dumps({**d, "key": d["key"].upper()}).encode(),
    lambda d: json.dumps({**d, "key": "zz" + d["key"][2:]}).encode(),
    lambda d: json.dumps({**d, "key": d["key"][:-2]}).encode(),
    lambda d: json.dumps({**d, "key": d["key"] + "00"}).encode(),
    lambda d: json.dumps({**d, "key": 5}).encode(),
    lambda d: json.dumps({**d, "sig": d["sig"][:-2]}).encode(),
    lambda d: json.dumps({**d, "sig": d["sig"] + "00"}).encode(),
    lambda d: json.dumps({**d, "sig": "g" + d["sig"][1:]}).encode(),
    lambda d: json.dumps({**d, "sig": None}).encode(),
    lambda d: json.dumps({**d, "pad": "x" * 2000}).encode(),
], ids=["not-json", "empty", "not-utf8", "array", "extra-key", "missing-key", "other-alg", "upper-hex",
        "non-hex-key", "short-key", "long-key", "key-not-str", "short-sig", "long-sig", "non-hex-sig",
        "sig-null", "oversized"])
def test_malformed_signature(plain, key, mutate):
    data = _with_signature(mutate(_good(key, plain)))
    assert rule_of(data, [key.public_key()]) == "malformed-signature"
    with pytest.raises(SignatureError) as e:
        signing.signature_of(parse(data))
    assert e.value.rule == "malformed-signature"


def test_malformed_signature_names_key_when_it_can(plain, key):
    d = _good(key, plain)
    e = pytest.raises(SignatureError, verify, _with_signature(json.dumps({**d, "sig": "00"}).encode()),
                      [key.public_key()]).value
    assert (e.rule, e.key_id) == ("malformed-signature", signing.key_id(key.public_key()))


def test_corrupted_signature_section_is_a_container_error(signed, key):
    data = bytearray(signed)
    data[-3] ^= 0x20                                           # inside the signature's hex
    with pytest.raises(ContainerError) as e:
        verify(bytes(data), [key.public_key()])
    assert (e.value.rule, e.value.section) == ("section-digest", "signature")


# -- key files --------------------------------------------------------------------------------------
def test_generate_key_files_and_modes(tmp_path):
    priv, pub = signing.generate_key(tmp_path / "release", comment="ci release key")
    assert (priv, pub) == (str(tmp_path / "release"), str(tmp_path / "release.pub"))
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    assert open(priv, "rb").read().startswith(b"-----BEGIN PRIVATE KEY-----")
    line = open(pub).read()
    assert line.endswith(" ci release key\n") and line.count("\n") == 1
    k, p = signing.load_private_key(priv), signing.load_public_key(pub)
    assert signing.key_id(k.public_key()) == signing.key_id(p)
    assert signing.key_id(signing.load_public_key(line)) == signing.key_id(p)       # pasted text
    kid = signing.key_id(p)
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


@pytest.mark.parametrize("existing", ["k", "k.pub"])
def test_generate_key_refuses_overwrite(tmp_path, existing):
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(KeyFileError) as e:
        signing.generate_key(tmp_path / "k")
    assert (e.value.rule, e.value.path) == ("exists", str(tmp_path / existing))
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == [existing]


def test_load_key_errors(tmp_path):
    priv, pub = signing.generate_key(tmp_path / "k")
    cases = [
        (signing.load_private_key, tmp_path / "nope", "missing"),
        (signing.load_public_key, tmp_path / "nope.pub", "missing"),
        (signing.load_private_key, pub, "malformed"),
        (signing.load_public_key, priv, "malformed"),
        (signing.load_private_key, tmp_path, "unreadable"),
    ]
    for load, path, rule in cases:
        with pytest.raises(KeyFileError) as e:
            load(path)
        assert (e.value.rule, e.value.path) == (rule, str(path))
    for text in ["kernbin-ed25519 abc", "kernbin-ed25519 " + "A" * 64, "ssh-ed25519 " + "a" * 64]:
        (tmp_path / "bad.pub").write_text(text)
        with pytest.raises(KeyFileError) as e:
            signing.load_public_key(tmp_path / "bad.pub")
        assert e.value.rule == "malformed"
    with pytest.raises(KeyFileError) as e:
        signing.load_public_key("kernbin-ed25519 " + "0" * 63)
    assert (e.value.rule, e.value.path) == ("malformed", None)


def test_sign_with_key_from_file(tmp_path, plain):
    priv, pub = signing.generate_key(tmp_path / "k")
    data = signing.sign(plain, signing.load_private_key(priv), magic=MAGIC, versions=(V,))
    assert verify(data, [signing.load_public_key(pub)]) == signing.key_id(signing.load_public_key(pub))


# -- KERNBIN_TRUSTED_KEYS ---------------------------------------------------------------------------
def test_trusted_keys_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNBIN_TRUSTED_KEYS", raising=False)
    assert signing.trusted_keys_from_env() == []
    monkeypatch.setenv("KERNBIN_TRUSTED_KEYS", "")
    assert signing.trusted_keys_from_env() == []
    d = tmp_path / "trusted"
    d.mkdir()
    _, a = signing.generate_key(d / "a")            # d/a (private, not *.pub: ignored) and d/a.pub
    _, b = signing.generate_key(d / "b")
    (d / "README").write_text("not a key")
    _, c = signing.generate_key(tmp_path / "c")
    monkeypatch.setenv("KERNBIN_TRUSTED_KEYS", os.pathsep.join([str(d), "", c, a]))   # a listed twice
    ids = [signing.key_id(k) for k in signing.trusted_keys_from_env()]
    assert ids == [signing.key_id(signing.load_public_key(p)) for p in (a, b, c)]
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("KERNBIN_TRUSTED_KEYS", str(tmp_path / "empty"))
    assert signing.trusted_keys_from_env() == []


def test_trusted_keys_from_env_errors(tmp_path, monkeypatch):
    _, good = signing.generate_key(tmp_path / "good")
    missing = str(tmp_path / "missing.pub")
    monkeypatch.setenv("KERNBIN_TRUSTED_KEYS", os.pathsep.join([good, missing]))
    with pytest.raises(KeyFileError) as e:
        signing.trusted_keys_from_env()
    assert (e.value.rule, e.value.path) == ("missing", missing)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "broken.pub").write_text("garbage\n")
    monkeypatch.setenv("KERNBIN_TRUSTED_KEYS", str(d))
    with pytest.raises(KeyFileError) as e:
        signing.trusted_keys_from_env()
    assert (e.value.rule, e.value.path) == ("malformed", str(d / "broken.pub"))
    (d / "broken.pub").unlink()
    (d / "huge.pub").write_bytes(b"x" * (1 << 20))
    with pytest.raises(KeyFileError) as e:
        signing.trusted_keys_from_env()
    assert (e.value.rule, e.value.path) == ("unreadable", str(d / "huge.pub"))
    (d / "huge.pub").unlink()
    os.mkfifo(d / "fifo.pub")                       # must be refused, not block
    with pytest.raises(KeyFileError) as e:
        signing.trusted_keys_from_env()
    assert (e.value.rule, e.value.path) == ("unreadable", str(d / "fifo.pub"))


def test_errors_are_in_the_hierarchy():
    assert issubclass(SignatureError, InvalidBinary) and issubclass(KeyFileError, KernbinError)
    assert set(signing.SIGNATURE_RULES) == {"unsigned", "untrusted-key", "bad-signature", "malformed-signature"}


# -- property: no byte flip of a signed container verifies ------------------------------------------
_KEY = Ed25519PrivateKey.generate()
_SIGNED = signing.sign(pack(MAGIC, V, META, SECTIONS, align=8), _KEY, magic=MAGIC, versions=(V,))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_SIGNED) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_never_verify(flips):
    data = bytearray(_SIGNED)
    for at, x in flips:
        data[at] ^= x
    if bytes(data) == _SIGNED:                      # two flips of one byte that cancel out
        return
    try:
        c = parse(bytes(data))
        signing.verify(c, [_KEY.public_key()], magic=MAGIC)   # the header and the signed digests
        c.verify_all()                                         # the bytes, against those digests
    except (ContainerError, SignatureError):
        return
    pytest.fail("a damaged signed container verified")
