#!/usr/bin/env python3
"""A cold fleet sharing one Redis: builds done and time to kernels, with and without fleet single flight.

    python benchmarks/fleet.py [--hosts 16] [--kernels 8] [--target opencl:cpu] [--redis URL]
                               [--lease-ttl 10] [--shuffle] [--json] [--out FILE]

N processes stand for N hosts: each has its own local cache directory (and KERNBIN_CACHE_DIR), all
share one Redis (a private redis-server on a free port unless --redis is given; entries go under a
fresh prefix per run, so a shared server is not disturbed). Each host opens the target, signals it
is ready, and at a common start asks for the same kernels in the same order (--shuffle: each host
its own order) through kernbin.get_or_build with a cold cache. Kernels: the sample kernels, then
the samples again with -cl-mad-enable (distinct keys), up to --kernels.

Two runs, side by side: "leases" (fleet single flight: one host builds each kernel, the others wait
for its result) and "no leases" (KERNBIN_REMOTE_WAIT=0: each host builds what it does not find in
Redis yet). Reported per run: builds done in the fleet (a side channel appended by every finished
build), time from the start to each host's first kernel and to its last (p50 / p99 / max over hosts),
the fleet's wall time, and the fleet counters (waits, fleet hits, remote hits).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOST = r"""
import json, os, random, sys, time
import kernbin
from kernbin.api import get_or_build_ex
from kernbin.cache import Cache, LocalStore
from kernbin.cache.redis import RedisStore
from kernbin.samples import SAMPLES
url, prefix, local, side, ready, go, index, target, n, wait, ttl, shuffle = sys.argv[1:13]

def log(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)

class Counting(Cache):
    def get_or_build(self, key, build):
        def counted():
            native = build()
            log(side, key)
            return native
        return super().get_or_build(key, counted)

cache = Counting(LocalStore(local), RedisStore(url, b"bench-fleet-key", prefix=prefix, timeout=2.0),
                 lease_ttl=float(ttl), remote_wait=float(wait))
kernbin.open_device(target)
kernels = [(name, "") for name in SAMPLES] + [(name, "-cl-mad-enable") for name in SAMPLES]
kernels = kernels[:int(n)]
if shuffle == "1":
    random.Random(int(index)).shuffle(kernels)
log(ready, index)
while not os.path.exists(go):
    time.sleep(0.002)
start = float(open(go).read())
times = []
for name, opts in kernels:
    native, hit = get_or_build_ex(SAMPLES[name].spv, target, opts, cache=cache)
    times.append(time.time() - start)
print(json.dumps({"first": times[0], "all": times[-1], "stats": cache.local.counters()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(directory: str):
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        sys.exit("fleet.py: redis-server not found; install it or pass --redis URL")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(250):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0", proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("fleet.py: redis-server did not start")


def _pct(values, p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def run_fleet(url: str, args, leases: bool, work: str) -> dict:
    """One cold fleet; returns its figures."""
    tag = "leases" if leases else "no-leases"
    base = os.path.join(work, tag)
    os.makedirs(base)
    side, ready, go = (os.path.join(base, n) for n in ("builds", "ready", "go"))
    prefix = f"kernbin:bench:{uuid.uuid4().hex[:12]}:"
    procs = []
    for i in range(args.hosts):
        host = os.path.join(base, f"host{i}")
        env = dict(os.environ, KERNBIN_CACHE_DIR=host)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", HOST, url, prefix, host, side, ready, go, str(i), args.target, str(args.kernels),
             str(args.remote_wait if leases else 0), str(args.lease_ttl), "1" if args.shuffle else "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    deadline = time.time() + 300
    while len(_lines(ready)) < args.hosts:
        if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            sys.exit("fleet.py: a host failed to start: " + next((p.stderr.read() for p in procs if p.poll()), "")[-2000:])
        time.sleep(0.01)
    start = time.time()
    with open(go + ".tmp", "w") as f:
        f.write(repr(start))
    os.replace(go + ".tmp", go)
    hosts = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            sys.exit(f"fleet.py: a host failed:\n{err[-3000:]}")
        hosts.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(h["all"] for h in hosts)
    counters = {}
    for h in hosts:
        for k, v in h["stats"].items():
            counters[k] = counters.get(k, 0) + v
    first, all_ = [h["first"] for h in hosts], [h["all"] for h in hosts]
    built = _lines(side)
    return {
        "mode": tag, "hosts": args.hosts, "kernels": args.kernels,
        "builds": len(built), "distinct_kernels_built": len(set(built)),
        "first_kernel_s": {"p50": statistics.median(first), "p99": _pct(first, 99), "max": max(first)},
        "all_kernels_s": {"p50": statistics.median(all_), "p99": _pct(all_, 99), "max": max(all_)},
        "wall_s": wall,
        "counters": {k: counters.get(k, 0) for k in ("builds", "hits", "remote_hits", "fleet_waits", "fleet_hits",
                                                   "lease_takeovers", "fleet_wait_timeouts", "remote_errors")},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--kernels", type=int, default=8, help="at most twice the number of samples (default 8)")
    ap.add_argument("--target", default="opencl:cpu", help="opencl:cpu (default) or ocloc:<device>")
    ap.add_argument("--redis", help="a Redis URL to share (default: a private redis-server on a free port)")
    ap.add_argument("--lease-ttl", type=float, default=10.0)
    ap.add_argument("--remote-wait", type=float, default=300.0)
    ap.add_argument("--shuffle", action="store_true", help="each host asks for the kernels in its own order")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    from kernbin.samples import SAMPLES
    args.kernels = min(args.kernels, 2 * len(SAMPLES))

    work = tempfile.mkdtemp(prefix="kernbin-fleet-bench-")
    proc = None
    try:
        url = args.redis
        if not url:
            url, proc = _start_redis(work)
        runs = [run_fleet(url, args, leases=True, work=work), run_fleet(url, args, leases=False, work=work)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    result = {"benchmark": "fleet", "target": args.target, "hosts": args.hosts, "kernels": args.kernels,
              "order": "shuffled per host" if args.shuffle else "the same for every host",
              "lease_ttl_s": args.lease_ttl, "remote_wait_s": args.remote_wait,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
              "runs": runs}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.hosts} hosts x {args.kernels} kernels ({args.target}), cold, one Redis; "
          f"{os.cpu_count()} CPUs; order: {result['order']}")
    rows = [("builds done", lambda r: f"{r['builds']}"),
            ("first kernel p50 / p99 (s)", lambda r: f"{r['first_kernel_s']['p50']:.2f} / {r['first_kernel_s']['p99']:.2f}"),
            ("all kernels p50 / p99 (s)", lambda r: f"{r['all_kernels_s']['p50']:.2f} / {r['all_kernels_s']['p99']:.2f}"),
            ("fleet wall time (s)", lambda r: f"{r['wall_s']:.2f}"),
            ("fleet waits / fleet hits", lambda r: f"{r['counters']['fleet_waits']} / {r['counters']['fleet_hits']}"),
            ("remote hits", lambda r: f"{r['counters']['remote_hits']}")]
    print(f"{'':30} {'leases':>16} {'no leases':>16}")
    for label, fmt in rows:
        print(f"{label:30} {fmt(runs[0]):>16} {fmt(runs[1]):>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
