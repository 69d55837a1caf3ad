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

from kernbin import (BuildInfo, BuildOptions, DeviceId, KernbinError, KernelInfo, NativeBinary,
                     Requirements, SpirvModule, Toolchain)
from kernbin.cache import Cache, LocalStore, UnsafeCacheDir, cache_key, key_for_info, parse_size
from kernbin.cache import local as local_mod
from kernbin.cache import remote as remote_mod
from kernbin.cache.remote import (RedisStore, RemoteConfigError, RemoteDisabledWarning, RemoteRejectedWarning,
                                  RemoteUnavailableWarning)
from kernbin.samples import SAMPLES

from conftest import ROOT, run_cli, run_py
from remote_servers import HMAC_KEY, nginx_server, redis_server, remote_server  # noqa: F401 (fixtures)

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

def _tier(tmp_path, name, server, hmac_key=HMAC_KEY):
    """A cache with its own local store and the remote ``server`` (a :class:`Served`, or a Redis URL)."""
    store = RedisStore(server, hmac_key, retry_after=60) if isinstance(server, str) else server.store(hmac_key)
    return Cache(LocalStore(str(tmp_path / name)), store)


def test_write_through_and_read_through(tmp_path, remote_server):
    a, b = _tier(tmp_path, "a", remote_server), _tier(tmp_path, "b", remote_server)
    key, nb = synthetic()
    built, hit = a.get_or_build(key, lambda: nb)
    assert not hit and remote_server.keys() == [key]
    got, hit = b.get_or_build(key, lambda: pytest.fail("b must not build"))
    assert hit and got == nb
    assert b.local.get(key) == nb                        # copied into b's local store
    assert b.stats()["remote_hits"] == 1


@pytest.mark.parametrize("damage", ["flipped", "signed-garbage"])
def test_bad_bytes_in_the_remote_are_detected_and_rebuilt(tmp_path, remote_server, damage):
    a, b = _tier(tmp_path, "a", remote_server), _tier(tmp_path, "b", remote_server)
    key, nb = synthetic()
    a.put(key, nb)
    value = bytearray(remote_server.raw_get(key))
    if damage == "flipped":         # the signature catches it first
        value[-10] ^= 0x04
    else:                           # validly signed by a fleet member, but not a valid .knb: the checksums catch it
        data = bytearray(nb.without_ir().to_bytes())
        data[-10] ^= 0x04
        value = bytearray(a.remote.wrap(key, bytes(data)))
    remote_server.raw_set(key, bytes(value))
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, hit = b.get_or_build(key, lambda: calls.append(1) or nb)
    assert not hit and calls == [1] and got == nb
    st = b.stats()
    if damage == "flipped":         # looked up twice: before and after taking the build lease; kept remotely
        assert (st["rejected"], st["corrupt"]) == (2, 0)
        assert {w.message.rule for w in caught if issubclass(w.category, RemoteRejectedWarning)} == {"signature"}
    else:
        assert (st["rejected"], st["corrupt"]) == (0, 1)
    assert st["builds"] == 1
    assert remote_server.raw_get(key) != bytes(value)   # the bad value was replaced
    assert b.remote.unwrap(key, remote_server.raw_get(key)) == nb.without_ir().to_bytes()


def test_hmac_mismatch_is_rejected(tmp_path, remote_server):
    writer = _tier(tmp_path, "w", remote_server, b"fleet-secret")
    key, nb = synthetic()
    writer.put(key, nb)
    same_key = _tier(tmp_path, "ok", remote_server, b"fleet-secret")
    assert same_key.get(key) == nb
    attacker_view = _tier(tmp_path, "x", remote_server, b"wrong-secret")
    with pytest.warns(RemoteRejectedWarning) as caught:
        assert attacker_view.get(key) is None
    assert [w.message.rule for w in caught] == ["signature"] and caught[0].message.key == key
    assert attacker_view.stats()["rejected"] == 1
    # an unsigned (e.g. poisoned) entry, written straight into the remote, is rejected: there is no unsigned mode
    key2, nb2 = synthetic("z")
    remote_server.raw_set(key2, b"KBR1\x00" + nb2.without_ir().to_bytes())
    reader = _tier(tmp_path, "r", remote_server)
    with pytest.warns(RemoteRejectedWarning) as caught:
        assert reader.get(key2) is None
    assert [w.message.rule for w in caught] == ["unsigned"]
    assert reader.stats()["rejected"] == 1 and reader.local.get(key2) is None


