"""The native-binary cache: keys, the local store, single flight, crashes, eviction, Redis tier."""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

from kernbin import (BuildInfo, BuildOptions, DeviceId, KernbinError, KernbinWarning, KernelInfo, NativeBinary,
                     Requirements, SpirvModule, Toolchain)
from kernbin.cache import Cache, LocalStore, cache_key, key_for_info, parse_size
from kernbin.samples import SAMPLES

from conftest import ROOT, run_py

DEV = DeviceId("opencl", "Vendor", "Dev", "x86-64-v3", "1.0", "OpenCL 3.0")
TC = Toolchain("opencl", "Vendor OpenCL 3.0", "1.0", {"kernbin": "test"})
REQ = Requirements("opencl-runtime", {"device": "Dev", "driver": "1.0"})
IR = SpirvModule.from_file(SAMPLES["vadd"].spv)
O2 = BuildOptions.of("-O2")


def synthetic(tag: str = "a", size: int = 4096, options: str = "") -> tuple[str, NativeBinary]:
    """A well-formed native binary (no runtime needed) and its key."""
    opts = BuildOptions.of(options)
    info = BuildInfo(target="opencl:cpu", toolchain=TC, requires=REQ, ir_kind="spirv",
                     ir_sha256=f"{tag:0>64}"[-64:] if len(tag) < 64 else tag, options=opts, flags=opts.flags,
                     binary_format="opencl-cpu-elf", kernels=(KernelInfo("k"),), build_seconds=0.25,
                     device_fingerprint=DEV.fingerprint)
    nb = NativeBinary(binary=os.urandom(size), info=info)
    return key_for_info(info), nb


# -- key -----------------------------------------------------------------------------

def test_key_changes_with_every_part_and_nothing_else():
    fp = DEV.fingerprint
    base = cache_key(IR.sha256, TC, fp, O2)
    assert base == cache_key(IR.sha256, Toolchain(**TC.to_json()), DeviceId(**DEV.to_json()).fingerprint,
                             BuildOptions.of(["-O2"]))
    # versions recorded beside the toolchain (kernbin's own, pyopencl's) do not change the bytes: not keyed
    assert base == cache_key(IR.sha256, dataclasses.replace(TC, versions={"kernbin": "9"}), fp, O2)
    variants = [
        cache_key("0" * 64, TC, fp, O2),
        cache_key(IR.sha256, dataclasses.replace(TC, backend="level-zero"), fp, O2),
        cache_key(IR.sha256, dataclasses.replace(TC, driver="1.1"), fp, O2),
        cache_key(IR.sha256, dataclasses.replace(TC, compiler="Vendor OpenCL 3.1"), fp, O2),
        cache_key(IR.sha256, TC, dataclasses.replace(DEV, arch="x86-64-v4").fingerprint, O2),
        cache_key(IR.sha256, TC, fp, BuildOptions.of("-O2 -cl-mad-enable")),
        cache_key(IR.sha256, TC, fp, BuildOptions.of("-O2", grf="large")),
        cache_key(IR.sha256, TC, fp, BuildOptions.of("-O2", grf="auto")),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_parse_size():
    assert parse_size("500M") == 500 << 20 and parse_size("2G") == 2 << 30
    assert parse_size("1.5KiB") == 1536 and parse_size("123") == 123
    with pytest.raises(KernbinError, match="bad size"):   # a plain KernbinError: no attribute to assert
        parse_size("lots")


# -- local store ---------------------------------------------------------------------

def test_put_get_round_trip_leaves_no_temp_files(tmp_path):
    store = LocalStore(str(tmp_path))
    key, nb = synthetic()
    store.put(key, nb)
    assert store.get(key) == nb
    files = [f for _, _, fs in os.walk(store.objects) for f in fs]
    assert files == [key + ".knb"]


def test_refuses_a_binary_under_the_wrong_key(tmp_path):
    store = LocalStore(str(tmp_path))
    key, nb = synthetic("a")
    with pytest.raises(KernbinError, match="does not hash"):   # a plain KernbinError: no attribute to assert
        store.put("f" * 64, nb)


@pytest.mark.parametrize("where", ["header", "payload", "truncate", "misplaced"])
def test_corrupt_entry_is_a_counted_miss_and_removed(tmp_path, where):
    cache = Cache(LocalStore(str(tmp_path)))
    key, nb = synthetic()
    cache.put(key, nb)
    path = cache.local.path(key)
    data = bytearray(open(path, "rb").read())
    if where == "header":
        data[70] ^= 0x20
    elif where == "payload":
        data[-100] ^= 0x01
    elif where == "truncate":
        data = data[:-1]
    else:   # a valid entry copied under another key
        other_key, _ = synthetic("b")
        path = cache.local.path(other_key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        key = other_key
    with open(path, "wb") as f:
        f.write(bytes(data))
    rebuilt = []
    again, hit = cache.get_or_build(key, lambda: rebuilt.append(1) or synthetic("b" if where == "misplaced" else "a")[1])
    assert not hit and rebuilt == [1]
    assert not os.path.exists(path) or cache.local.get(key) == again
    st = cache.stats()
    assert st["corrupt"] == 1 and st["builds"] == 1 and st["misses"] == 1


def test_lru_eviction_keeps_the_bound_in_lru_order(tmp_path):
    _, probe = synthetic("x", 10_000)
    entry_size = len(probe.to_bytes())
    store = LocalStore(str(tmp_path), max_size=int(entry_size * 2.5))
    keys = {}
    past = time.time() - 100
    for i, tag in enumerate("abc"):
        keys[tag], nb = synthetic(tag, 10_000)
        store.put(keys[tag], nb)
        os.utime(store.path(keys[tag]), (past + i, past + i))   # written 100, 99, 98 s ago
        if tag == "b":
            assert store.get(keys["a"]) is not None     # used now: a is more recent than b
        assert sum(e["size"] for e in store.entries()) <= store.max_size
    remaining = {e["key"] for e in store.entries()}
    assert remaining == {keys["a"], keys["c"]}            # b was least recently used
    assert store.stats()["evicted"] == 1
    # prune to a tighter bound evicts in LRU order: c (written 98 s ago) before a (used just now)
    assert store.prune(entry_size) == [keys["c"]]
    assert [e["key"] for e in store.entries()] == [keys["a"]]


def test_stats_survive_processes(tmp_path):
    key, nb = synthetic()
    code = f"""
from kernbin.cache import Cache, LocalStore
from kernbin import NativeBinary
c = Cache(LocalStore({str(tmp_path)!r}))
nb = NativeBinary.from_bytes(bytes.fromhex({nb.to_bytes().hex()!r}))
for _ in range(3):
    c.get_or_build({key!r}, lambda: nb)
"""
    for _ in range(2):
        p = run_py(code)
        assert p.returncode == 0, p.stderr
    st = Cache(LocalStore(str(tmp_path))).stats()
    assert (st["entries"], st["builds"], st["misses"], st["hits"]) == (1, 1, 1, 5)
    assert st["build_seconds_saved"] == pytest.approx(5 * 0.25)


# -- single flight and crashes --------------------------------------------------------

RACER = """
import json, sys, time
import kernbin
from kernbin.api import get_or_build_ex
start = float(sys.argv[1])
dev = kernbin.open_device("opencl:cpu")
while time.time() < start:
    time.sleep(0.001)
native, hit = get_or_build_ex(sys.argv[2], dev)
print(json.dumps({"sha": native.sha256, "hit": hit}))
"""


def test_eight_processes_racing_build_once(cpu, tmp_path):
    env = dict(os.environ, KERNBIN_CACHE_DIR=str(tmp_path))
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(start), SAMPLES["regheavy"].spv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["sha"] for r in results}) == 1
    assert sorted(r["hit"] for r in results) == [False] + [True] * 7
    st = Cache(LocalStore(str(tmp_path))).stats()
    assert st["builds"] == 1 and st["entries"] == 1 and st["hits"] == 7


