"""The ICD vendors folder kernbin points the OpenCL loader at holds only what kernbin wrote.

Each check runs kernbin in a fresh process (the wiring happens once per process, and the
loader reads ``OCL_ICD_VENDORS`` at its first call) with a fresh cache directory.
"""
import json
import os
import stat

import pytest

from conftest import run_py

WIRE = """
import json, os, sys
os.environ.pop("OCL_ICD_VENDORS", None)
from kernbin.backends import _icd
if sys.argv[1] != "real":                      # a stand-in library path: no runtime needed
    _icd._find_intel_cpu_runtime = lambda: sys.argv[1]
lib = _icd._find_intel_cpu_runtime()
vendors = _icd.wire_intel_cpu_runtime()
assert os.environ["OCL_ICD_VENDORS"] == vendors
files = {n: open(os.path.join(vendors, n), "rb").read().decode() for n in os.listdir(vendors)}
st = os.lstat(vendors)
print(json.dumps({"vendors": vendors, "files": files, "uid": st.st_uid, "mode": st.st_mode,
                  "wanted": {k: v.decode() for k, v in _icd._wanted_icds(lib).items()}}))
"""


def _has_real_runtime() -> bool:
    from kernbin.backends._icd import _find_intel_cpu_runtime
    return _find_intel_cpu_runtime() is not None


def wire(cache_dir, lib, **env) -> dict:
    p = run_py(f"import sys; sys.argv[1:] = [{lib!r}]\n" + WIRE,
               env={"KERNBIN_CACHE_DIR": str(cache_dir), **env})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def assert_only_kernbins(out: dict) -> None:
    assert out["files"] == out["wanted"]                 # the same names, the same bytes, nothing more
    assert "kernbin-intel-cpu.icd" in out["files"]
    assert out["uid"] == os.geteuid() and stat.S_ISDIR(out["mode"])
    assert stat.S_IMODE(out["mode"]) & 0o077 == 0        # private: 0700


LIBS = ["real", "/opt/stand-in/libintelocl.so"]


@pytest.fixture(params=LIBS)
def lib(request):
    if request.param == "real" and not _has_real_runtime():
        pytest.skip("intel-opencl-rt is not installed (pip install 'kernbin[cpu]')")
    return request.param


def test_published_folder_is_reused(tmp_path, lib):
    cache = tmp_path / "first-run" / "cache"              # not created yet
    first, again = wire(cache, lib), wire(cache, lib)
    assert_only_kernbins(first)
    assert again["vendors"] == first["vendors"] and os.path.dirname(first["vendors"]) == str(cache / "icd")


@pytest.mark.parametrize("tamper", ["extra-icd", "changed-icd", "symlinked-icd", "group-writable",
                                    "folder-is-symlink", "file-of-another-user"])
def test_tampered_folder_is_never_used(tmp_path, lib, tamper):
    first = wire(tmp_path, lib)
    vendors = first["vendors"]
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    (evil_dir / "evil.icd").write_text("/tmp/evil/libevil.so\n")
    if tamper == "extra-icd":
        with open(os.path.join(vendors, "evil.icd"), "w") as f:
            f.write("/tmp/evil/libevil.so\n")
    elif tamper == "changed-icd":
        with open(os.path.join(vendors, "kernbin-intel-cpu.icd"), "w") as f:
            f.write("/tmp/evil/libevil.so\n")
    elif tamper == "symlinked-icd":
        target = os.path.join(vendors, "kernbin-intel-cpu.icd")
        (evil_dir / "same.icd").write_bytes(open(target, "rb").read())      # even with the right bytes
        os.unlink(target)
        os.symlink(evil_dir / "same.icd", target)
    elif tamper == "group-writable":
        os.chmod(vendors, 0o770)
    elif tamper == "folder-is-symlink":
        import shutil
        for name, text in first["files"].items():
            (evil_dir / name).write_text(text)
        shutil.rmtree(vendors)
        os.symlink(evil_dir, vendors)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        os.chown(os.path.join(vendors, "kernbin-intel-cpu.icd"), 65534, 65534)
    out = wire(tmp_path, lib)
    assert_only_kernbins(out)
    assert "evil.icd" not in out["files"]
    assert os.path.realpath(out["vendors"]) == out["vendors"]            # not through a symlink
    assert (evil_dir / "evil.icd").read_text() == "/tmp/evil/libevil.so\n"   # nothing outside touched
    assert_only_kernbins(wire(tmp_path, lib))                              # and it stays clean


def test_cache_dir_writable_by_others_keeps_the_folder_out_of_it(tmp_path):
    cache, tmp = tmp_path / "shared", tmp_path / "tmp"
    cache.mkdir()
    tmp.mkdir()
    os.chmod(cache, 0o777)
    out = wire(cache, LIBS[1], TMPDIR=str(tmp))
    assert_only_kernbins(out)
    assert not out["vendors"].startswith(str(cache) + os.sep)
    assert out["vendors"].startswith(str(tmp) + os.sep)


LOAD = """
import json, os
os.environ.pop("OCL_ICD_VENDORS", None)
import kernbin
dev = kernbin.open_device("opencl:cpu")
vendors = os.environ["OCL_ICD_VENDORS"]
print(json.dumps({"vendors": vendors, "names": sorted(os.listdir(vendors)), "device": dev.id.describe()}))
"""


def test_runtime_still_loads_from_the_rebuilt_folder(tmp_path):
    """The real loader, in a fresh process, after an extra .icd was planted: the CPU device opens
    and the folder it was given holds no planted file."""
    if not _has_real_runtime():
        pytest.skip("intel-opencl-rt is not installed (pip install 'kernbin[cpu]')")
    first = wire(tmp_path, "real")
    with open(os.path.join(first["vendors"], "evil.icd"), "w") as f:
        f.write(os.path.join(str(tmp_path), "libevil.so") + "\n")
    p = run_py(LOAD, env={"KERNBIN_CACHE_DIR": str(tmp_path)})
    if p.returncode != 0 and "no OpenCL" in p.stderr:
        pytest.skip(f"no OpenCL CPU device: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["names"] == sorted(first["wanted"]) and "evil.icd" not in out["names"]