def test_oversized_remote_value_is_refused_unread(tmp_path, remote_server):
    key, nb = synthetic("big", 200_000)
    writer = _tier(tmp_path, "w", remote_server)
    writer.put(key, nb)                                   # a valid, signed entry of ~200 KB
    reader = Cache(LocalStore(str(tmp_path / "r")), remote_server.store(max_entry_size=100_000))
    with pytest.warns(RemoteRejectedWarning) as caught:
        got, hit = reader.get_or_build(key, lambda: nb)
    assert not hit and got == nb
    assert {w.message.rule for w in caught} == {"oversized"}
    assert reader.stats()["rejected"] >= 1 and reader.stats()["remote_errors"] == 0
    # and a reader never uploads what it would refuse to read
    key2, nb2 = synthetic("big2", 200_000)
    assert reader.remote.put(key2, nb2.without_ir().to_bytes()) == remote_mod.SKIPPED
    assert remote_server.raw_get(key2) is None


def test_remote_stopped_mid_run_local_keeps_serving(tmp_path, remote_server):
    cache = _tier(tmp_path, "a", remote_server)
    key, nb = synthetic()
    cache.put(key, nb)
    remote_server.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.time()
        assert cache.get(key) == nb                                   # local hit, the remote not needed
        key2, nb2 = synthetic("q")
        got, hit = cache.get_or_build(key2, lambda: nb2)              # miss: remote down, build locally
        for _ in range(5):
            assert cache.get(key2) == nb2
        elapsed = time.time() - t0
    assert not hit and got == nb2
    assert elapsed < 3, f"a dead remote cost {elapsed:.1f} s"
    down = [w for w in caught if issubclass(w.category, RemoteUnavailableWarning)]
    assert len(down) == 1 and down[0].message.url == remote_server.url   # one warning, not one per call
    # one failed call; the calls skipped while the tier rests (the lease, the store of get_or_build;
    # the later hits never reach it) are not errors
    assert cache.stats()["remote_errors"] == 1


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
    assert len([w for w in caught if issubclass(w.category, RemoteUnavailableWarning)]) == 1


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


# -- the remote tier fails safe ---------------------------------------------------------

def test_remote_without_hmac_key_is_left_out_with_one_warning(tmp_path, remote_server, monkeypatch):
    """No key: the tier is refused entirely (not read, not written), one warning, local-only."""
    url = remote_server.url
    monkeypatch.setattr(remote_mod, "_disabled_warned", set())
    monkeypatch.setenv("KERNBIN_REMOTE", url)
    monkeypatch.delenv("KERNBIN_CACHE_HMAC_KEY", raising=False)
    key, nb = synthetic("nokey")
    remote_server.raw_set(key, b"KBR1\x00" + nb.without_ir().to_bytes())   # an unsigned (forgeable) entry
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        caches = [Cache.from_env(str(tmp_path / "c")) for _ in range(3)]
        got, hit = caches[0].get_or_build(key, lambda: nb)
        key2, nb2 = synthetic("nokey2")
        caches[1].put(key2, nb2)
        assert caches[2].get(key2) == nb2
    disabled = [w.message for w in caught if issubclass(w.category, RemoteDisabledWarning)]
    assert [(w.rule, w.url) for w in disabled] == [("no-hmac-key", url)]
    assert all(c.remote is None for c in caches)
    assert not hit                                                  # the unsigned entry was not read
    assert remote_server.keys() == [key]                            # nor anything written
    with pytest.raises(RemoteConfigError) as e:
        remote_mod.open_remote(url, None)
    assert (e.value.rule, e.value.url) == ("no-hmac-key", url)


@pytest.mark.parametrize("url", ["garbage", "ftp://cache.example:6379/0", "redis://host:notaport",
                                 "redis://localhost:6379/notadb", "redis://host:99999", "http://",
                                 "https://cache.example/kernbin?token=x", "http://cache.example:99999/x"])