KILLED_WRITER = """
import os, sys, time
from kernbin.cache import Cache, LocalStore
from kernbin import NativeBinary
nb = NativeBinary.from_bytes(open(sys.argv[2], "rb").read())
def stuck_fsync(fd):
    open(sys.argv[3], "w").close()   # tell the test we are inside the write
    time.sleep(600)
os.fsync = stuck_fsync
Cache(LocalStore(sys.argv[1])).get_or_build(sys.argv[4], lambda: nb)
"""


def test_writer_killed_mid_write_leaves_no_entry_and_no_stuck_lock(tmp_path):
    root, marker, src = tmp_path / "cache", tmp_path / "in-write", tmp_path / "nb.knb"
    key, nb = synthetic("k", 50_000)
    nb.save(src)
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(src), str(marker), key], cwd=ROOT)
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and p.poll() is None, "writer never reached the write"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    cache = Cache(LocalStore(str(root)), wait_timeout=30)
    assert cache.local.entries() == [] and cache.local.get(key) is None
    leftovers = [f for _, _, fs in os.walk(cache.local.objects) for f in fs]
    assert leftovers and all(f.startswith(".tmp-") for f in leftovers)   # the torn write is invisible
    t0 = time.time()
    again, hit = cache.get_or_build(key, lambda: nb)
    assert not hit and again == nb and time.time() - t0 < 5              # the dead writer's lock is gone
    assert cache.local.get(key) == nb


# -- Redis tier -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path):
    import shutil
    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--enable-debug-command", "local", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0", proc, client
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


def _tier(tmp_path, name, url, hmac_key=None):
    from kernbin.cache.remote import RedisStore
    return Cache(LocalStore(str(tmp_path / name)), RedisStore(url, hmac_key, retry_after=60))


def test_write_through_and_read_through(tmp_path, redis_server):
    url, _, client = redis_server
    a, b = _tier(tmp_path, "a", url), _tier(tmp_path, "b", url)
    key, nb = synthetic()
    built, hit = a.get_or_build(key, lambda: nb)
    assert not hit and client.exists("kernbin:v1:" + key)
    got, hit = b.get_or_build(key, lambda: pytest.fail("b must not build"))
    assert hit and got == nb
    assert b.local.get(key) == nb                        # copied into b's local store
    assert b.stats()["remote_hits"] == 1


