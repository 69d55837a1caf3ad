"""Bundles: many kernels x targets in one file, the entry chosen by the device's backend, IR
fallback, lazy blob verification, signatures. Real builds (CPU OpenCL, ocloc), real loader."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import kernbin
from kernbin import container, signing
from kernbin.bundle import BUNDLE_MAGIC, BUNDLE_VERSION, BundleError, write_bundle
from kernbin.samples import SAMPLES

from conftest import ROOT, ZE_DRIVER, run_cli

TARGETS = ["opencl:cpu", "ocloc:pvc", "ocloc:acm-g10"]


def _have_ocloc():
    try:
        from kernbin.backends.ocloc import get_ocloc
        get_ocloc()
        return True
    except kernbin.RuntimeNotFound:
        return False


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    try:
        kernbin.open_device("opencl:cpu")
    except kernbin.KernbinError as e:
        pytest.skip(f"no OpenCL CPU device: {e}")
    targets = TARGETS if _have_ocloc() else TARGETS[:1]
    d = tmp_path_factory.mktemp("bundle")
    key_priv, key_pub = signing.generate_key(str(d / "key"))
    path = str(d / "m.kbin")
    report = kernbin.create_bundle(path, [SAMPLES["vadd"].spv, SAMPLES["softmax"].spv], targets, sign_key=key_priv)
    return {"dir": d, "path": path, "targets": targets, "priv": key_priv, "pub": key_pub, "report": report}


def _run(module, name, rng=None):
    s = SAMPLES[name]
    launch = s.setup(rng or np.random.default_rng())
    module.kernel(s.kernel).launch(launch.global_size, launch.local_size, *launch.args)
    return launch.correct()


def test_create_and_read_back(made):
    assert set(made["report"]) == {"vadd", "softmax"}
    with kernbin.open_bundle(made["path"]) as b:
        assert b.names == ("softmax", "vadd")
        assert b.targets("vadd") == tuple(made["targets"])
        assert b.ir("vadd").sha256 == kernbin.read_ir(SAMPLES["vadd"].spv).sha256
        e = b.entries("softmax")[0]
        nb = b.native(e)
        assert nb.info.target == "opencl:cpu" and nb.ir is not None and nb.kernel_names == ("softmax",)


def test_load_picks_the_entry_for_the_device_and_runs(made):
    with kernbin.open_bundle(made["path"]) as b:
        for name in ("vadd", "softmax"):
            m = b.load(name, "opencl:cpu")
            assert m.source == "native" and m.bundle_choice["entry"] == "opencl:cpu"
            assert any(r.startswith("ocloc:pvc: ") for r in m.bundle_choice["reasons"]) or len(made["targets"]) == 1
            assert _run(m, name)


def test_blobs_are_verified_lazily_and_only_when_used(made, tmp_path):
    data = bytearray(open(made["path"], "rb").read())
    c = container.Container.parse(bytes(data), magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,))
    with kernbin.open_bundle(made["path"]) as b:
        vadd_cpu_blob = b.entries("vadd")[0].blob
    # flip one byte inside vadd's CPU binary: the file still opens, softmax still loads natively
    off = data.find(c.section(vadd_cpu_blob)[100:140])
    data[off] ^= 0xFF
    bad = tmp_path / "bad.kbin"
    bad.write_bytes(bytes(data))
    with kernbin.open_bundle(bad) as b:
        assert b.load("softmax", "opencl:cpu").source == "native"
        with pytest.raises(kernbin.InvalidBinary) as e:
            b.load("vadd", "opencl:cpu", fallback=False)
        assert e.value.rule == "section-digest"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = b.load("vadd", "opencl:cpu")            # rebuilt from the bundle's (intact) IR
        assert m.source == "ir" and _run(m, "vadd")
        with pytest.raises(kernbin.InvalidBinary):
            b.verify()
    assert run_cli("bundle", "verify", str(bad)).returncode == 2


def test_gate_many_then_load_each(made, tmp_path):
    """gate_from_bundle does everything but the runtime's part (choose, verify, gate), so a set of
    kernels can be gated in one pass and loaded later; a damaged blob or no entry raises there."""
    from kernbin.api import gate_from_bundle, load_gated
    dev = kernbin.open_device("opencl:cpu")
    with kernbin.open_bundle(made["path"]) as b:
        gated = {n: gate_from_bundle(b, n, dev) for n in b.names}
        for n, g in gated.items():
            assert g.native.info.target == "opencl:cpu" and g.choice["entry"] == "opencl:cpu"
            assert g.payload and g.fit.ok
            m = load_gated(dev, g)
            assert m.bundle_choice == g.choice and _run(m, n)
    data = bytearray(open(made["path"], "rb").read())
    c = container.Container.parse(bytes(data), magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,))
    with kernbin.open_bundle(made["path"]) as b:
        blob = b.entries("vadd")[0].blob
    data[data.find(c.section(blob)[100:140])] ^= 0xFF
    bad = tmp_path / "bad.kbin"
    bad.write_bytes(bytes(data))
    with kernbin.open_bundle(bad) as b:
        with pytest.raises(kernbin.InvalidBinary) as e:
            gate_from_bundle(b, "vadd", dev)
        assert e.value.rule == "section-digest"
        assert gate_from_bundle(b, "softmax", dev).fit.ok


def test_no_fitting_entry_and_no_ir_names_what_the_bundle_holds(tmp_path):
    pytest.importorskip("cuda.bindings.nvjitlink")
    nb = kernbin.build(SAMPLES["vadd"].ptx, "cuda:sm_90").without_ir()
    path = write_bundle(tmp_path / "c.kbin", {"vadd": {"ir": None, "natives": [nb]}})
    with kernbin.open_bundle(path) as b:
        with pytest.raises(kernbin.IncompatibleBinary) as e:
            b.load("vadd", "opencl:cpu")
        assert e.value.rule == "no-entry" and "cuda:sm_90" in e.value.reason
        with pytest.raises(kernbin.KernelNotFound) as e:
            b.load("nope", "opencl:cpu")
        assert e.value.available == ("vadd",)


def test_ir_fallback_writes_through_the_cache(made, tmp_path):
    """A bundle with only GPU entries: on the CPU the IR is rebuilt with the recorded options and
    stored in the cache (a second process finds it there)."""
    if len(made["targets"]) == 1:
        pytest.skip("needs ocloc for GPU-only entries")
    kernels = kernbin.bundle.read_all(made["path"])
    for k in kernels.values():
        k["natives"] = [nb for nb in k["natives"] if nb.info.target.startswith("ocloc:")]
    path = write_bundle(tmp_path / "gpu.kbin", kernels)
    from kernbin.cache import Cache, LocalStore
    cache = Cache(LocalStore(str(tmp_path / "cache")))
    with kernbin.open_bundle(path) as b, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = b.load("softmax", "opencl:cpu", cache=cache)
        assert m.source == "ir" and m.bundle_choice["source"] == "ir" and _run(m, "softmax")
        assert any(issubclass(x.category, kernbin.FallbackWarning) for x in w)
        assert "ocloc:pvc" in m.fallback_reason
        m2 = b.load("softmax", "opencl:cpu", cache=cache)
    assert m2.source == "ir" and cache.stats()["hits"] >= 1


def test_identical_blobs_are_stored_once(tmp_path):
    nb = kernbin.build(SAMPLES["vadd"].spv, "opencl:cpu")
    ir = nb.ir
    path = write_bundle(tmp_path / "d.kbin", {"a": {"ir": ir, "natives": [nb.without_ir()]},
                                              "b": {"ir": ir, "natives": [nb.without_ir()]}})
    c = container.Container.parse(open(path, "rb").read(), magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,))
    assert c.names == ("b0", "b1")
    with kernbin.open_bundle(path) as b:
        assert b.entries("a")[0].blob == b.entries("b")[0].blob


def _repack(path, out, mutate):
    c = container.Container.parse(open(path, "rb").read(), magic=BUNDLE_MAGIC, versions=(BUNDLE_VERSION,))
    meta = json.loads(c.meta_raw)
    mutate(meta)
    sections = [(n, c.section(n)) for n in c.names]
    open(out, "wb").write(container.pack(BUNDLE_MAGIC, BUNDLE_VERSION, meta, sections, align=64))
    return out


@pytest.mark.parametrize("mutate, rule", [
    (lambda m: m["kernels"].update({"../evil": m["kernels"]["vadd"]}), "name"),
    (lambda m: m["kernels"]["vadd"]["entries"][0].update(blob="b999"), "blob"),
    (lambda m: m["kernels"]["vadd"]["entries"][0].update(blob="signature"), "blob"),
    (lambda m: m.update(kbundle=2), "manifest"),
    (lambda m: m["kernels"]["vadd"].update(ir_kind="llvm"), "manifest"),
    (lambda m: m.update(extra=1), "manifest"),
])
def test_manifest_rules(made, tmp_path, mutate, rule):
    """Names and the manifest's shape are checked at open; a kernel's entry when it is first used."""
    bad = _repack(made["path"], tmp_path / "x.kbin", mutate)
    with pytest.raises(BundleError) as e:
        with kernbin.open_bundle(bad) as b:
            for name in b.names:
                b.entries(name)
    assert e.value.rule == rule


def test_an_entry_build_info_is_checked_when_first_used(made, tmp_path):
    bad = _repack(made["path"], tmp_path / "y.kbin",
                  lambda m: m["kernels"]["vadd"]["entries"][0]["info"].update(flags="-O2"))
    with kernbin.open_bundle(bad) as b:
        assert b.load("softmax", "opencl:cpu").source == "native"     # other kernels are unaffected
        entry = b.entries("vadd")[0]       # the gate's fields are fine: the rest is checked when used
        with pytest.raises(BundleError) as e:
            entry.info
        assert e.value.rule == "build-info"
        with pytest.raises(kernbin.InvalidBinary) as e:     # the OpenCL load passes the flags on
            b.load("vadd", "opencl:cpu", fallback=False)
        assert e.value.rule == "build-info"


def test_signatures(made, tmp_path):
    pub = signing.load_public_key(made["pub"])
    with kernbin.open_bundle(made["path"], trusted_keys=[pub]) as b:
        assert b.signed_by == signing.key_id(pub)
    other_priv, other_pub = signing.generate_key(str(tmp_path / "other"))
    with pytest.raises(signing.SignatureError) as e:
        kernbin.open_bundle(made["path"], trusted_keys=[signing.load_public_key(other_pub)])
    assert e.value.rule == "untrusted-key"
    # a re-packed manifest (digests all honest again) keeps the old signature section: it no longer matches
    forged = _repack(made["path"], tmp_path / "f.kbin", lambda m: m["kernels"]["vadd"].update(ir=None))
    with pytest.raises(signing.SignatureError) as e:
        kernbin.open_bundle(forged, trusted_keys=[pub])
    assert e.value.rule == "bad-signature"
    kernbin.open_bundle(forged).close()                 # no trust asked: it opens (checksums only)
    unsigned = write_bundle(tmp_path / "u.kbin", kernbin.bundle.read_all(made["path"]))
    with pytest.raises(signing.SignatureError) as e:
        kernbin.open_bundle(unsigned, trusted_keys=[pub])
    assert e.value.rule == "unsigned"
    p = run_cli("check", str(unsigned), "-t", "opencl:cpu", "--json", env={"KERNBIN_TRUSTED_KEYS": made["pub"]})
    assert p.returncode == 2 and json.loads(p.stdout)["rule"] == "unsigned"


def test_signed_knb_and_trust_policy(tmp_path):
    priv, pub = signing.generate_key(str(tmp_path / "k"))
    out = tmp_path / "v.knb"
    assert run_cli("build", SAMPLES["vadd"].spv, "-o", str(out), "--sign", priv, "--no-cache").returncode == 0
    res = json.loads(run_cli("check", str(out), "--key", pub, "--json").stdout)
    assert res["verdict"] == "native" and res["ok"]
    plain = tmp_path / "p.knb"
    kernbin.build(SAMPLES["vadd"].spv, "opencl:cpu").save(plain)
    p = run_cli("check", str(plain), "--json", env={"KERNBIN_TRUSTED_KEYS": pub})
    res = json.loads(p.stdout)
    assert p.returncode == 2 and res["verdict"] == "gate" and res["rule"] == "unsigned"
    # load() refuses the untrusted file and does not rebuild from IR it carries ...
    with pytest.raises(signing.SignatureError):
        kernbin.load(str(plain), "opencl:cpu", trusted_keys=[signing.load_public_key(pub)])
    # ... but may rebuild from IR the caller vouches for
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = kernbin.load(str(plain), "opencl:cpu", trusted_keys=[signing.load_public_key(pub)],
                         ir=SAMPLES["vadd"].spv)
    assert m.rebuilt and "untrusted" in m.fallback_reason and _run(m, "vadd")


def test_cli_create_add_inspect_verify(made, tmp_path):
    path = tmp_path / "cli.kbin"
    p = run_cli("bundle", "create", str(path), "-t", "opencl:cpu", SAMPLES["vadd"].spv, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kernels"] == {"vadd": {"opencl:cpu": True}} or \
        list(json.loads(p.stdout)["kernels"]) == ["vadd"]
    p = run_cli("bundle", "add", str(path), "-t", "opencl:cpu", SAMPLES["reduce"].spv)
    assert p.returncode == 0, p.stderr
    info = json.loads(run_cli("bundle", "inspect", str(path), "--json").stdout)
    assert list(info["kernels"]) == ["reduce", "vadd"] and info["signature"] is None
    assert info["kernels"]["reduce"]["entries"][0]["kernels"][0]["name"] == "reduce_sum"
    assert run_cli("bundle", "verify", str(path)).returncode == 0
    p = run_cli("bundle", "verify", str(path), "--key", made["pub"], "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["rule"] == "unsigned"
    p = run_cli("check", str(path), "-t", "opencl:cpu", "--json")
    res = json.loads(p.stdout)
    assert p.returncode == 0 and res["ok"] and res["kernels"]["reduce"]["verdict"] == "native"


def test_level_zero_impersonated_pvc_takes_the_pvc_entry(made):
    if not ZE_DRIVER or len(made["targets"]) == 1:
        pytest.skip("needs the Level Zero test driver and ocloc")
    code = f"""
