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
from remote_servers import HMAC_KEY, REDIS_PREFIX, LoopbackServer, nginx_server, redis_server  # noqa: F401 (fixtures)

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


def test_cli_bench_refuses_a_fifo_plot_before_running(tmp_path):
    path, is_kind = _special(tmp_path, "fifo")
    p = subprocess.run([sys.executable, "-m", "kernbin", "bench", "--repeat", "1", "--kernels", "vadd", "--plot",
                        path], capture_output=True, text=True, cwd=ROOT, timeout=60)
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


# -- item 9: remote values in bounded memory ---------------------------------------------------------

_VALUE = 48 << 20


def _peak_of_get(store, key) -> tuple[int, int]:
    """(bytes of the .knb read, tracemalloc's peak while get + unwrap ran)."""
    import gc
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        value, status = store.get(key)
        data = store.unwrap(key, value)
        n = len(data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert status == "ok"
    return n, peak


def test_a_large_http_value_takes_about_its_size(nginx_server):
    from kernbin.cache.http import HttpStore
    url, _, www = nginx_server
    store = HttpStore(url, HMAC_KEY, timeout=30)
    payload = os.urandom(_VALUE)
    (www / KEY).write_bytes(store.wrap(KEY, payload))          # written behind nginx (its PUT limit is 64 MiB)
    del payload
    n, peak = _peak_of_get(store, KEY)
    assert n == _VALUE and peak <= 1.2 * _VALUE, f"peak {peak / 2**20:.1f} MiB for a {_VALUE >> 20} MiB value"


def test_a_large_redis_value_takes_about_its_size(redis_server):
    from kernbin.cache.redis import RedisStore
    url, _, client = redis_server
    store = RedisStore(url, HMAC_KEY, deadline=30)
    payload = os.urandom(_VALUE)
    client.set(REDIS_PREFIX + KEY, store.wrap(KEY, payload))
    del payload
    n, peak = _peak_of_get(store, KEY)
    assert n == _VALUE and peak <= 1.2 * _VALUE, f"peak {peak / 2**20:.1f} MiB for a {_VALUE >> 20} MiB value"
    client.set(REDIS_PREFIX + KEY, b"x" * ((1 << 20) + 5))     # a value that changes shape: still one buffer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, status = store.get(KEY)
    assert status == "ok" and bytes(value) == b"x" * ((1 << 20) + 5)
    with pytest.raises(kernbin.KernbinError) as e:
        store.unwrap(KEY, value)
    assert e.value.rule == "format" and not caught


class _EndlessChunked:
    """An HTTP server answering every GET with 200 and an endless chunked body."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/c"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % (1 << 16) + b"k" * (1 << 16) + b"\r\n"
            try:
                while not self.stop.is_set():
                    conn.sendall(chunk)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


def test_an_endless_chunked_body_stops_at_the_bound(tmp_path):
    from kernbin.cache.http import HttpStore
    server = _EndlessChunked()
    bound = 32 << 20
    store = HttpStore(server.url, HMAC_KEY, timeout=30, max_entry_size=bound)
    tracemalloc.start()
    try:
        with pytest.raises(kernbin.KernbinError) as e:
            store.get(KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.close()
    assert e.value.rule == "oversized"
    assert peak <= 1.2 * bound, f"peak {peak / 2**20:.1f} MiB for a {bound >> 20} MiB bound"


# -- item 10: a remote's error text is escaped and cut ------------------------------------------------

_HOSTILE = ("\x1b[2J\x1b[31mPWNED\x1b]0;title\x07" * 6000)[:200_000]


class _ErrRedis(LoopbackServer):
    """A RESP server answering every command with one 200 KB error full of terminal escapes."""

    def _one(self, conn):
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(b"-ERR " + _HOSTILE.encode() + b"\r\n")
            except OSError:
                pass


def test_a_hostile_redis_error_text_is_escaped_and_cut():
    from kernbin.cache.redis import RedisStore
    from kernbin.cache.remote import MAX_REMOTE_TEXT, RemoteUnavailableWarning
    server = _ErrRedis()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert RedisStore(server.url, HMAC_KEY).get(KEY) == (None, "failed")
    finally:
        server.close()
    [w] = [w.message for w in caught if isinstance(w.message, RemoteUnavailableWarning)]
    text = str(w)
    assert text.isprintable() and "\x1b" not in text and len(w.detail) <= MAX_REMOTE_TEXT + 40
    assert len(text) < 600


def test_the_cli_prints_no_raw_remote_error(tmp_path):
    server = _ErrRedis()
    try:
        p = run_cli("build", SAMPLES["vadd"].spv, "-o", str(tmp_path / "v.knb"),
                    env={"KERNBIN_REMOTE": server.url, "KERNBIN_CACHE_HMAC_KEY": "k",
                         "KERNBIN_CACHE_DIR": str(tmp_path / "cache")})
    finally:
        server.close()
    if "no OpenCL" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\x1b" not in p.stderr and len(p.stderr) < 2000


# -- item 11: launch metadata and CLI values bounded by what devices do -----------------------------------

_APP = [{"name": n, "type": "*i8", "size": 8, "appended": True} for n in ("global_scratch", "profile_scratch")]
_GOOD = {"format": 1, "kernel": "k", "num_warps": 4, "args": [{"name": "x", "type": "*fp32"}],
         "params": [{"name": "x", "type": "*fp32", "size": 8}] + _APP}


@pytest.mark.parametrize("change, field", [
    ({"num_warps": 64}, "num_warps"), ({"num_warps": 3}, "num_warps"), ({"num_warps": 48}, "num_warps"),
    ({"threads_per_warp": 33}, "threads_per_warp"), ({"threads_per_warp": 64, "num_warps": 32}, "num_warps"),
    ({"shared": 232449}, "shared"), ({"num_ctas": 17}, "num_ctas"),
    ({"cluster_dims": [4, 4, 2], "num_ctas": 16}, "cluster_dims"), ({"cluster_dims": [2, 1, 1], "num_ctas": 4},
                                                                    "cluster_dims")])
def test_launch_metadata_beyond_any_device_is_refused(change, field):
    from kernbin.triton import LaunchMeta, TritonMetaError
    with pytest.raises(TritonMetaError) as e:
        LaunchMeta.from_json({**_GOOD, **change})
    assert e.value.field == field


def test_launch_metadata_at_the_limits_is_accepted():
    from kernbin.triton import LaunchMeta
    m = LaunchMeta.from_json({**_GOOD, "num_warps": 32, "shared": 232448, "num_ctas": 16,
                              "cluster_dims": [16, 1, 1]})
    assert m.block == 1024 and m.shared == 232448 and m.num_ctas == 16


@pytest.mark.parametrize("argv", [["build", "x.spv", "-o", "x.knb", "-j", "0"],
                                  ["build", "x.spv", "-o", "x.knb", "-j", "-1"],
                                  ["bundle", "create", "o.kbin", "x.spv", "-t", "opencl:cpu", "-j", "0"],
                                  ["bundle", "add", "o.kbin", "x.spv", "-t", "opencl:cpu", "--jobs=-3"],
                                  ["triton", "compile", "k.py:k", "-s", "i32", "-t", "cuda:sm_90", "-o", "o.kbin",
                                   "-j", "0"],
                                  ["bench", "--repeat", "0"]])
def test_cli_counts_must_be_positive(argv, capsys):
    from kernbin.cli import build_parser
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("spec", ["opencl:cpu\n", "opencl:cpu\r", "opencl:\tcpu", "opencl:cpu\x00", "\nopencl:cpu"])
def test_a_target_with_control_characters_is_refused(spec):
    with pytest.raises(kernbin.TargetError) as e:
        kernbin.parse_target(spec)
    assert e.value.target == spec


def test_cli_refuses_a_target_with_a_newline(tmp_path):
    p = run_cli("build", SAMPLES["vadd"].spv, "-o", str(tmp_path / "x.knb"), "-t", "opencl:cpu\n")
    assert p.returncode == 1 and not (tmp_path / "x.knb").exists() and "Traceback" not in p.stderr