def test_flipped_bytes_in_redis_are_detected_and_rebuilt(tmp_path, redis_server):
    url, _, client = redis_server
    a, b = _tier(tmp_path, "a", url), _tier(tmp_path, "b", url)
    key, nb = synthetic()
    a.put(key, nb)
    value = bytearray(client.get("kernbin:v1:" + key))
    value[-10] ^= 0x04
    client.set("kernbin:v1:" + key, bytes(value))
    calls = []
    got, hit = b.get_or_build(key, lambda: calls.append(1) or nb)
    assert not hit and calls == [1] and got == nb
    st = b.stats()
    assert st["corrupt"] == 1 and st["builds"] == 1
    assert bytes(client.get("kernbin:v1:" + key)) != bytes(value)   # the bad value was replaced


def test_hmac_mismatch_is_rejected(tmp_path, redis_server):
    url, _, client = redis_server
    writer = _tier(tmp_path, "w", url, b"fleet-secret")
    key, nb = synthetic()
    writer.put(key, nb)
    same_key = _tier(tmp_path, "ok", url, b"fleet-secret")
    assert same_key.get(key) == nb
    attacker_view = _tier(tmp_path, "x", url, b"wrong-secret")
    with pytest.warns(KernbinWarning, match="HMAC signature mismatch"):   # warnings carry no attributes
        assert attacker_view.get(key) is None
    assert attacker_view.stats()["rejected"] == 1
    # an unsigned (e.g. poisoned) entry is rejected by a reader that requires signatures
    unsigned = _tier(tmp_path, "u", url)
    key2, nb2 = synthetic("z")
    unsigned.put(key2, nb2)
    with pytest.warns(KernbinWarning, match="not signed"):
        assert _tier(tmp_path, "r", url, b"fleet-secret").get(key2) is None


def test_redis_stopped_mid_run_local_keeps_serving(tmp_path, redis_server):
    url, proc, _ = redis_server
    cache = _tier(tmp_path, "a", url)
    key, nb = synthetic()
    cache.put(key, nb)
    proc.terminate()
    proc.wait(timeout=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.time()
        assert cache.get(key) == nb                                   # local hit, Redis not needed
        key2, nb2 = synthetic("q")
        got, hit = cache.get_or_build(key2, lambda: nb2)              # miss: Redis down, build locally
        for _ in range(5):
            assert cache.get(key2) == nb2
        elapsed = time.time() - t0
    assert not hit and got == nb2
    assert elapsed < 3, f"a dead Redis cost {elapsed:.1f} s"
    down = [w for w in caught if "unavailable" in str(w.message)]
    assert len(down) == 1                                             # one warning, not one per call
    assert cache.stats()["remote_errors"] >= 1


def test_slow_redis_costs_a_bounded_wait_and_one_warning(tmp_path, redis_server):
    import threading
    url, _, client = redis_server
    cache = _tier(tmp_path, "a", url)
    key, nb = synthetic()
    cache.put(key, nb)
    key2, nb2 = synthetic("slow")
    sleeper = threading.Thread(target=lambda: client.execute_command("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)                                    # the server is now stuck for 3 s
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.time()
            got, hit = cache.get_or_build(key2, lambda: nb2)   # remote read times out, builds locally
            assert cache.get(key) == nb                         # local hits keep working
            elapsed = time.time() - t0
    finally:
        sleeper.join()
    assert not hit and got == nb2
    assert elapsed < 2.5, f"a slow Redis cost {elapsed:.1f} s"
    assert len([w for w in caught if "unavailable" in str(w.message)]) == 1


def test_stale_temp_files_anywhere_in_the_store_are_swept(tmp_path):
    store = LocalStore(str(tmp_path))
    key, nb = synthetic("stale")
    store.put(key, nb)
    old = time.time() - 2 * 3600
    stale = [os.path.join(store.objects, key[:2], ".tmp-dead1"), os.path.join(store.root, ".tmp-stats"),
             os.path.join(store.locks, ".tmp-x")]
    fresh = os.path.join(store.root, ".tmp-being-written")
    for p in stale + [fresh]:
        with open(p, "wb") as f:
            f.write(b"x" * 10)
    for p in stale:
        os.utime(p, (old, old))
    store.prune(1 << 30)
    assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(fresh) and store.get(key) is not None


def test_pending_hits_are_not_counted_twice_across_fork(tmp_path):
    code = f"""
import os
from kernbin.cache import Cache, LocalStore
import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_cache import synthetic
c = Cache(LocalStore({str(tmp_path)!r}))
key, nb = synthetic("fork")
c.put(key, nb)
for _ in range(10):
    assert c.get(key) is not None
pid = os.fork()
if pid == 0:
    sys.exit(0)          # a normal exit runs the finalizers: they must not flush the parent's hits
os.waitpid(pid, 0)
print(c.stats()["hits"])
"""
    p = run_py(code)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.split()[-1]) == 10