import json, warnings, numpy as np, kernbin
from kernbin.samples import SAMPLES
b = kernbin.open_bundle({made['path']!r})
dev = kernbin.open_device("level-zero:0")
entry, reasons = b.select("vadd", dev)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    m = b.load("vadd", dev)
L = SAMPLES["vadd"].setup(np.random.default_rng())
m.kernel("vadd").launch(L.global_size, L.local_size, *L.args)
print(json.dumps({{"entry": entry.target, "source": m.source, "correct": L.correct(), "reason": m.fallback_reason}}))
"""
    env = dict(os.environ, KBZE_DEVICE_IP=hex((12 << 22) | (60 << 14) | 7))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    # the gate picks the pvc zebin; the (CPU) test driver refuses it; the IR rebuild runs correctly
    assert out["entry"] == "ocloc:pvc" and out["source"] == "ir" and out["correct"]
    assert "INVALID_NATIVE_BINARY" in out["reason"]


def test_cuda_offline_entries_and_ptx_ir(tmp_path):
    pytest.importorskip("cuda.bindings.nvjitlink")
    path = tmp_path / "cuda.kbin"
    kernbin.create_bundle(path, [SAMPLES["softmax"].ptx, SAMPLES["vadd"].ptx], ["cuda:sm_80", "cuda:sm_90",
                                                                                "cuda:sm_80,sm_90,ptx"])
    with kernbin.open_bundle(path) as b:
        assert b.names == ("softmax", "vadd") and b.ir("vadd").kind == "ptx"
        assert b.targets() == ("cuda:sm_80", "cuda:sm_90", "cuda:sm_80,sm_90,ptx")
        assert [e.info.binary_format for e in b.entries("vadd")] == ["cubin", "cubin", "fatbin"]
        assert b.entries("vadd")[1].info.requires.get("sm") == 90
        # on a CPU device nothing fits and PTX cannot be built there: a clear error, not a BuildError
        with pytest.raises(kernbin.IncompatibleBinary) as e:
            b.load("vadd", "opencl:cpu")
        assert e.value.rule == "no-entry" and "ptx" in e.value.reason and "cuda:sm_90" in e.value.reason


from hypothesis import given, settings, strategies as st  # noqa: E402

_SMALL = None


def _small_bundle():
    global _SMALL
    if _SMALL is None:
        import tempfile
        nb = kernbin.NativeBinary.from_bytes(kernbin.build(SAMPLES["vadd"].spv, "opencl:cpu").to_bytes())
        d = tempfile.mkdtemp(prefix="kernbin-bundle-fuzz-")
        priv, _ = signing.generate_key(os.path.join(d, "k"))
        path = write_bundle(os.path.join(d, "s.kbin"), {"vadd": {"ir": nb.ir, "natives": [nb.without_ir()]},
                                                         "v2": {"ir": nb.ir, "natives": [nb.without_ir()]}},
                            sign_key=priv)
        _SMALL = open(path, "rb").read()
    return _SMALL


def _read_everything(path):
    with kernbin.open_bundle(path) as b:
        for name in b.names:
            for e in b.entries(name):
                b.native(e)
        b.verify()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_hostile_bundles_only_raise_kernbin_errors(tmp_path_factory, data):
    try:
        kernbin.open_device("opencl:cpu")
    except kernbin.KernbinError:
        pytest.skip("no OpenCL CPU device to make the seed")
    b = bytearray(_small_bundle())
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "length"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        b = b[:data.draw(st.integers(0, len(b) - 1))]
    elif how == "extend":
        b += data.draw(st.binary(min_size=1, max_size=200))
    else:                                   # absurd header lengths
        b[12:16] = data.draw(st.sampled_from([0, 1, 0xFFFFFFFF, len(b), 1 << 31])).to_bytes(4, "little")
    path = tmp_path_factory.mktemp("fz") / "x.kbin"
    path.write_bytes(bytes(b))
    try:
        _read_everything(path)
    except kernbin.KernbinError:
        pass
