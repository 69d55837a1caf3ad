"""The lean load path: the CUDA backend over an emulated driver (tools/cuda_emu.py: no GPU needed), many
kernels from a bundle in one pass (load_many) on the real CPU OpenCL runtime, an open bundle whose file
is truncated, and the trust rules of the fallback (#20 items 1, 2, 5, 8)."""
import os
import sys
import warnings
from dataclasses import replace

import pytest

import kernbin
from kernbin.artifact import KernelInfo, NativeBinary
from kernbin.bundle import write_bundle
from kernbin.samples import SAMPLES

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import cuda_emu  # noqa: E402


# -- CUDA over the emulated driver --------------------------------------------------------------

@pytest.fixture(scope="module")
def cubins():
    """One offline cubin for sm_90 and one for sm_80 (nvJitLink, no GPU), as NativeBinary."""
    try:
        sm90 = kernbin.build(SAMPLES["vadd"].ptx, "cuda:sm_90")
        sm80 = kernbin.build(SAMPLES["vadd"].ptx, "cuda:sm_80")
    except kernbin.RuntimeNotFound as e:
        pytest.skip(f"no offline CUDA toolchain: {e}")
    return {"sm_90": sm90, "sm_80": sm80}


@pytest.fixture
def emu():
    drv = cuda_emu.install(cost_us=0, sm=90)
    yield drv
    cuda_emu.uninstall()


def _renamed(nb: NativeBinary, name: str) -> NativeBinary:
    """The same cubin under another kernel name (same length: the ELF's offsets do not move)."""
    old = nb.kernel_names[0]
    assert len(name) == len(old)
    return NativeBinary(nb.binary.replace(old.encode(), name.encode()),
                        replace(nb.info, kernels=(KernelInfo(name, {}),), ir_sha256=name.encode().hex().ljust(64, "0")))


def test_a_knb_loads_on_the_emulated_driver_without_building_the_build_info(cubins, emu, tmp_path):
    path = tmp_path / "v.knb"
    cubins["sm_90"].without_ir().save(path)
    module = kernbin.load(str(path), "cuda:0", fallback=False)
    assert module.source == "native" and emu.loads == 1
    assert module.kernel("vadd").handle is not None
    assert "_info" in module.native.__dict__ and type(module.native.__dict__["_info"]).__name__ == "_PendingInfo"
    assert module.native.info.target == "cuda:sm_90"       # built on first use, from the same header
    with pytest.raises(kernbin.KernelNotFound):
        module.kernel("nope")


def test_the_gate_refuses_another_sm_before_the_driver_sees_the_bytes(cubins, emu, tmp_path):
    path = tmp_path / "v80.knb"
    cubins["sm_80"].without_ir().save(path)
    with pytest.raises(kernbin.IncompatibleBinary) as e:
        kernbin.load(str(path), "cuda:0", fallback=False)
    assert e.value.rule == "sm" and emu.loads == 0


def test_load_many_makes_every_kernel_ready_with_one_load_each(cubins, emu, tmp_path):
    names = [f"vad{i}" for i in range(8)]       # 'vadd' renamed, same length
    natives = {n: _renamed(cubins["sm_90"], n) for n in names}
    path = tmp_path / "many.kbin"
    write_bundle(path, {n: {"ir": None, "natives": [nb.without_ir()]} for n, nb in natives.items()})
    with kernbin.open_bundle(path) as b:
        got = b.load_many(None, "cuda:0", fallback=False)
        assert list(got) == sorted(names) and emu.loads == len(names)
        for n, m in got.items():
            assert m.kernel(n).handle is not None
            assert m.bundle_choice["entry"] == "cuda:sm_90" and m.bundle_choice["source"] == "native"
            assert m.native.binary == natives[n].binary


