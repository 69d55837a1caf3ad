"""Fleet-wide single flight through leases in a real Redis: processes standing for hosts (each its
own local cache directory) build each missing kernel once between them; a dead builder's lease
expires and one waiter takes over; waits are bounded; a lease value nobody signed blocks nobody."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

from kernbin import NativeBinary
from kernbin.cache import Cache, LocalStore
from kernbin.cache import remote as remote_mod
from kernbin.cache.redis import RedisStore
from kernbin.cache.remote import FleetWaitWarning, RemoteRejectedWarning, RemoteUnavailableWarning
from kernbin.errors import BuildError, KernbinWarning

from conftest import ROOT
from remote_servers import HMAC_KEY, REDIS_PREFIX, LoopbackServer, redis_server  # noqa: F401 (fixture)
from test_cache import synthetic

# -- helpers ----------------------------------------------------------------------------

_COMMON = """
import json, os, sys, time
from kernbin.cache import Cache, LocalStore

def log(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.005)
"""

# one "host" building real kernels for the Intel CPU OpenCL runtime through kernbin's API
HOST = _COMMON + """
import random
import kernbin
from kernbin.api import get_or_build_ex
from kernbin.cache.redis import RedisStore
from kernbin.samples import SAMPLES
url, local, side, ready, go, index = sys.argv[1:7]

class Counting(Cache):
    def get_or_build(self, key, build):
        def counted():
            native = build()
            log(side, f"{key} {os.getpid()}")      # a build that finished, seen from outside
            return native
        return super().get_or_build(key, counted)

cache = Counting(LocalStore(local), RedisStore(url, b"fleet-secret"), lease_ttl=2, remote_wait=20)
kernbin.open_device("opencl:cpu")
kernels = [(n, "") for n in ("vadd", "matmul", "softmax", "reduce", "regheavy")]
kernels += [(n, "-cl-mad-enable") for n in ("vadd", "matmul", "softmax")]
random.Random(int(index)).shuffle(kernels)
log(ready, index)
wait_for(go)
out, t0 = {}, time.monotonic()
for name, opts in kernels:
    t = time.monotonic()
    native, hit = get_or_build_ex(SAMPLES[name].spv, "opencl:cpu", opts, cache=cache)
    out[f"{name}{opts}"] = {"sha": native.sha256, "hit": hit, "seconds": time.monotonic() - t}
print(json.dumps({"kernels": out, "total": time.monotonic() - t0}))
"""

# a "host" asking for one key whose build is a synthetic binary of fresh random bytes (so two
# builds never agree); with HANG set, the build announces itself and never returns
SYNTHETIC = _COMMON + """
from kernbin import NativeBinary
from kernbin.cache.redis import RedisStore
url, local, side, ready, info_path, ttl, wait = sys.argv[1:8]
info = NativeBinary.from_bytes(open(info_path, "rb").read()).info

def build():
    log(side, f"start {os.getpid()}")
    if os.environ.get("HANG"):
        log(os.environ["HANG"], str(os.getpid()))
        time.sleep(600)
    time.sleep(0.3)
    native = NativeBinary(binary=os.urandom(4096), info=info)
    log(side, f"done {os.getpid()}")
    return native