def test_malformed_remote_url_warns_once_and_runs_local_only(tmp_path, monkeypatch, url):
    monkeypatch.setattr(remote_mod, "_disabled_warned", set())
    monkeypatch.setenv("KERNBIN_REMOTE", url)
    monkeypatch.setenv("KERNBIN_CACHE_HMAC_KEY", "fleet-secret")
    key, nb = synthetic("url")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):                      # what every API call does: look up the configured cache
            cache = Cache.from_env(str(tmp_path))
            assert cache.remote is None
            got, hit = cache.get_or_build(key, lambda: nb)
            assert got == nb and hit == (i > 0)    # warm local hits keep working
    disabled = [w.message for w in caught if issubclass(w.category, RemoteDisabledWarning)]
    assert [(w.rule, w.url) for w in disabled] == [("url", url)]
    assert cache.stats()["remote_errors"] == 0
    with pytest.raises(RemoteConfigError) as e:
        RedisStore(url, b"k")
    assert e.value.rule == "url"


def test_malformed_remote_url_one_warning_per_process(tmp_path):
    code = f"""
import json, warnings
warnings.simplefilter("always")
import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_cache import synthetic
from kernbin.cache import Cache
from kernbin.cache.remote import RemoteDisabledWarning
key, nb = synthetic("proc")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    hits = [Cache.from_env().get_or_build(key, lambda: nb)[1] for _ in range(5)]
print(json.dumps({{"hits": hits, "rules": [w.message.rule for w in caught
                                           if issubclass(w.category, RemoteDisabledWarning)]}}))
"""
    p = run_py(code, env={"KERNBIN_REMOTE": "garbage", "KERNBIN_CACHE_DIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out == {"hits": [False, True, True, True, True], "rules": ["url"]}


# -- the cache directory is not an attack surface ---------------------------------------

class _Hang(Exception):
    pass


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the test blocks for more than 10 s."""
    def boom(*_):
        raise _Hang()
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _outside(tmp_path):
    """A directory outside the store holding things kernbin must never touch: a valid entry, a lock,
    an old temp file. Returns (directory, {name: bytes})."""
    out = tmp_path / "outside"
    out.mkdir()
    key, nb = synthetic("outside")
    files = {key + ".knb": nb.to_bytes(), "precious.lock": b"mine", ".tmp-old": b"x" * 100, "notes.txt": b"keep"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    old = time.time() - 7200
    os.utime(out / ".tmp-old", (old, old))
    return out, files


def _intact(out, files):
    return {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "socket"])
def test_non_regular_entry_is_a_counted_miss_and_removed(tmp_path, monkeypatch, no_hang, kind):
    store = LocalStore(str(tmp_path / "c"))
    key, nb = synthetic(kind)
    path = store.path(key)
    os.makedirs(os.path.dirname(path))
    out, files = _outside(tmp_path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
        (tmp_path / "c" / "v1" / "objects" / key[:2] / (key + ".knb") / "inner").write_bytes(b"x")
    elif kind == "symlink":          # to a valid entry outside: still never followed
        store_b = LocalStore(str(tmp_path / "b"))
        store_b.put(key, nb)
        os.symlink(store_b.path(key), path)
    else:
        monkeypatch.chdir(os.path.dirname(path))       # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.basename(path))
        sock.close()
    assert store.get(key) is None
    assert not os.path.lexists(path)                   # removed (a link is unlinked, not its target)
    assert store.counters()["corrupt"] == 1
    if kind == "symlink":
        assert store_b.get(key) == nb
    assert _intact(out, files)
    store.put(key, nb)                                 # the name is usable again
    assert store.get(key) == nb


def test_symlinked_shard_is_never_followed(tmp_path, no_hang):
    store = LocalStore(str(tmp_path / "c"))
    out, files = _outside(tmp_path)
    key = next(iter(files))[:-4]                       # a valid entry for this key lies outside
    shard = os.path.dirname(store.path(key))
    os.symlink(out, shard)
    assert store.get(key) is None                      # not read through the link
    assert store.entries() == []                       # not listed through it
    _, nb = synthetic("outside")
    store.put(key, nb)                                 # the link is replaced by a real directory
    assert not os.path.islink(shard) and store.get(key) == nb
    assert _intact(out, files)


@pytest.mark.parametrize("where", ["locks", "shard", "objects"])
def test_clear_and_prune_never_touch_anything_outside_the_store(tmp_path, where):
    root = tmp_path / "c"
    store = LocalStore(str(root))
    keys = []
    for tag in ("a", "b", "c"):
        key, nb = synthetic(tag)
        store.put(key, nb)
        keys.append(key)
    out, files = _outside(tmp_path)
    target = {"locks": store.locks, "objects": store.objects,
              "shard": os.path.dirname(store.path(next(iter(files))[:-4]))}[where]
    if os.path.isdir(target):
        import shutil
        shutil.rmtree(target)
    os.symlink(out, target)
    store.prune(0)
    assert _intact(out, files)
    store.clear()
    assert _intact(out, files)
    os.unlink(target) if os.path.islink(target) else None
    os.symlink(out, target) if not os.path.lexists(target) else None
    for args in (("cache", "prune", "--max-size", "0"), ("cache", "clear")):
        p = run_cli(*args, env={"KERNBIN_CACHE_DIR": str(root)})
        assert p.returncode == 0, p.stderr
        assert _intact(out, files)
    assert not os.path.islink(target)                  # the link itself was removed


def _as_nobody(fn):
    """Run ``fn()`` in a forked child with uid/gid 65534; returns its (picklable) result."""
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            res = ("ok", fn())
        except BaseException as e:               # report, never run the parent's test code
            res = ("err", repr(e))
        os.write(w, pickle.dumps(res))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_unreadable_entry_is_a_plain_miss(tmp_path):
    import tempfile
    base = tempfile.mkdtemp(prefix="kernbin-eacces-")      # traversable by another user
    try:
        os.chmod(base, 0o755)
        store = LocalStore(base)
        key, nb = synthetic("eacces")
        store.put(key, nb)
        os.chmod(store.path(key), 0o600 if os.geteuid() == 0 else 0)
        if os.geteuid() == 0:              # root reads everything: read as another user
            assert _as_nobody(lambda: store.get(key, touch=False) is None) == ("ok", True)
        else:
            assert store.get(key) is None
        assert os.path.exists(store.path(key))                # not ours to judge: left alone
        assert store.counters()["corrupt"] == 0
    finally:
        import shutil
        shutil.rmtree(base)


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o077, 0o600), (0o022, 0o644)])
def test_entry_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = LocalStore(str(tmp_path))
        key, nb = synthetic("umask")
        store.put(key, nb)
        store.record("misses")
        store.counters()                      # folds the event into stats.json
    finally:
        os.umask(old)
    assert os.stat(store.path(key)).st_mode & 0o777 == mode
    assert os.stat(os.path.join(store.root, "stats.json")).st_mode & 0o777 == mode
    assert os.stat(os.path.dirname(store.path(key))).st_mode & 0o777 == mode | 0o111 & ~umask


def test_cache_root_writable_by_everyone_or_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "c"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(UnsafeCacheDir) as e:
        LocalStore(str(root))
    assert (e.value.rule, e.value.path) == ("world-writable", str(root))
    assert not (root / "v1").exists()                         # refused before writing anything
    monkeypatch.setenv("KERNBIN_CACHE_DIR", str(root))
    with pytest.raises(UnsafeCacheDir):
        Cache.from_env()
    monkeypatch.setenv("KERNBIN_CACHE_ALLOW_SHARED", "1")
    assert Cache.from_env().local.allow_shared
    monkeypatch.delenv("KERNBIN_CACHE_ALLOW_SHARED")
    os.chmod(root, 0o1777)                                    # sticky, like /tmp: accepted
    LocalStore(str(root))
    afile = tmp_path / "file"
    afile.write_bytes(b"")
    with pytest.raises(UnsafeCacheDir) as e:
        LocalStore(str(afile))
    assert e.value.rule == "not-a-directory"
    if os.geteuid() != 0:
        pytest.skip("the ownership half needs root (chown to another user)")
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)
    with pytest.raises(UnsafeCacheDir) as e:
        LocalStore(str(other))
    assert (e.value.rule, e.value.uid) == ("owner", 65534)
    LocalStore(str(other), allow_shared=True)
    # in a sticky world-writable root, another user could create v1 first: refused too
    os.chmod(root, 0o1777)
    import shutil
    shutil.rmtree(root / "v1")
    (root / "v1").mkdir()
    os.chown(root / "v1", 65534, 65534)
    with pytest.raises(UnsafeCacheDir) as e:
        LocalStore(str(root))
    assert (e.value.rule, e.value.path) == ("owner", str(root / "v1"))


def test_orphaned_temp_files_count_against_the_bound_and_are_swept(tmp_path):
    _, probe = synthetic("x", 10_000)
    size = len(probe.without_ir().to_bytes())
    store = LocalStore(str(tmp_path), max_size=None)
    keys = []
    for i, tag in enumerate("ab"):
        key, nb = synthetic(tag, 10_000)
        store.put(key, nb)
        os.utime(store.path(key), (time.time() - 100 + i,) * 2)
        keys.append(key)
    fresh = os.path.join(os.path.dirname(store.path(keys[0])), ".tmp-writing")   # a writer at work
    with open(fresh, "wb") as f:
        f.write(b"x" * (2 * size))
    assert store.prune(3 * size) == [keys[0]]                 # 2 entries + 2 entries of temp > 3
    assert os.path.exists(fresh)
    old = time.time() - 2 * 3600                              # now its writer is long dead: swept, not counted
    os.utime(fresh, (old, old))
    assert store.prune(size) == [] and not os.path.exists(fresh)


# -- scale: put is O(1) ------------------------------------------------------------------

def _usage(store):
    return store._usage.read()


def test_put_does_not_scan_the_store_until_the_estimate_passes_the_bound(tmp_path, monkeypatch):
    scans = []
    real = local_mod._Tree.scan
    monkeypatch.setattr(local_mod._Tree, "scan", lambda self, *a, **k: scans.append(1) or real(self, *a, **k))
    _, probe = synthetic("p", 1000)
    size = len(probe.without_ir().to_bytes())
    store = LocalStore(str(tmp_path), max_size=40 * size + size // 2)
    for i in range(40):
        key, nb = synthetic(f"s{i}", 1000)
        store.put(key, nb)
    assert len(scans) == 1                                    # the first put: no estimate yet
    assert _usage(store)[:2] == (40 * size, 40)
    key, nb = synthetic("over", 1000)
    store.put(key, nb)                                        # 41 entries > 40.5: one scan, evict to 90 %
    assert len(scans) == 2
    entries = store.entries()
    assert sum(e["size"] for e in entries) <= 0.9 * store.max_size and len(entries) == 36
    assert _usage(store) == (36 * size, 36, 0)
    assert store.counters()["evicted"] == 5


def test_usage_estimate_is_exact_after_concurrent_puts(tmp_path):
    code = f"""
import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_cache import synthetic
from kernbin.cache import LocalStore
store = LocalStore({str(tmp_path)!r})
for i in range(25):
    store.put(*synthetic(sys.argv[1] + str(i), 500 + i))
"""
    LocalStore(str(tmp_path)).put(*synthetic("first"))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{n}-"], cwd=ROOT) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    store = LocalStore(str(tmp_path))
    entries = store.entries()
    assert len(entries) == 101
    assert _usage(store)[:2] == (sum(e["size"] for e in entries), 101)


def test_rescan_corrects_drift_and_a_garbage_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(local_mod, "_RESCAN_MIN", 8)
    store = LocalStore(str(tmp_path))
    for i in range(10):
        store.put(*synthetic(f"d{i}"))
    for e in store.entries()[:4]:
        os.unlink(store.path(e["key"]))                       # removed by hand: the estimate drifts
    for i in range(8):
        store.put(*synthetic(f"e{i}"))
    real = store.entries()
    assert _usage(store)[:2] == (sum(e["size"] for e in real), len(real))
    with open(os.path.join(store.root, "usage"), "wb") as f:
        f.write(b"\x00garbage")
    store.put(*synthetic("after-garbage"))                    # unknown: rescanned
    real = store.entries()
    assert _usage(store) == (sum(e["size"] for e in real), len(real), 0)