def test_load_many_a_damaged_blob_fails_that_kernel_only(cubins, emu, tmp_path):
    names = ["vad0", "vad1", "vad2"]
    path = tmp_path / "d.kbin"
    write_bundle(path, {n: {"ir": None, "natives": [_renamed(cubins["sm_90"], n).without_ir()]} for n in names})
    data = bytearray(path.read_bytes())
    at = data.index(_renamed(cubins["sm_90"], "vad1").binary) + 100
    data[at] ^= 0xFF                            # one byte of vad1's cubin
    path.write_bytes(bytes(data))
    with kernbin.open_bundle(path) as b:
        with pytest.raises(kernbin.InvalidBinary) as e:
            b.load_many(None, "cuda:0", fallback=False)
        assert e.value.rule == "section-digest"
        assert emu.loads == 0                   # every digest is checked before the first driver call
    with kernbin.open_bundle(path) as b:
        with pytest.raises(kernbin.IncompatibleBinary) as e:    # no IR to rebuild from: says so
            b.load_many(None, "cuda:0")
        assert e.value.rule == "no-entry"


# -- load_many on the real CPU OpenCL runtime ------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory):
    try:
        kernbin.open_device("opencl:cpu")
    except kernbin.KernbinError as e:
        pytest.skip(f"no OpenCL CPU device: {e}")
    from kernbin import signing
    d = tmp_path_factory.mktemp("many")
    priv, pub = signing.generate_key(str(d / "key"))
    path = str(d / "s.kbin")
    names = ["vadd", "softmax", "matmul", "reduce"]
    kernbin.create_bundle(path, [SAMPLES[n].spv for n in names], ["opencl:cpu"])
    return {"dir": d, "path": path, "names": names, "priv": priv, "pub": pub}


def _check(module, name, rng):
    s = SAMPLES[name]
    launch = s.setup(rng)
    module.kernel(s.kernel).launch(launch.global_size, launch.local_size, *launch.args)
    assert launch.correct()


def test_load_many_kernels_compute_what_numpy_computes(cpu_bundle, rng):
    with kernbin.open_bundle(cpu_bundle["path"]) as b:
        got = b.load_many(None, "opencl:cpu")
        assert sorted(got) == sorted(cpu_bundle["names"])
        for name, module in got.items():
            assert module.source == "native"
            _check(module, name, rng)


def test_load_many_a_damaged_blob_is_rebuilt_from_the_ir_the_others_load(cpu_bundle, tmp_path, rng):
    path = tmp_path / "bad.kbin"
    data = bytearray(open(cpu_bundle["path"], "rb").read())
    with kernbin.open_bundle(cpu_bundle["path"]) as b:
        blob = b.entries("vadd")[0].blob
        native = b.native(b.entries("vadd")[0], with_ir=False).binary
    at = data.index(native) + len(native) // 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with kernbin.open_bundle(path) as b:
            got = b.load_many(None, "opencl:cpu")
    assert got["vadd"].source == "ir" and blob and "digest" in got["vadd"].fallback_reason
    assert any(issubclass(x.category, kernbin.FallbackWarning) for x in w)
    assert all(got[n].source == "native" for n in cpu_bundle["names"] if n != "vadd")
    for name, module in got.items():
        _check(module, name, rng)


# -- #20 item 5: an open bundle whose file is truncated or replaced ---------------------------------

@pytest.mark.parametrize("whole", [True, False], ids=["read-whole", "pread"])
def test_an_open_bundle_survives_its_file_being_truncated(cpu_bundle, tmp_path, monkeypatch, whole, rng):
    from kernbin import bundle as bundle_mod
    if not whole:
        monkeypatch.setattr(bundle_mod, "READ_WHOLE", 0)        # large-bundle path: blobs read by pread
    path = tmp_path / "t.kbin"
    path.write_bytes(open(cpu_bundle["path"], "rb").read())
    b = kernbin.open_bundle(path)
    with open(path, "r+b") as f:                                 # `cp new path` truncates in place
        f.truncate(200)
    if whole:
        _check(b.load("vadd", "opencl:cpu", fallback=False), "vadd", rng)   # its own view
    else:
        with pytest.raises(kernbin.InvalidBinary) as e:
            b.load("vadd", "opencl:cpu", fallback=False)
        assert e.value.rule == "truncated"
    b.close()