cache = Cache(LocalStore(local), RedisStore(url, b"fleet-secret"), lease_ttl=float(ttl), remote_wait=float(wait))
from kernbin.cache import key_for_info
log(ready, str(os.getpid()))
t = time.monotonic()
native, hit = cache.get_or_build(key_for_info(info), build)
print(json.dumps({"sha": native.sha256, "hit": hit, "seconds": time.monotonic() - t}))
"""


def _spawn(code, *args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT)


def _lines(path):
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _wait_lines(path, n, procs, timeout=60):
    deadline = time.time() + timeout
    while len(_lines(path)) < n:
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                pytest.fail(f"a host died early: {p.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"only {len(_lines(path))} of {n} hosts got ready"
        time.sleep(0.01)


def _results(procs, timeout=120):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _counters(dirs) -> dict:
    total: dict = {}
    for d in dirs:
        for k, v in LocalStore(str(d)).counters().items():
            total[k] = total.get(k, 0) + v
    return total


# -- the fleet ----------------------------------------------------------------------------

def test_sixteen_hosts_eight_kernels_build_each_kernel_once(cpu, tmp_path, redis_server):
    url, _, client = redis_server
    side, ready, go = tmp_path / "builds", tmp_path / "ready", tmp_path / "go"
    dirs = [tmp_path / f"host{i}" for i in range(16)]
    procs = [_spawn(HOST, url, d, side, ready, go, i) for i, d in enumerate(dirs)]
    _wait_lines(ready, 16, procs)                    # every host has started and opened its device
    t0 = time.time()
    go.touch()
    results = _results(procs)
    elapsed = time.time() - t0
    builds = _lines(side)
    assert len(builds) == 8 and len({b.split()[0] for b in builds}) == 8, builds    # each kernel once
    for name in results[0]["kernels"]:
        assert len({r["kernels"][name]["sha"] for r in results}) == 1, name          # the same bytes everywhere
    hits = [k["hit"] for r in results for k in r["kernels"].values()]
    assert hits.count(False) == 8 and len(hits) == 128
    st = _counters(dirs)
    assert st["builds"] == 8 and st["fleet_wait_timeouts"] == 0 and st["rejected"] == 0
    assert st["remote_errors"] == 0
    assert st["fleet_hits"] >= 1 and st["fleet_waits"] >= st["fleet_hits"]
    assert len(client.keys(REDIS_PREFIX + "*:lease")) == 0                         # every lease released
    assert len(client.keys(REDIS_PREFIX + "*")) == 8
    print(f"16 hosts x 8 kernels: {elapsed:.1f} s, {st['fleet_waits']} waits, {st['fleet_hits']} fleet hits")


def _synthetic_info(tmp_path, tag):
    key, nb = synthetic(tag, 4096)
    path = tmp_path / f"{tag}.knb"
    nb.save(path)
    return key, path


def test_builder_killed_mid_build_is_taken_over_once(tmp_path, redis_server):
    url, _, client = redis_server
    key, info_path = _synthetic_info(tmp_path, "killed")
    side, ready, hang = tmp_path / "builds", tmp_path / "ready", tmp_path / "hanging"
    ttl, bound = 1.5, 15.0
    builder = _spawn(SYNTHETIC, url, tmp_path / "builder", side, ready, info_path, ttl, bound,
                     env={"HANG": str(hang)})
    _wait_lines(hang, 1, [builder])                  # inside its build, holding the lease
    assert client.exists(REDIS_PREFIX + key + ":lease")
    dirs = [tmp_path / f"waiter{i}" for i in range(5)]
    waiters = [_spawn(SYNTHETIC, url, d, side, ready, info_path, ttl, bound) for d in dirs]
    _wait_lines(ready, 6, waiters)
    time.sleep(0.5)                                  # they are waiting on the live builder's lease
    assert _lines(side) == [f"start {builder.pid}"]
    killed_at = time.time()
    os.kill(builder.pid, signal.SIGKILL)
    builder.communicate()
    results = _results(waiters)
    took = time.time() - killed_at
    starts = [ln for ln in _lines(side) if ln.startswith("start")]
    assert len(starts) == 2 and len([ln for ln in _lines(side) if ln.startswith("done")]) == 1   # once more
    assert len({r["sha"] for r in results}) == 1                    # everyone has the takeover's bytes
    assert sorted(r["hit"] for r in results) == [False] + [True] * 4
    assert max(r["seconds"] for r in results) < bound               # nobody waited past the bound
    assert took < ttl + 5, f"takeover took {took:.1f} s after the kill"
    st = _counters(dirs)
    assert (st["builds"], st["lease_takeovers"], st["fleet_wait_timeouts"]) == (1, 1, 0)
    assert st["fleet_waits"] == 5 and st["fleet_hits"] == 4
    assert not client.exists(REDIS_PREFIX + key + ":lease")


# -- bounds and fail-safe, in one process ---------------------------------------------------

def _cache(tmp_path, name, url, **kw):
    return Cache(LocalStore(str(tmp_path / name)), RedisStore(url, HMAC_KEY, retry_after=60), **kw)


def test_waiter_past_its_bound_builds_itself(tmp_path, redis_server):
    url, _, _ = redis_server
    key, nb = synthetic("bound")
    other = RedisStore(url, HMAC_KEY)
    held = other.acquire_lease(key, 30)              # a live holder that never finishes
    assert held.lease is not None
    cache = _cache(tmp_path, "a", url, remote_wait=1.0)
    t0 = time.monotonic()
    with pytest.warns(FleetWaitWarning) as caught:
        got, hit = cache.get_or_build(key, lambda: nb)
    elapsed = time.monotonic() - t0
    assert not hit and got == nb and 1.0 <= elapsed < 2.0
    assert caught[0].message.holder == held.lease.holder and caught[0].message.key == key
    st = cache.stats()
    assert (st["fleet_waits"], st["fleet_wait_timeouts"], st["fleet_hits"], st["builds"]) == (1, 1, 0, 1)
    assert held.lease.release() == remote_mod.OK


def test_result_arriving_while_waiting_is_a_fleet_hit(tmp_path, redis_server):
    url, _, _ = redis_server
    key, nb = synthetic("arrives")
    builder = _cache(tmp_path, "b", url)
    held = builder.remote.acquire_lease(key, 30)
    threading.Timer(0.5, lambda: (builder.put(key, nb), held.lease.release())).start()
    cache = _cache(tmp_path, "a", url)
    t0 = time.monotonic()
    got, hit = cache.get_or_build(key, lambda: pytest.fail("must not build"))
    assert hit and got == nb and time.monotonic() - t0 < 2.5
    st = cache.stats()
    assert (st["fleet_waits"], st["fleet_hits"], st["builds"], st["remote_hits"]) == (1, 1, 0, 1)


def _forge(client, key, kind):
    lk = REDIS_PREFIX + key + ":lease"
    if kind == "garbage":
        client.set(lk, b"held by me forever")                       # no TTL: would block forever if trusted
    elif kind == "other-key":
        client.set(lk, RedisStore("redis://x", b"not-the-fleet-key").lease_value(key, 3600, "mallory:1:ff"))
    elif kind == "replayed-expired":                              # a genuine value, copied, re-set without TTL
        client.set(lk, RedisStore("redis://x", HMAC_KEY).lease_value(key, -5, "old:1:aa"))
    elif kind == "too-far-ahead":
        client.set(lk, RedisStore("redis://x", HMAC_KEY).lease_value(key, 10 ** 7, "greedy:1:bb"))
    elif kind == "huge":
        client.set(lk, b"KBL1" + os.urandom(1 << 20))
    else:
        client.rpush(lk, b"a list, not a string")


@pytest.mark.parametrize("kind, rule", [("garbage", "lease-format"), ("other-key", "lease-signature"),
                                        ("replayed-expired", "lease-expired"), ("too-far-ahead", "lease-expired"),
                                        ("huge", "lease-format"), ("list", "lease-format")])
def test_a_lease_value_that_fails_verification_blocks_nobody(tmp_path, redis_server, kind, rule):
    url, _, client = redis_server
    key, nb = synthetic("forged-" + kind)
    _forge(client, key, kind)
    cache = _cache(tmp_path, "a", url, lease_ttl=2, remote_wait=30)
    t0 = time.monotonic()
    with pytest.warns(RemoteRejectedWarning) as caught:
        got, hit = cache.get_or_build(key, lambda: nb)
    assert not hit and got == nb and time.monotonic() - t0 < 1.0
    assert [w.message.rule for w in caught] == [rule]
    st = cache.stats()
    assert (st["rejected"], st["fleet_waits"], st["builds"]) == (1, 0, 1)
    assert st["lease_takeovers"] == 1                                   # an invalid value replaced
    assert not client.exists(REDIS_PREFIX + key + ":lease")           # ours replaced it, then was released


def test_lease_is_renewed_while_the_build_runs_and_released_after(tmp_path, redis_server):
    url, _, client = redis_server
    key, nb = synthetic("renew")
    cache = _cache(tmp_path, "a", url, lease_ttl=0.6)
    probe = RedisStore(url, HMAC_KEY)
    seen = []

    def slow_build():
        for _ in range(4):                                 # 2 s: more than three times the ttl
            time.sleep(0.5)
            seen.append(probe.acquire_lease(key, 0.6))
        return nb

    got, hit = cache.get_or_build(key, slow_build)
    assert not hit and got == nb
    assert all(a.status == remote_mod.OK and a.lease is None and a.holder for a in seen)   # held all along
    assert len({a.holder for a in seen}) == 1
    assert not client.exists(REDIS_PREFIX + key + ":lease")


def test_redis_dying_while_waiting_means_local_only(tmp_path, redis_server):
    url, proc, _ = redis_server
    key, nb = synthetic("dies")
    held = RedisStore(url, HMAC_KEY).acquire_lease(key, 60)
    assert held.lease is not None
    threading.Timer(0.5, proc.kill).start()
    cache = _cache(tmp_path, "a", url, remote_wait=60)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, hit = cache.get_or_build(key, lambda: nb)
    assert not hit and got == nb and time.monotonic() - t0 < 3.0
    assert len([w for w in caught if issubclass(w.category, RemoteUnavailableWarning)]) == 1
    st = cache.stats()
    assert (st["fleet_waits"], st["fleet_wait_timeouts"], st["builds"], st["remote_errors"]) == (1, 0, 1, 1)


def test_leases_off(tmp_path, redis_server, monkeypatch):
    url, _, client = redis_server
    monkeypatch.setenv("KERNBIN_REMOTE", url)
    monkeypatch.setenv("KERNBIN_CACHE_HMAC_KEY", HMAC_KEY.decode())
    monkeypatch.setenv("KERNBIN_REMOTE_WAIT", "0")
    cache = Cache.from_env(str(tmp_path / "c"))
    assert cache.remote_wait == 0 and cache.lease_store is None
    key, nb = synthetic("off")
    held = RedisStore(url, HMAC_KEY).acquire_lease(key, 30)           # ignored: leases are off
    got, hit = cache.get_or_build(key, lambda: nb)
    assert not hit and got == nb and client.exists(REDIS_PREFIX + key)
    assert cache.stats()["fleet_waits"] == 0
    held.lease.release()


def test_lease_settings_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNBIN_REMOTE", raising=False)
    monkeypatch.setenv("KERNBIN_REMOTE_LEASE_TTL", "4.5")
    monkeypatch.setenv("KERNBIN_REMOTE_WAIT", "42")
    cache = Cache.from_env(str(tmp_path))
    assert (cache.lease_ttl, cache.remote_wait) == (4.5, 42.0)
    monkeypatch.setenv("KERNBIN_REMOTE_WAIT", "soon")
    with pytest.warns(KernbinWarning):
        assert Cache.from_env(str(tmp_path)).remote_wait == 300.0


def test_a_failing_build_releases_the_lease(tmp_path, redis_server):
    url, _, client = redis_server
    key, _ = synthetic("fails")
    cache = _cache(tmp_path, "a", url)

    def broken():
        raise BuildError("opencl", "clBuildProgram", -11, "CL_BUILD_PROGRAM_FAILURE", log="error: nope")

    with pytest.raises(BuildError):
        cache.get_or_build(key, broken)
    assert not client.exists(REDIS_PREFIX + key + ":lease")   # the next host does not wait for a dead build


def test_forged_entry_while_waiting_is_rejected_not_served(tmp_path, redis_server):
    """A poisoned value appearing where the result is awaited is refused; the wait goes on."""
    url, _, client = redis_server
    key, nb = synthetic("poison")
    builder = _cache(tmp_path, "b", url)
    held = builder.remote.acquire_lease(key, 30)
    evil = NativeBinary(binary=b"\xcc" * 4096, info=nb.info)
    client.set(REDIS_PREFIX + key, b"KBR1\x01" + b"\0" * 32 + evil.without_ir().to_bytes())
    threading.Timer(0.6, lambda: (builder.put(key, nb), held.lease.release())).start()
    cache = _cache(tmp_path, "a", url)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        got, hit = cache.get_or_build(key, lambda: pytest.fail("must not build"))
    assert hit and got == nb and got.binary != evil.binary
    assert cache.stats()["rejected"] >= 1


def test_a_redis_entry_of_the_wrong_type_is_rejected_not_a_failure(tmp_path, redis_server):
    url, _, client = redis_server
    key, nb = synthetic("wrongtype")
    client.rpush(REDIS_PREFIX + key, b"not a string")
    cache = _cache(tmp_path, "a", url)
    with pytest.warns(RemoteRejectedWarning) as caught:
        assert cache.get_or_build(key, lambda: nb) == (nb, False)
    assert {w.message.rule for w in caught} == {"format"}
    st = cache.stats()
    assert st["remote_errors"] == 0 and st["rejected"] == 2          # the tier keeps working
    assert cache.remote.unwrap(key, client.get(REDIS_PREFIX + key)) == nb.without_ir().to_bytes()


# -- a Redis that misbehaves, renewals across a stall, takeovers counted right -------------

def _resp_command(f):
    line = f.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return [line.strip()]
    out = []
    for _ in range(int(line[1:])):
        n = int(f.readline()[1:])
        out.append(f.read(n + 2)[:-2])
    return out


class FakeRedis(LoopbackServer):
    """A loopback RESP server: ``+OK`` to everything (HELLO: a protocol-2 map, or ``+OK`` in mode
    "hello-ok", a server that is not Redis), and to GETRANGE / EVALSHA / EVAL the answer of ``mode``:
    "int" (an integer), "list" (a list of the wrong shape), "trickle" (a bulk string, a byte every
    0.1 s), "flood" (a 100 GB bulk string, as fast as it goes)."""

    def __init__(self, mode):
        self.mode, self.stopped = mode, threading.Event()
        super().__init__()

    def _one(self, conn):
        f = conn.makefile("rb")
        try:
            while not self.stopped.is_set():
                cmd = _resp_command(f)
                if cmd is None:
                    return
                name = cmd[0].upper()
                if name in (b"GETRANGE", b"EVALSHA", b"EVAL"):
                    self._answer(conn)
                elif name == b"HELLO" and self.mode != "hello-ok":
                    conn.sendall(b"*2\r\n$5\r\nproto\r\n:2\r\n")
                else:
                    conn.sendall(b"+OK\r\n")
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _answer(self, conn):
        if self.mode == "int":
            conn.sendall(b":100000000000000\r\n")          # bytes(100000000000000): MemoryError
        elif self.mode == "list":
            conn.sendall(b"*1\r\n:7\r\n")
        elif self.mode == "trickle":
            conn.sendall(b"$1000000\r\n")
            while not self.stopped.is_set():
                conn.sendall(b"x")
                time.sleep(0.1)
        elif self.mode == "flood":
            conn.sendall(b"$100000000000\r\n")
            chunk = b"x" * (1 << 20)
            while not self.stopped.is_set():
                conn.sendall(chunk)
        else:
            conn.sendall(b"+OK\r\n")

    def close(self):
        self.stopped.set()
        super().close()


@pytest.fixture
def fake_redis():
    servers = []

    def make(mode):
        servers.append(FakeRedis(mode))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize("mode", ["int", "list", "hello-ok", "trickle", "flood"])
def test_a_hostile_redis_is_a_bounded_failure_never_an_exception(tmp_path, fake_redis, mode):
    """Replies of the wrong shape (an integer to GETRANGE used to be bytes(N): MemoryError; a
    non-list to the lease script a TypeError; "+OK" to HELLO an AttributeError), a reply that
    trickles in (each read quick, the whole endless) or floods: a failed call within the deadline,
    the memory a reply takes bounded by max_entry_size, and the cache builds locally."""
    server = fake_redis(mode)
    key, nb = synthetic("hostile-" + mode)

    def store():
        return RedisStore(server.url, HMAC_KEY, deadline=1.0, max_entry_size=1 << 20)
    for op in (lambda s: s.get(key)[1], lambda s: s.acquire_lease(key, 5).status):
        t0 = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert op(store()) == remote_mod.FAILED
        assert time.monotonic() - t0 < 2.5
        assert [w.category for w in caught] == [RemoteUnavailableWarning]
    cache = Cache(LocalStore(str(tmp_path / "c")), store())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cache.get_or_build(key, lambda: nb) == (nb, False)
    assert cache.stats()["remote_errors"] == 1                       # then the tier rests


def test_a_failed_call_leaves_no_half_initialized_connection(fake_redis):
    """A handshake cut short by an exception that is not redis-py's own (a server answering "+OK" to
    HELLO) left the connection connected in the pool, to serve the next call without its
    handshake (no AUTH, no SELECT): after a failure the idle connections are closed."""
    store = RedisStore(fake_redis("hello-ok").url, HMAC_KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert store.get(synthetic("half-open")[0]) == (None, remote_mod.FAILED)
    pool = store._client.connection_pool
    assert pool._available_connections and all(c._sock is None for c in pool._available_connections)


def test_a_renewal_that_times_out_is_retried_and_the_lease_kept(tmp_path, redis_server):
    """Redis stalls (SIGSTOP) 0.8 s, less than the 1.5 s ttl, early in a 3 s build: a renewal times
    out. It used to go through the tier's rest period (30 s of SKIPPED renewals): the lease lapsed
    and another host built the key again. Now the next tick renews it; the failure is counted."""
    url, proc, client = redis_server
    key, nb = synthetic("stall")
    builds = []

    def build_a():
        builds.append("a")
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.8)
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(2.0)
        return nb
    a = _cache(tmp_path, "a", url, lease_ttl=1.5, remote_wait=30)
    b = _cache(tmp_path, "b", url, lease_ttl=1.5, remote_wait=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = threading.Thread(target=lambda: a.get_or_build(key, build_a))
        t.start()
        try:
            time.sleep(2.0)                                           # the stall is over; A builds on
            assert client.pttl(REDIS_PREFIX + key + ":lease") > 0
            got, hit = b.get_or_build(key, lambda: builds.append("b") or nb)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            t.join()
    assert builds == ["a"] and hit and got == nb
    assert a.stats()["remote_errors"] >= 1 and b.stats()["lease_takeovers"] == 0
    assert not client.exists(REDIS_PREFIX + key + ":lease")


def test_a_renewal_applied_but_unanswered_is_adopted(tmp_path, redis_server):
    """A renewal the server applied whose answer was lost (a timeout on the way back): the next
    renewal and the release recognise the value the server holds, so the lease is not lost."""
    url, _, client = redis_server
    key, nb = synthetic("unanswered")
    store = RedisStore(url, HMAC_KEY)
    real, lost_answers = store._renew_lease, []

    def applied_then_timeout(lease, value):
        result = real(lease, value)
        if not lost_answers:
            lost_answers.append(value)
            raise TimeoutError("the answer was lost")
        return result
    store._renew_lease = applied_then_timeout
    attempt = store.acquire_lease(key, 0.6)
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lease = attempt.lease.start(on_error=lambda: errors.append(1))
        time.sleep(1.5)                                    # several renewals past the lost answer
        assert not lease.lost and lease.value != lost_answers[0]
        assert client.get(REDIS_PREFIX + key + ":lease") == lease.value
        assert lease.release() == remote_mod.OK
    assert not client.exists(REDIS_PREFIX + key + ":lease")
    assert errors == [1] and [w.category for w in caught] == [RemoteUnavailableWarning]
    assert store._down_until == 0.0                         # a renewal does not rest the tier


def test_renewal_and_release_failures_count_as_remote_errors(tmp_path, redis_server):
    url, proc, _ = redis_server
    key, nb = synthetic("renewfail")
    cache = _cache(tmp_path, "a", url, lease_ttl=0.6)

    def build():
        proc.kill()
        proc.wait()
        time.sleep(0.5)                                    # two renewals fail
        return nb
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.get_or_build(key, build) == (nb, False)
    st = cache.stats()
    assert st["remote_errors"] >= 3                         # renewals, the put, the release
    assert len([w for w in caught if issubclass(w.category, RemoteUnavailableWarning)]) == 1


def test_a_lease_released_by_its_holder_is_no_takeover(tmp_path, redis_server):
    """lease_takeovers counts leases whose holder stopped renewing (or invalid values replaced), not
    a lease found free because its holder released it (a failed build, or a result published while
    the waiter was between polls)."""
    url, _, _ = redis_server
    for tag, fails in (("released-ok", False), ("released-failed", True)):
        key, nb = synthetic(tag)
        holder = _cache(tmp_path, "h-" + tag, url, lease_ttl=5)

        def build():
            time.sleep(0.6)
            if fails:
                raise RuntimeError("build failed")
            return nb

        def run():
            try:
                holder.get_or_build(key, build)
            except RuntimeError:
                pass
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)
        waiter = _cache(tmp_path, "w-" + tag, url, lease_ttl=5)
        got, hit = waiter.get_or_build(key, lambda: nb)
        t.join()
        st = waiter.stats()
        assert got == nb and hit is (not fails)
        assert (st["fleet_waits"], st["lease_takeovers"]) == (1, 0), tag


def test_a_lease_whose_holder_stopped_renewing_is_a_takeover(tmp_path, redis_server):
    url, _, _ = redis_server
    key, nb = synthetic("stopped")
    dead = RedisStore(url, HMAC_KEY).acquire_lease(key, 1.0)      # never renewed, never released
    assert dead.lease is not None
    cache = _cache(tmp_path, "a", url, lease_ttl=1.0, remote_wait=30)
    t0 = time.monotonic()
    assert cache.get_or_build(key, lambda: nb) == (nb, False)
    assert 0.5 < time.monotonic() - t0 < 3.0
    st = cache.stats()
    assert (st["fleet_waits"], st["lease_takeovers"], st["builds"]) == (1, 1, 1)


def test_lease_ttl_and_remote_wait_are_clamped(tmp_path, monkeypatch):
    local = LocalStore(str(tmp_path / "c"))
    with pytest.warns(KernbinWarning, match="lease_ttl"):
        assert Cache(local, lease_ttl=0.0001).lease_ttl == 0.5        # renewals every 33 us otherwise
    with pytest.warns(KernbinWarning, match="lease_ttl"):
        assert Cache(local, lease_ttl=1e9).lease_ttl == 3600.0
    with pytest.warns(KernbinWarning, match="remote_wait"):
        assert Cache(local, remote_wait=float("inf")).remote_wait == 86400.0
    with pytest.raises(Exception):
        Cache(local, remote_wait=float("nan"))
    monkeypatch.delenv("KERNBIN_REMOTE", raising=False)
    monkeypatch.setenv("KERNBIN_REMOTE_LEASE_TTL", "0.0001")
    with pytest.warns(KernbinWarning, match="lease_ttl"):
        assert Cache.from_env(str(tmp_path / "e")).lease_ttl == 0.5


def test_a_lease_is_judged_by_its_holders_ttl(tmp_path, redis_server):
    """The holder's ttl is in the signed lease value: a reader with a short ttl honours a holder's
    long one (a 600 s lease used to be "expiring implausibly late" for a 2 s reader: replaced, built
    twice), and a lease of an older kernbin (no ttl in it) is judged by the reader's."""
    url, _, client = redis_server
    key, _ = synthetic("long-ttl")
    held = RedisStore(url, HMAC_KEY).acquire_lease(key, 600)
    other = RedisStore(url, HMAC_KEY).acquire_lease(key, 2)
    assert other.status == remote_mod.OK and other.lease is None and other.rejected is None
    assert other.holder == held.lease.holder and 590 < other.expires_in <= 600
    held.lease.release()
    store = RedisStore(url, HMAC_KEY)
    payload = f"{int((time.time() + 5) * 1000)} old-host:1:aa".encode()
    old = b"KBL1" + store._lease_sig(key, payload) + payload
    assert store.read_lease(key, old, 10) == ("old-host:1:aa", pytest.approx(time.time() + 5, abs=1))


