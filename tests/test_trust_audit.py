"""Regression tests for the hostile audit of issue #20 ("Trust holds end to end"), items 3, 4, 6, 7,
9, 10 and 11: outputs write only regular files, inputs never block, trusted keys from the
environment hold for bundles, remote values are read in bounded memory and their error texts are
tamed, launch metadata and CLI values are bounded by what exists. Real files, real servers, the
real CPU runtime; nothing mocked."""
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import tracemalloc
import warnings

import pytest

import kernbin
from kernbin import signing
from kernbin._fs import FileRefused, atomic_write
from kernbin.samples import SAMPLES

from conftest import ROOT, run_cli
from remote_servers import HMAC_KEY, REDIS_PREFIX, nginx_server, redis_server  # noqa: F401 (fixtures)

KEY = "cd" * 32


# -- item 3: -o writes only regular files -------------------------------------------------------

def _special(tmp_path, kind):
    """A FIFO, a directory, a socket or a character device at a fresh path. The device is a private
    node (the null device's numbers) made in tmp_path when running as root; otherwise /dev/null,
    which a user cannot replace anyway. A real /dev node is never put at risk."""
    path = tmp_path / f"out-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(tmp_path)                      # AF_UNIX paths are short
        try:
            s.bind(path.name)
        finally:
            os.chdir(cwd)
            s.close()
    else:
        if os.geteuid() != 0:
            return "/dev/null", stat.S_ISCHR
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    return str(path), {"fifo": stat.S_ISFIFO, "directory": stat.S_ISDIR, "socket": stat.S_ISSOCK,
                       "device": stat.S_ISCHR}[kind]


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "device"])
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path, is_kind = _special(tmp_path, kind)
    with pytest.raises(FileRefused) as e:
        atomic_write(path, b"data")
    assert e.value.rule == "not-regular" and e.value.path == path
    assert is_kind(os.lstat(path).st_mode)                       # still what it was
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".tmp-")]


def test_atomic_write_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "link"
    os.symlink(target, link)
    atomic_write(link, b"new")
    assert not os.path.islink(link) and link.read_bytes() == b"new" and target.read_bytes() == b"keep"


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_cli_build_refuses_a_special_output_before_building(tmp_path, kind):
    path, is_kind = _special(tmp_path, kind)
    p = subprocess.run([sys.executable, "-m", "kernbin", "build", SAMPLES["vadd"].spv, "-o", path, "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("kernbin: error:") and len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr
    assert is_kind(os.lstat(path).st_mode)


def test_cli_bundle_create_refuses_a_fifo_output(tmp_path):
    path, is_kind = _special(tmp_path, "fifo")
    p = subprocess.run([sys.executable, "-m", "kernbin", "bundle", "create", path, SAMPLES["vadd"].spv,
                        "-t", "opencl:cpu"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and is_kind(os.lstat(path).st_mode)


# -- item 4: inputs are opened non-blocking -------------------------------------------------------

def test_check_of_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "in.knb"
    os.mkfifo(fifo)
    p = subprocess.run([sys.executable, "-m", "kernbin", "check", str(fifo), "--json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=30)         # it used to block in open() for ever
    res = json.loads(p.stdout)
    assert p.returncode == 2 and res["verdict"] == "gate" and res["rule"] == "not-regular"
    for args in (["inspect", str(fifo)], ["bundle", "verify", str(fifo)], ["bundle", "inspect", str(fifo)]):
        p = subprocess.run([sys.executable, "-m", "kernbin", *args], capture_output=True, text=True, cwd=ROOT,
                           timeout=30)
        assert p.returncode != 0 and "Traceback" not in p.stderr, args


# -- items 6 and 7: KERNBIN_TRUSTED_KEYS holds for bundles ------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A bundle of vadd for the CPU runtime, signed, and the same unsigned; the key pair and a second key."""
    d = tmp_path_factory.mktemp("trust")
    try:
        nb = kernbin.build(SAMPLES["vadd"].spv, "opencl:cpu")
    except kernbin.KernbinError as e:
        pytest.skip(f"no OpenCL CPU device: {e}")
    from kernbin.bundle import write_bundle
    priv, pub = signing.generate_key(str(d / "key"))
    _, other = signing.generate_key(str(d / "other"))
    kernels = {"vadd": {"ir": nb.ir, "natives": [nb.without_ir()]}}
    return {"signed": write_bundle(d / "s.kbin", kernels, sign_key=priv),
            "unsigned": write_bundle(d / "u.kbin", kernels), "pub": pub, "other": other,
            "kid": signing.key_id(signing.load_public_key(pub))}


def test_bundle_verify_with_env_keys_fails_an_unsigned_bundle(bundles):
    env = {"KERNBIN_TRUSTED_KEYS": bundles["pub"]}
    p = run_cli("bundle", "verify", bundles["unsigned"], "--json", env=env)
    out = json.loads(p.stdout)
    assert p.returncode == 2 and out["ok"] is False and out["rule"] == "unsigned"
    assert out["trusted_keys_from"] == "KERNBIN_TRUSTED_KEYS" and out["trusted_keys"] == [bundles["kid"]]
    p = run_cli("bundle", "verify", bundles["unsigned"], env=env)
    assert p.returncode == 2 and bundles["kid"] in p.stdout      # says which key it was checked against


def test_bundle_verify_with_env_keys_checks_a_signed_bundle(bundles):
    env = {"KERNBIN_TRUSTED_KEYS": bundles["pub"]}
    p = run_cli("bundle", "verify", bundles["signed"], "--json", env=env)
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["ok"] and out["trusted"] is True and out["signed_by"] == bundles["kid"]
    assert out["trusted_keys_from"] == "KERNBIN_TRUSTED_KEYS"
    p = run_cli("bundle", "verify", bundles["signed"], env=env)
    assert p.returncode == 0 and bundles["kid"] in p.stdout and "not checked" not in p.stdout
    p = run_cli("bundle", "verify", bundles["signed"], "--json", env={"KERNBIN_TRUSTED_KEYS": bundles["other"]})
    assert p.returncode == 2 and json.loads(p.stdout)["rule"] == "untrusted-key"
    p = run_cli("bundle", "verify", bundles["unsigned"], "--json", env={"KERNBIN_TRUSTED_KEYS": ""})
    assert p.returncode == 0 and json.loads(p.stdout)["trusted"] is False        # no keys: checksums only


@pytest.mark.parametrize("how", ["env", "env+key"])
def test_check_accepts_a_signed_bundle_with_env_keys(bundles, how):
    env = {"KERNBIN_TRUSTED_KEYS": bundles["pub"]}
    extra = ["--key", bundles["pub"]] if how == "env+key" else []
    p = run_cli("check", bundles["signed"], "-t", "opencl:cpu", "--json", *extra, env=env)
    out = json.loads(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert out["ok"] and out["kernels"]["vadd"]["verdict"] == "native" and out["signed_by"] == bundles["kid"]
    assert out["trusted_keys"] == [bundles["kid"]]
    assert out["trusted_keys_from"] == ("--key" if extra else "KERNBIN_TRUSTED_KEYS")
    p = run_cli("check", bundles["signed"], "-t", "opencl:cpu", "--in-process", *extra, env=env)
    assert p.returncode == 0 and bundles["kid"] in p.stdout
    p = run_cli("check", bundles["unsigned"], "-t", "opencl:cpu", "--json", env=env)
    assert p.returncode == 2 and json.loads(p.stdout)["rule"] == "unsigned"