# -- #20 item 1: bundle add --sign checks what it extends --------------------------------------------

def test_bundle_add_with_sign_refuses_unsigned_content(cpu_bundle, tmp_path):
    from kernbin import signing
    path = str(tmp_path / "u.kbin")
    kernbin.create_bundle(path, [SAMPLES["vadd"].spv], ["opencl:cpu"])          # unsigned
    with pytest.raises(kernbin.signing.SignatureError) as e:
        kernbin.create_bundle(path, [SAMPLES["softmax"].spv], ["opencl:cpu"], sign_key=cpu_bundle["priv"],
                              add_to=path)
    assert e.value.reason
    with kernbin.open_bundle(path) as b:
        assert b.names == ("vadd",) and b.signed_by is None                       # left as it was
    kernbin.create_bundle(path, [SAMPLES["softmax"].spv], ["opencl:cpu"], sign_key=cpu_bundle["priv"],
                          add_to=path, trust_existing=True)                       # vouched for explicitly
    with kernbin.open_bundle(path, trusted_keys=[signing.load_public_key(cpu_bundle["pub"])]) as b:
        assert b.names == ("softmax", "vadd")


def test_bundle_add_with_sign_refuses_a_foreign_signature_but_extends_its_own(cpu_bundle, tmp_path):
    from kernbin import signing
    other_priv, _ = signing.generate_key(str(tmp_path / "other"))
    path = str(tmp_path / "f.kbin")
    kernbin.create_bundle(path, [SAMPLES["vadd"].spv], ["opencl:cpu"], sign_key=other_priv)
    with pytest.raises(kernbin.signing.SignatureError):
        kernbin.create_bundle(path, [SAMPLES["softmax"].spv], ["opencl:cpu"], sign_key=cpu_bundle["priv"],
                              add_to=path)
    mine = str(tmp_path / "m.kbin")
    kernbin.create_bundle(mine, [SAMPLES["vadd"].spv], ["opencl:cpu"], sign_key=cpu_bundle["priv"])
    kernbin.create_bundle(mine, [SAMPLES["softmax"].spv], ["opencl:cpu"], sign_key=cpu_bundle["priv"], add_to=mine)
    with kernbin.open_bundle(mine, trusted_keys=[signing.load_public_key(cpu_bundle["pub"])]) as b:
        assert b.names == ("softmax", "vadd")


def test_bundle_add_with_sign_refuses_an_edited_unsigned_bundle_from_the_cli(cpu_bundle, tmp_path):
    from conftest import run_cli
    path = str(tmp_path / "e.kbin")
    kernbin.create_bundle(path, [SAMPLES["vadd"].spv], ["opencl:cpu"])
    p = run_cli("bundle", "add", path, SAMPLES["softmax"].spv, "-t", "opencl:cpu", "--sign", cpu_bundle["priv"])
    assert p.returncode != 0
    with kernbin.open_bundle(path) as b:
        assert b.signed_by is None


# -- #20 items 2 and 8: the fallback's cache under trust, and entries the device refuses --------------

def _ocloc_only_bundle(cpu_bundle, tmp_path, sign):
    """A bundle whose only native entry cannot run on the CPU: its kernel must be rebuilt from the IR."""
    from kernbin.bundle import read_all
    kernels = read_all(cpu_bundle["path"])
    vadd = kernels["vadd"]
    fake = replace(vadd["natives"][0], info=replace(vadd["natives"][0].info, target="opencl:other",
                   requires=kernbin.Requirements("opencl-runtime", {"platform": "elsewhere"})))
    path = str(tmp_path / "o.kbin")
    write_bundle(path, {"vadd": {"ir": vadd["ir"], "natives": [fake]}},
                 sign_key=cpu_bundle["priv"] if sign else None)
    return path