def test_a_non_ascii_host_name_holds_leases_like_any_other(redis_server, monkeypatch):
    """A holder whose host name is not ASCII used to write a lease every other host found malformed
    (and took over at once): the name is made printable ASCII; a value of an older kernbin that
    carries such a name is still read."""
    url, _, _ = redis_server
    key, _ = synthetic("hostname")
    monkeypatch.setattr(socket, "gethostname", lambda: "b\u00fcild 01")
    a = RedisStore(url, HMAC_KEY).acquire_lease(key, 30)
    assert a.lease.holder.startswith("b?ild?01:") and a.lease.holder.isascii()
    monkeypatch.setattr(socket, "gethostname", lambda: "build-02")
    b = RedisStore(url, HMAC_KEY).acquire_lease(key, 30)
    assert b.lease is None and b.rejected is None and b.holder == a.lease.holder
    a.lease.release()
    store = RedisStore(url, HMAC_KEY)
    payload = f"{int((time.time() + 5) * 1000)} 30000 b\u00fcild:1:aa".encode()
    value = b"KBL1" + store._lease_sig(key, payload) + payload
    assert store.read_lease(key, value, 30)[0] == "b\u00fcild:1:aa"


def test_a_signed_lease_with_a_huge_number_is_malformed_not_a_crash():
    """Found by tools/fuzz.py (target ``lease``): an expiry too large for a float raised OverflowError
    from read_lease; a signed value is still only data."""
    from kernbin.cache.remote import RejectedEntry, RemoteStore
    store = RemoteStore.__new__(RemoteStore)
    store.hmac_key = HMAC_KEY
    key = "cd" * 32
    for payload in (b"9" * 400 + b" 10000 h", b"1 " + b"9" * 400 + b" h", b"-" + b"9" * 400 + b" h"):
        value = b"KBL1" + store._lease_sig(key, payload) + payload
        with pytest.raises(RejectedEntry) as e:
            store.read_lease(key, value, 10)
        assert e.value.rule in ("lease-format", "lease-expired")