def test_under_trust_the_fallback_reads_no_cache_entry(cpu_bundle, tmp_path, monkeypatch, rng):
    from kernbin import signing
    monkeypatch.setenv("KERNBIN_CACHE_DIR", str(tmp_path / "cache"))
    path = _ocloc_only_bundle(cpu_bundle, tmp_path, sign=True)
    cache = kernbin.default_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kernbin.FallbackWarning)
        with kernbin.open_bundle(path) as b:                            # untrusted: through the cache
            assert b.load("vadd", "opencl:cpu").source == "ir"
        hits = cache.stats()["hits"]
        with kernbin.open_bundle(path) as b:
            b.load("vadd", "opencl:cpu")
        assert cache.stats()["hits"] == hits + 1                          # (the cache is used...)
        with kernbin.open_bundle(path, trusted_keys=[signing.load_public_key(cpu_bundle["pub"])]) as b:
            m = b.load("vadd", "opencl:cpu")
        assert cache.stats()["hits"] == hits + 1                          # (...but not under trust)
    assert m.source == "ir"
    _check(m, "vadd", rng)


def test_a_cache_entry_the_device_refuses_is_evicted_and_rebuilt(cpu_bundle, tmp_path, monkeypatch, rng):
    monkeypatch.setenv("KERNBIN_CACHE_DIR", str(tmp_path / "cache"))
    path = _ocloc_only_bundle(cpu_bundle, tmp_path, sign=False)
    cache = kernbin.default_cache()
    from kernbin.cache import cache_key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kernbin.FallbackWarning)
        with kernbin.open_bundle(path) as b:
            good = b.load("vadd", "opencl:cpu")
            ir = b.ir("vadd")
        device = kernbin.open_device("opencl:cpu")
        options = good.native.info.options
        key = cache_key(ir.sha256, device.toolchain, device.id.fingerprint, options)
        resealed = NativeBinary(b"\x7fELF" + bytes(200), good.native.info)     # intact digests, bad code
        cache.put(key, resealed)
        corrupt = cache.stats()["corrupt"]
        with kernbin.open_bundle(path) as b:
            m = b.load("vadd", "opencl:cpu")
    assert cache.stats()["corrupt"] == corrupt + 1
    assert cache.get(key).binary == m.native.binary != resealed.binary   # the rebuild replaced it
    _check(m, "vadd", rng)


# -- found by a hostile review of the lean load path ---------------------------------------------------

def test_load_many_after_an_entry_was_described(cpu_bundle, rng):
    with kernbin.open_bundle(cpu_bundle["path"]) as b:
        b.describe()                                   # builds every entry's whole build info
        got = b.load_many(None, "opencl:cpu")
    for name, module in got.items():
        _check(module, name, rng)


def test_under_keys_an_unverified_bundle_loads_nothing(cpu_bundle, tmp_path):
    from kernbin import signing
    from kernbin.loader import check_entry
    path = str(tmp_path / "u.kbin")
    kernbin.create_bundle(path, [SAMPLES["vadd"].spv], ["opencl:cpu"])          # unsigned
    keys = [signing.load_public_key(cpu_bundle["pub"])]
    with kernbin.open_bundle(path, trusted_keys=keys, require_signature=False) as b:
        assert b.signed_by is None
        for load in (lambda: b.load_many(None, "opencl:cpu"), lambda: b.load("vadd", "opencl:cpu")):
            with pytest.raises(signing.SignatureError) as e:
                load()
            assert e.value.rule == "unsigned"
        verdict = check_entry(b, b.entries("vadd")[0], "opencl:cpu", isolate=False)
        assert verdict["verdict"] == "gate" and verdict["rule"] == "unsigned"


def test_a_cuda_device_subclass_is_gated_as_a_live_device(cubins, emu):
    from kernbin.backends.cuda import CudaDevice
    dev = kernbin.open_device("cuda:0")

    class Standin(CudaDevice):
        def __init__(self, real):
            self.__dict__.update({k: v for k, v in real.__dict__.items() if k != "_verdicts"})

    fit = dev.backend.can_run(cubins["sm_90"], Standin(dev))
    assert fit.ok and fit.rule != "offline"
